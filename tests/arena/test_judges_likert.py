"""Likert LLM judges: each finished output rated on each criterion of the study through a real
OpenAI-compatible server (tests.helpers.fake_openai), the task body in-process; figures checked
against sklearn/scipy on values recounted from the rows; the judges page over HTTP."""
from __future__ import annotations

import re
import statistics

import pytest
from django.urls import reverse
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from annotation import services
from annotation.models import Judgment, Output, StudyMember
from arena import judging
from arena.models import Judge, JudgeScore, JudgeVerdict
from metrics import judge as judge_math
from metrics.summary import summary_recompute
from tests.annotation import test_likert
from tests.conftest import client_for
from tests.helpers.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.django_db

CRITERIA = test_likert.CRITERIA
likert_study = test_likert.likert_study  # the fixture, used by ``study`` below

RUBRIC = "Q: {prompt}\nA: {output}\nC: {criterion}\nD: {description}\nS: {scale}\nEnd with SCORE: n."
SCALE = {c["key"]: c["scale"] for c in CRITERIA}
NAME_TO_KEY = {c["name"]: c["key"] for c in CRITERIA}
_ITEM = re.compile(r"A: Variant (\d) answer to q(\d)\nC: (.+)\n")


def judge_point(variant: int, q: int, key: str) -> int | None:
    """The scripted judge's intended point; None where its reply has no usable score line."""
    if (variant, q, key) == (0, 0, "factuality"):
        return None  # rambles without a score line
    if (variant, q, key) == (1, 2, "style"):
        return None  # says SCORE: 9 on a 1..5 scale
    return 1 + (variant + q) % 3 if key == "factuality" else 1 + (2 * variant + q) % 5


def scripted_judge(body) -> str:
    text = body["messages"][-1]["content"]
    variant, q, name = _ITEM.search(text).groups()
    variant, q, key = int(variant), int(q), NAME_TO_KEY[name]
    if (variant, q, key) == (0, 0, "factuality"):
        return "Mostly right, I think."
    if (variant, q, key) == (1, 2, "style"):
        return "Excellent.\nSCORE: 9"
    return f"Reasoning...\nSCORE: {judge_point(variant, q, key)}"


def human_points(variant: int, q: int, k: int) -> dict:
    return {"factuality": 1 + (variant + q * k) % 3, "style": 1 + (2 * variant + q + k) % 5}


def _rate_all(study, annotators) -> None:
    for k, annotator in enumerate(annotators):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            variant, q = map(int, re.match(r"Variant (\d) answer to q(\d)", a.unit.output_a.text).groups())
            services.judgment_submit(assignment=a, ratings=human_points(variant, q, k))


@pytest.fixture
def study(likert_study, annotators):
    s = likert_study(overlap=2, n_prompts=3)
    assert Output.objects.filter(study=s, status="done").count() == 6
    return s


def _run(judge: Judge, claim: str = "task-1") -> str:
    judging.judge_run_start(study=judge.study, judge=judge)
    return judging.judge_run_execute(judge_id=judge.pk, claim=claim)


def _spec(server, **extra) -> dict:
    return {"base_url": server.base_url, "model": "judge-m", "max_concurrency": 1, **extra}


def _variant_q(output_text: str) -> tuple[int, int]:
    return tuple(map(int, re.match(r"Variant (\d) answer to q(\d)", output_text).groups()))


def test_a_likert_judge_rates_every_output_on_every_criterion_once(study):
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="likert-judge", kind="likert", backend="openai",
                                     rubric=RUBRIC, spec=_spec(server))
        assert _run(judge, "first") == "done"
        bodies = list(server.bodies)
        assert len(bodies) == 12  # 6 outputs x 2 criteria, one request each
        # the prompt as the rubric says, with the criterion's name, its points and its scale
        outputs = {o.pk: o for o in Output.objects.filter(study=study).select_related("prompt")}
        first = min(outputs)
        assert bodies[0]["messages"][-1]["content"] == judge_math.build_likert_prompt(
            RUBRIC, outputs[first].prompt.text, outputs[first].text, "Factuality",
            "Points: 1 = Wrong, 2 = Partly right, 3 = Right", 3)
        assert "S: 1 to 5" in bodies[1]["messages"][-1]["content"]
        assert all(b["temperature"] == 0.0 for b in bodies)  # greedy, as pairwise judges

        stored = {(s.output_id, s.criterion): s for s in JudgeScore.objects.filter(judge=judge)}
        assert len(stored) == 12
        for (output_id, key), score in stored.items():
            variant, q = _variant_q(outputs[output_id].text)
            assert score.value == judge_point(variant, q, key), (variant, q, key)
            assert score.reply == scripted_judge({"messages": [{"content": judge_math.build_likert_prompt(
                RUBRIC, outputs[output_id].prompt.text, outputs[output_id].text,
                {c["key"]: c["name"] for c in CRITERIA}[key], judge_math.describe(
                    {c["key"]: c for c in CRITERIA}[key]), SCALE[key])}]}).strip()
        judge.refresh_from_db()
        assert (judge.status, judge.n_total, judge.n_done, judge.n_failed, judge.error) == ("done", 12, 12, 0, "")

        # a rerun asks nothing and adds nothing (unparseable items are answered: no score, not missing)
        before = list(JudgeScore.objects.order_by("pk").values_list("pk", "output_id", "criterion", "value"))
        assert _run(judge, "second") == "done"
        assert server.request_count == 12
        assert list(JudgeScore.objects.order_by("pk").values_list("pk", "output_id", "criterion", "value")) == before
    assert not JudgeVerdict.objects.exists() and not Judgment.objects.exists()  # never a human judgment


def test_the_summary_gives_means_agreement_and_unparseable_per_criterion(study, annotators):
    _rate_all(study, annotators)
    services.member_exclude(study=study, user=annotators[2])  # their ratings must not count
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="lj", kind="likert", backend="openai", rubric=RUBRIC,
                                     spec=_spec(server))
        assert _run(judge) == "done"
    [row] = judging.judge_summary(study)
    assert (row["kind"], row["n_done"], row["n_total"], row["unparseable"]) == ("likert", 12, 12, 2)
    # the pairwise keys are there, empty
    assert (row["win_rates"], row["kappa"], row["inconsistency_rate"], row["n_agreement"]) == ([], None, None, 0)

    # independent recount: human points per output from the rows, the judge's from the script
    excluded = set(StudyMember.objects.filter(study=study, excluded=True).values_list("user", flat=True))
    humans: dict[tuple[int, str], list[int]] = {}
    for output_id, annotator, ratings in Judgment.objects.filter(study=study).values_list(
            "unit__output_a_id", "annotator_id", "ratings"):
        if annotator not in excluded:
            for key, value in ratings.items():
                humans.setdefault((output_id, key), []).append(value)
    outputs = {o.pk: (o.candidate.name, *_variant_q(o.text)) for o in Output.objects.filter(study=study)
               .select_related("candidate")}
    by_key = {c["key"]: c for c in row["criteria"]}
    assert list(by_key) == ["factuality", "style"]
    for key in ("factuality", "style"):
        cell = by_key[key]
        points = {oid: judge_point(v, q, key) for oid, (_c, v, q) in outputs.items()}
        assert cell["unparseable"] == 1 and cell["scale"] == SCALE[key]
        means = {}
        for oid, (cand, _v, _q) in outputs.items():
            if points[oid] is not None:
                means.setdefault(cand, []).append(points[oid])
        assert cell["means"] == [{"candidate": c, "mean": pytest.approx(sum(v) / len(v)), "n": len(v)}
                                 for c, v in sorted(means.items())]
        both = [oid for oid in sorted(outputs) if points[oid] is not None and (oid, key) in humans]
        j = [points[oid] for oid in both]
        med = [int(statistics.median(humans[(oid, key)]) + 0.5) for oid in both]
        mean = [statistics.mean(humans[(oid, key)]) for oid in both]
        assert cell["n_agreement"] == len(both) == 5
        assert cell["percent_agreement"] == pytest.approx(100 * sum(a == b for a, b in zip(j, med)) / len(both))
        assert cell["kappa"] == pytest.approx(
            cohen_kappa_score(j, med, weights="quadratic", labels=list(range(1, SCALE[key] + 1))), abs=1e-9)
        assert cell["kendall_tau"]["value"] == pytest.approx(stats.kendalltau(j, mean).statistic, abs=1e-9)
        assert cell["spearman_rho"]["value"] == pytest.approx(stats.spearmanr(j, mean).statistic, abs=1e-9)
        assert cell["kendall_tau"]["lower"] <= cell["kendall_tau"]["value"] <= cell["kendall_tau"]["upper"]
    assert judging.judge_summary(study) == [row]  # the bootstrap is seeded: the same figures on every read


def test_failed_requests_leave_items_unanswered_and_a_rerun_asks_only_those(study, monkeypatch):
    secret = "sk-likert-secret-0987654321"
    monkeypatch.setenv("EVALSITE_KEY_JUDGE", secret)
    with FakeOpenAIServer(reply=scripted_judge, echo_headers="error", fail_status=502) as server:
        judge = judging.judge_create(study=study, name="lj", kind="likert", backend="openai", rubric=RUBRIC,
                                     spec=_spec(server, api_key_env="EVALSITE_KEY_JUDGE", max_retries=0))
        assert _run(judge, "first") == "failed"
        judge.refresh_from_db()
        assert (judge.status, judge.n_done, judge.n_failed) == ("failed", 0, 12)
        assert judge.error.startswith("12 item(s) got no score") and "HTTP 502" in judge.error
        assert secret not in judge.error and "sk-likert" not in judge.error
        assert not JudgeScore.objects.exists()
        server.echo_headers = None
        server.fail_first = server.request_count + 5  # the endpoint recovers after five more failures
        assert _run(judge, "second") == "failed"
        judge.refresh_from_db()
        assert (judge.n_done, judge.n_failed) == (7, 5) and JudgeScore.objects.count() == 7
        asked = server.request_count
        assert _run(judge, "third") == "done"
        assert server.request_count == asked + 5  # only the five still missing
    judge.refresh_from_db()
    assert (judge.status, judge.n_done, judge.n_failed, judge.error) == ("done", 12, 0, "")


def test_a_local_transformers_model_can_rate(study, tiny_models):
    # a random tiny model never writes the score line: every item is answered, none scored
    judge = judging.judge_create(study=study, name="local", kind="likert", backend="transformers", rubric=RUBRIC,
                                 spec={"model": tiny_models["causal"]}, max_new_tokens=4)
    assert _run(judge) == "done", Judge.objects.get(pk=judge.pk).error
    assert list(JudgeScore.objects.values_list("value", flat=True)) == [None] * 12
    [row] = judging.judge_summary(study)
    assert row["unparseable"] == 12 and [c["unparseable"] for c in row["criteria"]] == [6, 6]


def test_bad_input_is_refused_naming_what_is_wrong(study, evaluator, study_factory):
    url = reverse("arena:judges", args=[study.pk])
    ev = client_for(evaluator)
    base = {"name": "j", "backend": "openai", "max_new_tokens": "64",
            "spec": '{"base_url": "http://127.0.0.1:9/v1", "model": "m"}'}
    unknown = ev.post(url, {**base, "kind": "pointwise", "rubric": ""})
    assert unknown.status_code == 400 and "pointwise is not a judge kind" in unknown.content.decode()
    # a pairwise rubric for a Likert judge: the form names the placeholders it lacks
    wrong = ev.post(url, {**base, "kind": "likert", "rubric": judge_math.DEFAULT_RUBRIC})
    html = wrong.content.decode()
    assert wrong.status_code == 400 and "likert rubric must contain {output}, {criterion}, {scale}" in html
    assert not Judge.objects.exists()
    # an empty rubric takes the default of its kind
    assert ev.post(url, {**base, "kind": "likert", "rubric": ""}).status_code == 302
    assert Judge.objects.get().rubric == judge_math.DEFAULT_LIKERT_RUBRIC
    assert ev.post(url, {**base, "name": "p", "rubric": ""}).status_code == 302  # no kind: pairwise
    assert Judge.objects.get(name="p").kind == "pairwise"
    # a study without criteria has nothing for a Likert judge to rate
    plain = study_factory(candidates=("a", "b"))
    refused = ev.post(reverse("arena:judges", args=[plain.pk]), {**base, "kind": "likert", "rubric": ""})
    assert refused.status_code == 409 and "has none" in refused.content.decode()
    assert not Judge.objects.filter(study=plain).exists()
    with pytest.raises(services.ServiceError, match="unknown judge kind 'x'"):
        judging.judge_create(study=study, name="k", kind="x", backend="openai",
                             spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})


def test_the_page_shows_the_figures_and_polls_only_while_a_judge_is_busy(study, evaluator, manager, annotators):
    _rate_all(study, annotators)
    url = reverse("arena:judges", args=[study.pk])
    ev, mg = client_for(evaluator), client_for(manager)
    with FakeOpenAIServer(reply=scripted_judge) as server:
        spec = '{"base_url": "%s", "model": "m"}' % server.base_url
        assert ev.post(url, {"name": "lj", "kind": "likert", "backend": "openai", "rubric": RUBRIC,
                             "max_new_tokens": "64", "spec": spec}).status_code == 302
        judge = Judge.objects.get(study=study)
        assert ev.post(reverse("arena:judge_start", args=[study.pk, judge.pk])).status_code == 302
        queued = mg.get(url).content.decode()
        assert 'hx-trigger="every 2s"' in queued and "?poll=1" in queued  # queued: the table polls
        poll = mg.get(url + "?poll=1", HTTP_HX_REQUEST="true")
        assert poll.status_code == 200 and "<html" not in poll.content.decode()
        assert 'data-status="queued"' in poll.content.decode()
        assert judging.judge_run_execute(judge_id=judge.pk, claim="page") == "done"
    # done, but the aggregation worker has not summarised it yet: state shown, figures on their way
    waiting = mg.get(url).content.decode()
    assert "12 of 12" in waiting and "(figures updating)" in waiting and 'hx-trigger="every 2s"' in waiting
    summary_recompute(study_id=study.pk)  # the worker's part (requested when the run ended)
    [row] = judging.judge_summary(study)
    page = mg.get(url)
    html = page.content.decode()
    assert page.status_code == 200 and 'hx-trigger="every 2s"' not in html  # nothing busy: no polling
    assert "12 of 12" in html and "2 unparseable" in html
    for c in row["criteria"]:
        section = re.search(r'<tr data-criterion="%s">(.*?)</tr>' % c["key"], html, re.S).group(1)
        for m in c["means"]:
            assert f'{m["candidate"]} {m["mean"]:.2f} (n={m["n"]})' in section
        assert f'{c["kappa"]:.3f}' in section and f'{c["percent_agreement"]:.1f}% of {c["n_agreement"]}' in section
        tau = c["kendall_tau"]
        assert f'{tau["value"]:.3f} [{tau["lower"]:.3f}, {tau["upper"]:.3f}]' in section
        assert re.search(r"<td>1</td>\s*</tr>|<td>1</td>\s*$", section)  # one unparseable reply each
    assert "SCORE: &lt;a whole number from {scale}&gt;" not in html  # managers get no form or default rubrics
    assert "SCORE: &lt;a whole number from {scale}&gt;" in ev.get(url).content.decode()
    stopped = mg.get(url + "?poll=1", HTTP_HX_REQUEST="true")
    assert stopped.status_code == 286 and 'data-kind="likert"' in stopped.content.decode()  # htmx stops polling
    # while a judge runs again the page keeps the last figures and polls for its progress
    Judge.objects.filter(pk=judge.pk).update(status="running")
    busy = mg.get(url + "?poll=1", HTTP_HX_REQUEST="true")
    assert busy.status_code == 200 and 'data-status="running"' in busy.content.decode()
    assert f'{row["criteria"][0]["kappa"]:.3f}' in busy.content.decode()


def test_annotators_the_ratings_mode_leaves_out_are_left_out_of_the_agreement_too(study, annotators):
    """A flagged annotator (or one of competence 0) left out by the mode counts as if excluded by hand."""
    _rate_all(study, annotators)
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="lj", kind="likert", backend="openai", rubric=RUBRIC,
                                     spec=_spec(server))
        assert _run(judge) == "done"
    everyone = judging.judge_summary(study)
    flagged = judging.judge_summary(study, {"mode": "exclude_flagged", "left_out": [annotators[0].pk], "weights": {}})
    zero = judging.judge_summary(study, {"mode": "competence", "left_out": [], "weights": {str(annotators[0].pk): 0.0}})
    services.member_exclude(study=study, user=annotators[0])
    by_hand = judging.judge_summary(study)
    assert flagged == zero == by_hand
    assert flagged != everyone  # their points moved the agreement: the test tells the two apart


def test_a_likert_judges_rubric_is_edited_against_its_own_placeholders_until_it_has_scores(study, evaluator):
    from html import unescape

    spec = '{"base_url": "http://127.0.0.1:9/v1", "model": "m"}'
    judge = judging.judge_create(study=study, name="lj", kind="likert", backend="openai", rubric=RUBRIC,
                                 spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    ev = client_for(evaluator)
    url = reverse("arena:judge_edit", args=[study.pk, judge.pk])
    no_scale = RUBRIC.replace("S: {scale}\n", "")
    for rubric, message in ((no_scale, "rubric: a likert rubric must contain {scale}"),
                            (judge_math.DEFAULT_RUBRIC, "rubric: a likert rubric must contain {output}, {criterion}, "
                                                        "{scale}")):
        refused = ev.post(url, {"rubric": rubric, "max_new_tokens": "64", "spec": spec})
        assert refused.status_code == 400 and message in unescape(refused.content.decode())
    assert Judge.objects.get(pk=judge.pk).rubric == RUBRIC
    edited = "Rate {output} (asked: {prompt}) on {criterion}, {scale}.\nEnd with SCORE: n."
    assert ev.post(url, {"rubric": edited, "max_new_tokens": "64", "spec": spec}).status_code == 302
    assert (Judge.objects.get(pk=judge.pk).rubric, Judge.objects.get(pk=judge.pk).kind) == (edited, "likert")
    # once it has scores, its figures belong to that rubric: a copy is offered instead
    JudgeScore.objects.bulk_create(JudgeScore(judge=judge, output=o, criterion="style", value=3, reply="SCORE: 3")
                                   for o in Output.objects.filter(study=study)[:2])
    refused = ev.post(url, {"rubric": RUBRIC, "max_new_tokens": "64", "spec": spec})
    text = unescape(" ".join(refused.content.decode().split()))
    assert refused.status_code == 400 and "judge 'lj' already has 2 score(s) made with its current rubric" in text
    assert 'use "New judge from this one"' in text
    assert Judge.objects.get(pk=judge.pk).rubric == edited
    copy = unescape(ev.get(reverse("arena:judges", args=[study.pk]) + f"?from={judge.pk}").content.decode())
    form = copy.split('id="judge-add"', 1)[1].split("</form>", 1)[0]
    assert '<option value="likert" selected>' in form and f"{edited}</textarea>" in form
    assert 'name="name" value="lj v2"' in form
