"""The evaluator's pages in a real headless Chromium, as an evaluator meets them: the metric runs page
(a refused start says why; a started run is polled by htmx until its table appears, then the polling
stops), the LLM judges page (a bad rubric names what is missing, an edit is refused or saved), the
agreement page (another criterion's kappa heatmap, its cells' tooltips) and the summary page (sorted
by clicking a header, exported as CSV).

The figures on screen are checked against rouge-score and scikit-learn called here, never against
the site's own code."""
from __future__ import annotations

import csv
import io
import json
import re
import time

import pytest
from playwright.sync_api import expect
from rouge_score import rouge_scorer
from sklearn.metrics import cohen_kappa_score

from annotation import services
from annotation.models import Judgment, Output
from arena.models import Judge
from metrics import services as metric_services
from metrics.agreement_service import agreement_recompute
from metrics.models import MetricRun
from metrics.summary import summary_recompute
from metrics.tasks import compute_metric_run
from tests.annotation import test_likert
from tests.conftest import PROMPTS_CSV

from .conftest import login

pytestmark = pytest.mark.django_db(transaction=True)

likert_study = test_likert.likert_study  # the fixture

# PROMPTS_CSV's references: p1 "Use the reset link.", p2 "Check the tracking page.", p3 "Yes within 30
# days.", p4 "Settings then cancel.".  alpha repeats them, beta half of each, gamma none of it: three
# different ROUGE-L means.  Latencies: beta fastest, alpha slowest (another order than either).
OUTPUTS = {
    "alpha-model": ({"p1": "Use the reset link.", "p2": "Check the tracking page.", "p3": "Yes within 30 days.",
                     "p4": "Settings then cancel."}, 300.0),
    "beta-model": ({"p1": "Use the link.", "p2": "See the tracking page.", "p3": "Yes, 30 days.",
                    "p4": "Open settings."}, 20.0),
    "gamma-model": ({"p1": "I cannot help.", "p2": "Unknown.", "p3": "Maybe.", "p4": "Ask support."}, 50.0),
}
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
REFERENCES = {"p1": "Use the reset link.", "p2": "Check the tracking page.", "p3": "Yes within 30 days.",
              "p4": "Settings then cancel."}
RUBRIC = "Question: {prompt}\n1: {output_1}\n2: {output_2}\nEnd with VERDICT: 1, 2 or tie."
SPEC = '{"base_url": "http://127.0.0.1:9/v1", "model": "judge-m"}'


def _rouge_means() -> dict[str, float]:
    """Each candidate's mean ROUGE-L F1 over the four prompts, by rouge-score directly."""
    return {name: sum(SCORER.score(REFERENCES[p], text)["rougeL"].fmeasure for p, text in texts.items()) / 4
            for name, (texts, _) in OUTPUTS.items()}


def _text_study(evaluator, annotators, manager):
    study = services.study_create(
        name="Support study", created_by=evaluator, prompts_data=PROMPTS_CSV, prompts_filename="p.csv",
        overlap=1, annotators=annotators, managers=[manager])
    for name, (texts, latency) in OUTPUTS.items():
        cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
        data = "\n".join(json.dumps({"prompt_id": p, "output": t, "latency_ms": latency, "cost": 0.001})
                         for p, t in texts.items()).encode()
        services.outputs_import(candidate=cand, data=data, filename="out.jsonl")
    return study


def _page(browser, base, user):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    login(page, base, user.username)
    return context, page


def _submit(page, selector: str):
    """Click a form's submit button; the response of the POST it sends."""
    with page.expect_response(lambda r: r.request.method == "POST") as info:
        page.click(selector)
    page.wait_for_load_state("domcontentloaded")
    return info.value


def _at(page, url: str) -> None:
    """Wait until the page is at exactly ``url`` (a string pattern would be a glob)."""
    page.wait_for_url(re.compile(re.escape(url) + "$"))


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _column(page, table: str, n: int = 1) -> list[str]:
    return page.locator(f"{table} tbody tr td:nth-child({n})").all_inner_texts()


# --- the metric runs page -------------------------------------------------------------------------


def test_a_refused_metric_says_why_and_a_started_one_is_polled_until_its_table_appears(
        live_server, browser, evaluator, annotators, manager, monkeypatch):
    from metrics import services as metric_services

    # The test is the worker here: a session worker that earlier tests left consuming the queue
    # (on PostgreSQL + Redis it took the run within milliseconds) must not take it before the
    # page shows it queued. The run is recorded as queued exactly as before; only the message
    # is not sent, and the test computes the run below, in its own process.
    queued: list[int] = []
    monkeypatch.setattr(metric_services, "_enqueue", lambda run: queued.append(run.pk))
    study = _text_study(evaluator, annotators, manager)
    base, url = live_server.url, f"{live_server.url}/studies/{study.pk}/metrics/"
    context, page = _page(browser, base, evaluator)
    assert page.goto(url).status == 200
    expect(page.locator("#metric-runs")).to_contain_text("No metric has been computed for this study yet.")
    assert page.get_attribute("#metric-runs", "hx-trigger") is None  # nothing to poll

    page.select_option("#id_metric", "perplexity")  # a metric that needs a model, without one
    response = _submit(page, "#metric-start button[type=submit]")
    assert response.status == 409
    expect(page.locator("#metric-error")).to_have_text(
        "perplexity needs a model: the path of a local model directory inside a model root (EVALSITE_MODEL_ROOTS)")
    expect(page.locator("#id_metric")).to_have_value("perplexity")  # the form keeps what was asked

    page.select_option("#id_metric", "bertscore")
    page.fill("#id_model", "/etc")  # outside every model root
    response = _submit(page, "#metric-start button[type=submit]")
    assert response.status == 409
    expect(page.locator("#metric-error")).to_contain_text("bertscore: ")
    expect(page.locator("#metric-error")).to_contain_text("EVALSITE_MODEL_ROOTS")
    expect(page.locator("#metric-runs")).to_contain_text("No metric has been computed for this study yet.")
    assert not MetricRun.objects.exists()  # nothing queued

    page.select_option("#id_metric", "rougeL")
    page.fill("#id_model", "")
    response = _submit(page, "#metric-start button[type=submit]")
    assert response.status == 302
    page.wait_for_url(url)
    run = MetricRun.objects.get(study=study)
    assert (run.metric, run.status) == ("rougeL", "queued") and queued == [run.pk]
    section = page.locator('#metric-runs section.metric-run[data-metric="rougeL"]')
    expect(section).to_have_attribute("data-status", "queued")
    expect(section.locator(".run-state")).to_contain_text("Queued")
    assert page.locator("#metric-error").count() == 0
    assert page.get_attribute("#metric-runs", "hx-trigger") == "every 2s"
    assert "poll=1" in page.get_attribute("#metric-runs", "hx-get")

    polls = []
    page.on("response", lambda r: polls.append((time.monotonic(), r.status)) if "poll=1" in r.url else None)
    with page.expect_response(lambda r: "poll=1" in r.url, timeout=6_000) as first:
        pass  # the page polls while the run is queued
    assert first.value.status == 200
    page.evaluate("window.__notReloaded = true")

    assert compute_metric_run(run.pk) == "done"  # the worker's part, in this process
    expect(section).to_have_attribute("data-status", "done", timeout=8_000)  # swapped in by the poll
    assert page.evaluate("window.__notReloaded === true")  # the same document: htmx swapped the table
    expect(section.locator(".run-state")).to_contain_text("Done · 12 / 12 outputs scored (100%)")
    want = _rouge_means()
    rows = section.locator("table.metric-table tbody tr")
    expect(rows).to_have_count(3)
    shown = {row.get_attribute("data-candidate"): row.locator("td.value").inner_text() for row in rows.all()}
    assert shown == {name: f"{value:.4f}" for name, value in want.items()}, (shown, want)
    assert len(set(shown.values())) == 3
    for row in rows.all():
        assert row.locator("td:nth-child(4)").inner_text() == "4"

    # the response that brought the table said "stop polling" (286); no poll follows it
    assert polls and polls[-1][1] == 286, polls
    stopped_at, n = polls[-1][0], len(polls)
    time.sleep(4.5)  # more than two polling intervals
    assert len(polls) == n, polls
    assert time.monotonic() - stopped_at >= 4.5
    context.close()


# --- the judges page ------------------------------------------------------------------------------


def test_a_judge_is_refused_for_a_missing_placeholder_then_added_and_edited(
        live_server, browser, evaluator, annotators, manager):
    study = _text_study(evaluator, annotators, manager)
    base, url = live_server.url, f"{live_server.url}/arena/studies/{study.pk}/judges/"
    context, page = _page(browser, base, evaluator)
    assert page.goto(url).status == 200
    expect(page.locator("#judge-edit-none")).to_have_text("No judge can be edited now.")

    page.fill("#id_name", "strict")
    page.select_option("#id_backend", "openai")
    page.fill("#id_spec", SPEC)
    page.fill("#id_rubric", "Question: {prompt}\n1: {output_1}\nWhich is better? VERDICT: 1, 2 or tie.")
    response = _submit(page, "#judge-add button[type=submit]")
    assert response.status == 400
    expect(page.locator("#judge-add .errorlist")).to_have_text("rubric: a pairwise rubric must contain {output_2}")
    expect(page.locator("#id_name")).to_have_value("strict")  # what was typed is kept
    assert not Judge.objects.exists()

    page.fill("#id_rubric", RUBRIC)
    response = _submit(page, "#judge-add button[type=submit]")
    assert response.status == 302
    page.wait_for_url(url)
    judge = Judge.objects.get(study=study)
    # a browser sends a textarea's lines ended by CRLF, and the rubric is stored as sent
    assert (judge.name, judge.backend, judge.kind, _lf(judge.rubric)) == ("strict", "openai", "pairwise", RUBRIC)
    stored = judge.rubric
    assert judge.spec["base_url"] == "http://127.0.0.1:9/v1"
    expect(page.locator("#judge-table")).to_contain_text("strict")
    edit = page.locator(f"#judge-edit-{judge.pk}")
    expect(edit.locator("summary")).to_contain_text("strict")
    expect(edit).not_to_have_attribute("open", "")

    edit.locator("summary").click()  # opens the edit form, which holds the current rubric
    rubric = page.locator(f"#judge{judge.pk}_rubric")
    expect(rubric).to_be_visible()
    expect(rubric).to_have_value(RUBRIC)
    rubric.fill("Compare {output_1} and {output_2}. VERDICT: 1, 2 or tie.")  # {prompt} is missing
    response = _submit(page, f"#judge-edit-{judge.pk} button[type=submit]")
    assert response.status == 400
    expect(page.locator("#judge-error")).to_have_text(
        "Judge 'strict' not saved: rubric: a pairwise rubric must contain {prompt}")
    expect(page.locator(f"#judge-edit-{judge.pk}")).to_have_attribute("open", "")  # shown again, open
    judge.refresh_from_db()
    assert judge.rubric == stored  # the stored rubric is unchanged

    edited = "Prompt: {prompt}\nFirst: {output_1}\nSecond: {output_2}\nWhich is more accurate? VERDICT: 1, 2 or tie."
    page.locator(f"#judge{judge.pk}_rubric").fill(edited)
    page.locator(f"#judge{judge.pk}_max_new_tokens").fill("64")
    response = _submit(page, f"#judge-edit-{judge.pk} button[type=submit]")
    assert response.status == 302
    page.wait_for_url(url)
    expect(page.locator("ul.messages")).to_have_text("Judge strict saved; start it to ask with the new rubric.")
    assert page.locator("#judge-error").count() == 0
    judge.refresh_from_db()
    assert (_lf(judge.rubric), judge.max_new_tokens, judge.name) == (edited, 64, "strict")
    page.locator(f"#judge-edit-{judge.pk} summary").click()
    expect(page.locator(f"#judge{judge.pk}_rubric")).to_have_value(edited)
    context.close()


# --- the agreement page ---------------------------------------------------------------------------


def _ratings(n: int, unit: int) -> dict:
    """Annotator n's ratings of a unit: ann1 and ann2 mostly agree, ann3 answers otherwise."""
    fact = 1 + (unit + (n == 1 and unit % 4 == 0) + (n == 2)) % 3
    style = 1 + (unit + (n == 1 and unit % 2)) % 5
    return {"factuality": fact, "style": style}


@pytest.fixture
def rated(likert_study, annotators):
    """A Likert study (Factuality 1-3, Style consistency 1-5) every annotator rated in full, with
    the agreement figures the worker would store."""
    study = likert_study(overlap=3, n_prompts=4)
    for n, annotator in enumerate(annotators):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            services.judgment_submit(assignment=a, ratings=_ratings(n, a.unit_id))
    agreement_recompute(study_id=study.pk, force=True)  # the worker's part
    return study


def _pair(study, annotators, key: str, scale: int) -> tuple[str, float]:
    """ann1 and ann2's tooltip on criterion ``key``, computed here: quadratic-weighted kappa by
    scikit-learn, percent agreement and shared units counted by hand."""
    one, two = ({u: r[key] for u, r in Judgment.objects.filter(study=study, annotator=x)
                 .values_list("unit_id", "ratings")} for x in annotators[:2])
    shared = sorted(one.keys() & two.keys())
    assert len(shared) == 8  # 4 prompts x 2 candidates, each rated by all three
    percent = 100 * sum(one[u] == two[u] for u in shared) / len(shared)
    assert 0 < percent < 100
    kappa = cohen_kappa_score([one[u] for u in shared], [two[u] for u in shared], weights="quadratic",
                              labels=list(range(1, scale + 1)))
    return f"ann1 and ann2: kappa {kappa:.3f}, percent agreement {percent:.1f}%, {len(shared)} units in common", kappa


def _title(name: str) -> str:
    return f"Cohen's kappa, {name} (quadratic weights); blank: fewer than 2 units in common"


def _hovered_tip(page, who: str) -> tuple[str, str]:
    """Hover the heatmap cell whose tooltip starts with ``who``; the ``<title>`` of the cell under
    the pointer (what the browser shows on hover) and the value printed in the cell."""
    cell = page.locator("#agreement-heatmap svg g", has=page.locator("title", has_text=who)).first
    cell.hover()  # the cell's value, drawn over its square, belongs to the same cell
    box = cell.locator("rect").bounding_box()
    tip = page.evaluate(
        "([x, y]) => { const g = document.elementFromPoint(x, y).closest('g');"
        " return g && g.querySelector('title') ? g.querySelector('title').textContent : null; }",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
    return tip, cell.locator("text").text_content()


def test_a_kappa_heatmap_cell_tooltip_gives_the_pairs_percent_agreement(live_server, browser, rated, annotators,
                                                                         evaluator):
    base, url = live_server.url, f"{live_server.url}/studies/{rated.pk}/agreement/"
    context, page = _page(browser, base, evaluator)
    assert page.goto(url).status == 200
    heatmap = page.locator("#agreement-heatmap svg")
    expect(heatmap).to_have_attribute("aria-label", _title("Factuality"))  # the first criterion with kappas
    want, kappa = _pair(rated, annotators, "factuality", 3)
    tip, shown = _hovered_tip(page, "ann1 and ann2")
    assert tip == want, (tip, want)
    assert shown == f"{kappa:.2f}"

    # another criterion's heatmap, as its address names it
    assert page.goto(f"{url}?criterion=style").status == 200
    expect(heatmap).to_have_attribute("aria-label", _title("Style consistency"))
    expect(page.locator("#agreement-pairs summary")).to_contain_text("Style consistency")
    want, kappa = _pair(rated, annotators, "style", 5)
    tip, shown = _hovered_tip(page, "ann1 and ann2")
    assert tip == want, (tip, want)
    assert shown == f"{kappa:.2f}"
    context.close()


def test_another_criterion_is_picked_in_the_heatmaps_select(live_server, browser, rated, annotators, evaluator):
    base, url = live_server.url, f"{live_server.url}/studies/{rated.pk}/agreement/"
    context, page = _page(browser, base, evaluator)
    assert page.goto(url).status == 200
    select = page.locator("#agreement-kappa-criterion select[name=criterion]")
    try:
        assert select.locator("option").all_inner_texts()[:2] == ["Factuality", "Style consistency"]
        expect(select).to_have_value("factuality")
        select.select_option(label="Style consistency")
        page.click("#agreement-kappa-criterion button[type=submit]")
        _at(page, f"{url}?criterion=style")
        expect(page.locator("#agreement-heatmap svg")).to_have_attribute("aria-label", _title("Style consistency"))
        expect(select).to_have_value("style")
        tip, _ = _hovered_tip(page, "ann1 and ann2")
        assert tip == _pair(rated, annotators, "style", 5)[0]
    finally:
        context.close()


# --- the summary page -----------------------------------------------------------------------------


def test_the_summary_sorts_by_a_clicked_header_and_exports_csv(live_server, browser, evaluator, annotators,
                                                               manager):
    study = _text_study(evaluator, annotators, manager)
    run = metric_services.metric_run_start(study=study, metric="rougeL", options={}, actor=evaluator)
    assert compute_metric_run(run.pk) == "done"
    summary_recompute(study_id=study.pk)  # the worker's part
    want = _rouge_means()

    base, url = live_server.url, f"{live_server.url}/studies/{study.pk}/summary/"
    context, page = _page(browser, base, evaluator)
    assert page.goto(url).status == 200
    table = "#summary-table"
    assert _column(page, table) == ["alpha-model", "beta-model", "gamma-model"]  # no ratings: as stored

    page.click(f"{table} thead a:text-is('Latency p95 (ms)')")
    _at(page, f"{url}?sort=latency_p95")
    expect(page.locator(f"{table} tbody tr td:nth-child(1)")).to_have_text(["beta-model", "gamma-model", "alpha-model"])

    page.click(f"{table} thead a:text-is('rougeL')")  # higher is better: best first
    page.wait_for_url(re.compile(re.escape(f"{url}?sort=-metric") + "(:|%3A)"))
    order = sorted(want, key=lambda n: -want[n])
    expect(page.locator(f"{table} tbody tr td:nth-child(1)")).to_have_text(order)
    assert order == ["alpha-model", "beta-model", "gamma-model"]
    rouge_col = page.locator(f"{table} thead th").all_inner_texts().index("rougeL") + 1
    values = [float(v.split()[0]) for v in _column(page, table, rouge_col)]
    assert values == [pytest.approx(want[n], abs=5e-4) for n in order]

    page.click(f"{table} thead a:text-is('Candidate')")
    _at(page, f"{url}?sort=candidate")
    page.click(f"{table} thead a:text-is('Candidate')")  # a second click: the other way round
    _at(page, f"{url}?sort=-candidate")
    expect(page.locator(f"{table} tbody tr td:nth-child(1)")).to_have_text(["gamma-model", "beta-model", "alpha-model"])

    link = page.locator("a:text-is('CSV')")
    expect(link).to_have_attribute("href", "?format=csv")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == f"study-{study.pk}-summary.csv"
    with open(download.path(), encoding="utf-8") as fh:
        rows = list(csv.DictReader(io.StringIO(fh.read())))
    assert [r["candidate"] for r in rows] == ["alpha-model", "beta-model", "gamma-model"]
    p95 = {r["candidate"]: float(r["latency_p95_ms"]) for r in rows}
    assert p95 == {name: latency for name, (_, latency) in OUTPUTS.items()}
    rouge = next(k for k in rows[0] if k.startswith("rougeL_") and not k.endswith(("_lower", "_upper", "_config")))
    for r in rows:
        assert float(r[rouge]) == pytest.approx(want[r["candidate"]], abs=1e-9)
    assert Output.objects.filter(study=study).count() == 12
    context.close()

