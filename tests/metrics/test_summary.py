"""The study summary page: numbers against independent computations, the recommendation, exports, roles."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone
from scipy import stats

from annotation.models import Output
from arena.board import Board, BoardRow
from arena.models import RatingSnapshot
from annotation import services
from annotation.models import Judgment
from arena import outcomes
from arena.models import Judge, JudgeVerdict
from arena.services import ratings_refresh
from metrics.models import CandidateScore, MetricRun, OutputScore, SummaryBudget
from metrics.summary import summary_recompute
from tests.annotation.test_likert import likert_study  # noqa: F401  (fixture)
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

# rating, lower, upper per candidate (as a worker's snapshot would hold them)
RATINGS = {"alpha-model": (1100.0, 1060.0, 1140.0), "beta-model": (1050.0, 1000.0, 1090.0),
           "gamma-model": (900.0, 850.0, 950.0)}
LATENCY = {"alpha-model": [100, 200, 300, 4000], "beta-model": [50, 60, 70, 80], "gamma-model": [10, 20, 30, 40]}
COST = {"alpha-model": 0.01, "beta-model": 0.002, "gamma-model": 0.001}


def _row(name, rank):
    r, lo, hi = RATINGS[name]
    return BoardRow(model=name, rating=r, lower=lo, upper=hi, median=r, rank=rank, battles=10, wins=5, losses=5,
                    ties=0, both_bad=0, win_rate=0.5, both_bad_rate=0.0)


@pytest.fixture
def study(study_factory):
    study = study_factory()
    for name, lat in LATENCY.items():
        for ms, out in zip(lat, Output.objects.filter(study=study, candidate__name=name).order_by("prompt_id")):
            Output.objects.filter(pk=out.pk).update(latency_ms=ms, cost=COST[name], completion_tokens=int(ms))
    board = Board(rounds=100, seed=0, n_battles=30, rows=tuple(_row(n, i + 1) for i, n in enumerate(RATINGS)))
    RatingSnapshot.objects.create(study=study, slice_key="all", method="bt", payload=board.to_json(),
                                  computed_at=timezone.now())
    run = MetricRun.objects.create(study=study, metric="rougeL", options_hash="x", status=MetricRun.Status.DONE)
    level = {"alpha-model": 0.3, "beta-model": 0.6, "gamma-model": 0.2}
    for out in Output.objects.filter(study=study).select_related("candidate"):
        OutputScore.objects.create(run=run, output=out, value=level[out.candidate.name] + 0.01 * out.prompt_id % 0.05)
    for cand in study.candidates.all():
        CandidateScore.objects.create(run=run, candidate=cand, slice_key="all", value=level[cand.name],
                                      lower=level[cand.name] - 0.05, upper=level[cand.name] + 0.05, n=4)
    summary_recompute(study_id=study.pk)  # the aggregation worker's part
    return study


def _url(study, **q):
    base = reverse("metrics:summary", args=[study.pk])
    return base + ("?" + "&".join(f"{k}={v}" for k, v in q.items()) if q else "")


def test_the_table_matches_numpy_percentiles_and_the_snapshot(study, manager):
    data = client_for(manager).get(_url(study, format="json")).json()
    rows = {r["candidate"]: r for r in data["rows"]}
    for name, lat in LATENCY.items():
        p50, p95 = np.percentile(lat, [50, 95])
        assert rows[name]["latency_p50"] == pytest.approx(p50)
        assert rows[name]["latency_p95"] == pytest.approx(p95)
        assert rows[name]["tokens"] == pytest.approx(np.mean(lat))
        assert rows[name]["cost_per_1000"] == pytest.approx(COST[name] * 1000)
        assert (rows[name]["rating"], rows[name]["rating_lower"], rows[name]["rating_upper"]) == RATINGS[name]
    assert [r["candidate"] for r in data["rows"]] == ["alpha-model", "beta-model", "gamma-model"]  # best first
    assert rows["beta-model"]["metrics"][0]["value"] == pytest.approx(0.6)
    # system level: candidate means 0.3, 0.6, 0.2 (+ the same per-prompt offsets) vs ratings 1100, 1050, 900
    tau = stats.kendalltau([0.3, 0.6, 0.2], [1100, 1050, 900]).statistic
    assert data["agreement"][0]["kendall_tau"]["value"] == pytest.approx(tau)


def test_it_sorts_by_a_column(study, manager):
    data = client_for(manager).get(_url(study, format="json", sort="latency_p95")).json()
    assert [r["candidate"] for r in data["rows"]] == ["gamma-model", "beta-model", "alpha-model"]


def test_the_recommendation_keeps_to_the_budget_and_says_how_sure(study, evaluator):
    client = client_for(evaluator)
    data = client.get(_url(study, format="json")).json()
    # no budget: alpha (1060..1140) overlaps beta (1000..1090)
    assert data["recommendation"]["candidate"] == "alpha-model"
    assert data["recommendation"]["sentence"] == ("alpha-model has the best human rating within the budget, not "
                                                  "separable from beta-model: their rating intervals overlap.")
    response = client.post(_url(study), {"max_cost_per_1000": "5", "max_latency_p95_ms": ""})
    assert response.status_code == 302
    assert SummaryBudget.objects.get(study=study).max_cost_per_1000 == 5.0
    data = client.get(_url(study, format="json")).json()  # alpha costs 10 per 1,000: out
    assert data["recommendation"]["candidate"] == "beta-model"
    assert data["recommendation"]["separable"] is True
    assert "clearly ahead of gamma-model" in data["recommendation"]["sentence"]
    page = client.get(_url(study)).content.decode()
    assert "clearly ahead of gamma-model" in page and 'id="summary-budget"' in page


def test_no_ratings_yet(study, manager):
    RatingSnapshot.objects.filter(study=study).delete()
    summary_recompute(study_id=study.pk)
    page = client_for(manager).get(_url(study)).content.decode()
    assert "No ratings yet" in page and "no ratings yet" in page


def test_the_csv_export_guards_formulas(study, manager):
    study.candidates.filter(name="gamma-model").update(name="=HYPERLINK(1)")
    summary_recompute(study_id=study.pk, force=True)
    response = client_for(manager).get(_url(study, format="csv"))
    lines = list(csv.reader(io.StringIO(response.content.decode())))
    assert lines[0][:3] == ["candidate", "outputs", "rating"] and "rougeL_" in lines[0][5]
    names = [line[0] for line in lines[1:]]
    assert "'=HYPERLINK(1)" in names and "alpha-model" in names
    alpha = next(line for line in lines[1:] if line[0] == "alpha-model")
    assert float(alpha[2]) == 1100.0 and float(alpha[lines[0].index("cost_per_1000")]) == pytest.approx(10.0)


def test_annotators_are_refused_and_managers_cannot_set_the_budget(study, annotators, manager):
    assert client_for(annotators[0]).get(_url(study)).status_code == 403
    assert client_for(manager).post(_url(study), {"max_cost_per_1000": "1"}).status_code == 403
    assert not SummaryBudget.objects.exists()


# The page reads: session user, study and the access check, the stored summary, the budget
# and the role check for the budget form; whatever the number of outputs, scores, verdicts and
# judgments (the worker read those).
PAGE_QUERIES = 7


def _grow(study, n_runs=3):
    """Add finished metric runs with a score for every output, and judge verdicts on every pair."""
    outputs = list(Output.objects.filter(study=study))
    for k in range(n_runs):
        run = MetricRun.objects.create(study=study, metric="bleu", options_hash=f"grow{MetricRun.objects.count()}",
                                       status=MetricRun.Status.DONE, finished_at=timezone.now())
        OutputScore.objects.bulk_create(OutputScore(run=run, output=o, value=float(o.pk % 7)) for o in outputs)
    judge = Judge.objects.create(study=study, name=f"judge{Judge.objects.count()}", backend="openai",
                                 spec={}, rubric="x", status=Judge.Status.DONE)
    JudgeVerdict.objects.bulk_create(JudgeVerdict(judge=judge, unit=u, outcome="a", consistent=True)
                                     for u in study.units.filter(kind="pairwise"))


def test_the_page_costs_the_same_whatever_the_study_holds(study, manager):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(manager)
    client.get(_url(study))  # the session is cached from here on
    counts = []
    for _ in range(2):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(_url(study))
        assert response.status_code == 200
        counts.append(len(ctx.captured_queries))
        _grow(study)
        summary_recompute(study_id=study.pk)
    assert counts[0] == counts[1] <= PAGE_QUERIES, counts
    data = client.get(_url(study, format="json")).json()
    assert len(data["metrics"]) == 1 + 6 and len(data["judges"]) == 2


def test_the_worker_skips_an_unchanged_summary_and_notices_a_finished_run(study):
    first = RatingSnapshot.objects.get(study=study, method="summary")
    again = summary_recompute(study_id=study.pk)
    assert again.payload == first.payload and again.computed_at >= first.computed_at
    run = MetricRun.objects.create(study=study, metric="chrf", options_hash="y", status=MetricRun.Status.DONE,
                                   finished_at=timezone.now())
    after = summary_recompute(study_id=study.pk)
    assert [m["run"] for m in after.payload["metrics"]] == sorted([run.pk, first.payload["metrics"][0]["run"]],
                                                                  key=lambda pk: MetricRun.objects.get(pk=pk).metric)


def test_judge_win_rates_and_their_agreement_with_the_ratings(study, manager):
    """Win rates from the verdicts (a tie counts half) and tau against the ratings, by scipy."""
    judge = Judge.objects.create(study=study, name="gpt-judge", backend="openai", spec={}, rubric="x",
                                 status=Judge.Status.DONE)
    wins: dict[str, list[float]] = {}
    for n, unit in enumerate(study.units.filter(kind="pairwise").select_related("cand_lo", "cand_hi")):
        outcome = ["a", "b", "tie"][n % 3]
        JudgeVerdict.objects.create(judge=judge, unit=unit, outcome=outcome, consistent=outcome != "tie")
        a, b = (unit.cand_lo.name, unit.cand_hi.name) if unit.a_is_lo else (unit.cand_hi.name, unit.cand_lo.name)
        score = outcomes.SCORE[outcomes.STORED_CODE[outcome]]
        wins.setdefault(a, []).append(score)
        wins.setdefault(b, []).append(1 - score)
    summary_recompute(study_id=study.pk)
    data = client_for(manager).get(_url(study, format="json", sort="-judge:judge%d" % judge.pk)).json()
    assert data["judges"] == [{"key": f"judge{judge.pk}", "name": "gpt-judge", "judge": judge.pk}]
    got = {r["candidate"]: r["judges"][0] for r in data["rows"]}
    for name, scores in wins.items():
        assert got[name]["win_rate"] == pytest.approx(np.mean(scores)) and got[name]["n"] == len(scores)
    order = sorted(wins, key=lambda c: -np.mean(wins[c]))
    assert [r["candidate"] for r in data["rows"]] == order
    judged = next(a for a in data["agreement"] if a["kind"] == "judge")
    names = sorted(wins)
    tau = stats.kendalltau([np.mean(wins[c]) for c in names], [RATINGS[c][0] for c in names]).statistic
    assert judged["kendall_tau"]["value"] == pytest.approx(tau)
    assert judged["kendall_tau"]["lower"] <= judged["kendall_tau"]["upper"]
    page = client_for(manager).get(_url(study)).content.decode()
    assert "Judge gpt-judge: win rate" in page and "judge: gpt-judge" in page


def test_output_level_agreement_with_likert_means(likert_study, manager):  # noqa: F811
    """Per output: the metric value against the mean Likert point of its human ratings."""
    study = likert_study(kinds="likert", overlap=2, n_prompts=6)
    points = iter([5, 4, 2, 1, 3, 5, 2, 4, 1, 3, 5, 2, 3, 4, 1, 5, 2, 3, 4, 5, 1, 2, 3, 4] * 4)
    for annotator in study.members.filter(role="annotator").select_related("user")[:2]:
        while (a := services.assignment_next(study=study, annotator=annotator.user)) is not None:
            services.judgment_submit(assignment=a, ratings={"factuality": 2, "style": next(points)})
    ratings_refresh(study_id=study.pk)  # the bt board and its Likert summaries
    run = MetricRun.objects.create(study=study, metric="rougeL", options_hash="z", status=MetricRun.Status.DONE,
                                   finished_at=timezone.now())
    for out in Output.objects.filter(study=study):
        OutputScore.objects.create(run=run, output=out, value=(out.pk * 37 % 11) / 10)
    summary_recompute(study_id=study.pk)
    data = client_for(manager).get(_url(study, format="json")).json()
    style = next(a for a in data["output_agreement"] if a["criterion"] == "Style consistency")
    human: dict[int, list[int]] = {}
    for j in Judgment.objects.filter(study=study, ratings__isnull=False).select_related("unit"):
        human.setdefault(j.unit.output_a_id, []).append(j.ratings["style"])
    shared = sorted(human)
    metric = [(pk * 37 % 11) / 10 for pk in shared]
    assert style["kendall_tau"]["n"] == len(shared) == 12
    assert style["kendall_tau"]["value"] == pytest.approx(
        stats.kendalltau(metric, [np.mean(human[o]) for o in shared]).statistic)
    assert style["spearman_rho"]["value"] == pytest.approx(
        stats.spearmanr(metric, [np.mean(human[o]) for o in shared]).statistic)
    assert style["kendall_tau"]["lower"] <= style["kendall_tau"]["value"] <= style["kendall_tau"]["upper"]
    # every factuality rating is 2: no rank correlation is defined, shown as a blank, not a zero
    fact = next(a for a in data["output_agreement"] if a["criterion"] == "Factuality")
    assert fact["kendall_tau"]["value"] is None
    assert 'id="summary-output-agreement"' in client_for(manager).get(_url(study)).content.decode()


def _text(html: str) -> str:
    """What a reader sees: tags dropped, whitespace collapsed."""
    import re

    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_corpus_and_set_metrics_get_a_system_level_trust_row_from_their_candidate_scores(study, manager):
    """BLEU and FID store one score per candidate (no per-output score): tau-b and rho across the
    candidates against the ratings, by scipy, no interval; FID is negated (lower is better)."""
    cands = {c.name: c for c in study.candidates.all()}
    bleu = MetricRun.objects.create(study=study, metric="bleu", options_hash="b", status=MetricRun.Status.DONE,
                                    finished_at=timezone.now(), config={
                                        "library": "sacrebleu", "signature": "nrefs:1|case:mixed|tok:13a",
                                        "bootstrap": "percentile 95%, 1000 resamples of items, corpus score recomputed"})
    fid = MetricRun.objects.create(study=study, metric="fid", options_hash="f", status=MetricRun.Status.DONE,
                                   finished_at=timezone.now(), options={"reference": 3, "rounds": 50},
                                   config={"reference_set": "coco-val", "better": "lower",
                                           "interval": "95% percentile bootstrap, 50 resamples"})
    bleu_all = {"alpha-model": 20.0, "beta-model": 20.0, "gamma-model": 10.0}  # a tie: tau-b
    fid_all = {"alpha-model": 30.0, "beta-model": 20.0, "gamma-model": 50.0}
    for run, values in ((bleu, bleu_all), (fid, fid_all)):
        for name, value in values.items():
            CandidateScore.objects.create(run=run, candidate=cands[name], slice_key="all", value=value, n=4)
            # a tag slice with the order reversed: only slice "all" may count
            CandidateScore.objects.create(run=run, candidate=cands[name], slice_key="tag:x", value=-value, n=1)
    # a per-output metric where lower is better: its candidate means are negated too
    ppl = MetricRun.objects.create(study=study, metric="perplexity", options_hash="p", status=MetricRun.Status.DONE,
                                   finished_at=timezone.now(), options={"model": "/models/lm/gpt2-small"})
    level = {"alpha-model": 5.0, "beta-model": 9.0, "gamma-model": 7.0}
    for out in Output.objects.filter(study=study).select_related("candidate"):
        OutputScore.objects.create(run=ppl, output=out, value=level[out.candidate.name] + out.prompt_id % 3)
    summary_recompute(study_id=study.pk)

    data = client_for(manager).get(_url(study, format="json")).json()
    rows = {a.get("run"): a for a in data["agreement"]}
    names = sorted(RATINGS)
    human = [RATINGS[c][0] for c in names]
    b, f = rows[bleu.pk], rows[fid.pk]
    assert b["kendall_tau"]["value"] == pytest.approx(stats.kendalltau([bleu_all[c] for c in names], human).statistic)
    assert b["spearman_rho"]["value"] == pytest.approx(stats.spearmanr([bleu_all[c] for c in names], human).statistic)
    assert (b["kendall_tau"]["n"], b["kendall_tau"]["lower"], b["kendall_tau"]["upper"]) == (3, None, None)
    assert b["definition"] == "no interval: corpus-level metric: no per-prompt scores to resample"
    assert f["kendall_tau"]["value"] == pytest.approx(stats.kendalltau([-fid_all[c] for c in names], human).statistic)
    assert f["spearman_rho"]["value"] == pytest.approx(stats.spearmanr([-fid_all[c] for c in names], human).statistic)
    assert f["better"] == "lower" and "set-level metric" in f["definition"] and f["kendall_tau"]["n"] == 3
    means = {c: np.mean([level[c] + o.prompt_id % 3 for o in Output.objects.filter(study=study, candidate__name=c)])
             for c in names}
    p = rows[ppl.pk]
    assert p["kendall_tau"]["value"] == pytest.approx(stats.kendalltau([-means[c] for c in names], human).statistic)
    assert p["definition"].startswith("percentile, 500 rounds over prompts")
    page = _text(client_for(manager).get(_url(study)).content.decode())
    assert "positive value means the metric or judge agrees with the humans" in page
    assert "fid (reference: coco-val, rounds 50) (lower is better: sign flipped)" in page
    assert "perplexity (gpt2-small) (lower is better: sign flipped)" in page
    assert "FID and KID" not in page  # the note comes from metrics.services.better, not a list in the template


def test_two_runs_of_one_metric_get_their_own_labels_and_carry_their_config(study, manager):
    configs = [({"model": "/models/a/all-MiniLM-L6-v2"}, {"model": "/models/a/all-MiniLM-L6-v2", "layer": 6,
                                                          "library": "bert-score", "version": "0.3.13"}),
               ({"model": "/models/b/roberta-large"}, {"model": "/models/b/roberta-large", "layer": 17,
                                                       "library": "bert-score", "version": "0.3.13"}),
               ({"model": "/other/all-MiniLM-L6-v2"}, {"model": "/other/all-MiniLM-L6-v2", "layer": 6})]
    runs = [MetricRun.objects.create(study=study, metric="bertscore", options_hash=f"bs{k}", options=options,
                                     config=config, status=MetricRun.Status.DONE, finished_at=timezone.now())
            for k, (options, config) in enumerate(configs)]
    summary_recompute(study_id=study.pk)
    client = client_for(manager)
    data = client.get(_url(study, format="json")).json()
    by_run = {m["run"]: m for m in data["metrics"]}
    assert by_run[runs[1].pk]["label"] == "bertscore (roberta-large, layer 17)"
    # the same folder name and layer in another model root: the run id tells them apart
    assert by_run[runs[0].pk]["label"] == f"bertscore (all-MiniLM-L6-v2, layer 6) [run {runs[0].pk}]"
    assert by_run[runs[2].pk]["label"] == f"bertscore (all-MiniLM-L6-v2, layer 6) [run {runs[2].pk}]"
    assert len({m["label"] for m in data["metrics"]}) == len(data["metrics"])
    assert by_run[runs[1].pk]["config"] == configs[1][1] and by_run[runs[1].pk]["options"] == configs[1][0]
    lines = list(csv.reader(io.StringIO(client.get(_url(study, format="csv")).content.decode())))
    col = lines[0].index(f"bertscore_{runs[1].pk}_config")
    import json

    cell = json.loads(lines[1][col])
    assert cell == {"label": "bertscore (roberta-large, layer 17)", "options": configs[1][0], "config": configs[1][1]}
    html = client.get(_url(study)).content.decode()
    assert ">bertscore (roberta-large, layer 17)</a>" in html and 'id="summary-metric-runs"' in html
    assert "version: 0.3.13" in _text(html)


def test_the_subtitle_says_how_metric_intervals_are_made(study, manager):
    from metrics.services import AGGREGATE

    page = _text(client_for(manager).get(_url(study)).content.decode())
    assert f"a per-output metric: {AGGREGATE}" in page
    assert "bootstrap over prompts" not in page
    data = client_for(manager).get(_url(study, format="json")).json()
    assert data["metrics"][0]["interval"] == AGGREGATE  # rougeL: per-output values


def test_likert_judges_join_the_trust_tables_per_criterion(likert_study, annotators, manager):  # noqa: F811
    """Output level: judge_summary's figures; system level: the judge's mean point per candidate
    against the human Likert mean per candidate (recounted from the judgments), by scipy."""
    import re

    from annotation import services as annotation_services
    from arena.judging import judge_summary
    from arena.models import JudgeScore
    from tests.conftest import imported_jsonl

    study = likert_study(kinds="likert", overlap=2, n_prompts=4)
    gamma = annotation_services.candidate_create(study=study, name="gamma-model", backend="imported", spec={})
    annotation_services.outputs_import(candidate=gamma, filename="o.jsonl", data=imported_jsonl(
        {f"q{i}": f"Variant 2 answer to q{i}" for i in range(4)}))

    def vq(text):
        return tuple(map(int, re.match(r"Variant (\d) answer to q(\d)", text).groups()))

    for k, annotator in enumerate(annotators[:2]):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            v, q = vq(a.unit.output_a.text)
            services.judgment_submit(assignment=a, ratings={"factuality": 1 + (v + q * k) % 3,
                                                            "style": 1 + (2 * v + q + k) % 5})
    ratings_refresh(study_id=study.pk)
    judge = Judge.objects.create(study=study, name="lj", kind="likert", backend="openai", spec={}, rubric="x",
                                 status=Judge.Status.DONE, finished_at=timezone.now())
    points = {}
    for out in Output.objects.filter(study=study):
        v, q = vq(out.text)
        for key, scale in (("factuality", 3), ("style", 5)):
            point = None if (v, q, key) == (1, 0, "style") else 1 + (v * 2 + q * (key == "style")) % scale
            points[(out.pk, key)] = point
            JudgeScore.objects.create(judge=judge, output=out, criterion=key, value=point, reply="r")
    summary_recompute(study_id=study.pk)

    data = client_for(manager).get(_url(study, format="json")).json()
    cand_of = dict(Output.objects.filter(study=study).values_list("pk", "candidate__name"))
    human: dict[tuple[str, str], list[int]] = {}
    for j in Judgment.objects.filter(study=study, ratings__isnull=False).select_related("unit"):
        for key, value in j.ratings.items():
            human.setdefault((cand_of[j.unit.output_a_id], key), []).append(value)
    [detail] = judge_summary(study)
    names = sorted(set(cand_of.values()))
    for c in detail["criteria"]:
        row = next(a for a in data["agreement"] if a["kind"] == "likert_judge" and a["criterion"] == c["name"])
        mine = [np.mean([p for (o, key), p in points.items() if key == c["key"] and p is not None
                         and cand_of[o] == name]) for name in names]
        theirs = [np.mean(human[(name, c["key"])]) for name in names]
        assert row["kendall_tau"]["value"] == pytest.approx(stats.kendalltau(mine, theirs).statistic)
        assert row["spearman_rho"]["value"] == pytest.approx(stats.spearmanr(mine, theirs).statistic)
        assert row["kendall_tau"]["n"] == 3 and row["label"] == f"judge: lj · {c['name']}"
        assert row["definition"].startswith("percentile, 500 rounds over prompts")
        out_row = next(a for a in data["output_agreement"] if a["kind"] == "likert_judge"
                       and a["criterion"] == c["name"])
        assert out_row["kendall_tau"] == c["kendall_tau"] and out_row["spearman_rho"] == c["spearman_rho"]
    assert not data["judges"]  # a Likert judge has no win-rate column
    page = _text(client_for(manager).get(_url(study)).content.decode())
    assert "judge: lj · Style consistency" in page and "human Likert mean: Style consistency" in page
