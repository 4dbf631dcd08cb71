"""LLM judges through a real OpenAI-compatible server (tests.helpers.fake_openai), the task body in-process."""
import json
import re

import pytest
from sklearn.metrics import cohen_kappa_score

from annotation import services
from annotation.models import Judgment, Unit
from annotation.services import ServiceError
from arena import judging, outcomes
from arena.models import Judge, JudgeVerdict
from metrics import judge as judge_math
from metrics.summary import summary_recompute
from tests.helpers.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.django_db

RUBRIC = "Request: {prompt}\n<<1>> {output_1}\n<<2>> {output_2}\nEnd with VERDICT: 1, 2 or tie."


def _content(body) -> str:
    return body["messages"][-1]["content"]


def scripted_judge(body) -> str:
    """A judge with known habits: prefers "Variant 0" (alpha) on p1/p2, always picks the first
    output on the refund question (position bias) and rambles without a verdict on cancelling."""
    text = _content(body)
    if "refund" in text:
        return "The first one reads better.\nVERDICT: 1"
    if "cancel" in text:
        return "Hard to say, both have merits."
    return f"Reasoning...\nVERDICT: {'1' if '<<1>> Variant 0' in text else '2'}"


def _alpha_side(unit: Unit) -> int:
    return outcomes.A if unit.output_a.candidate.name == "alpha-model" else outcomes.B


def _vote(study, annotator, prefer: str) -> None:
    """Vote on every unit the annotator is served, for ``prefer`` (a candidate name)."""
    while (assignment := services.assignment_next(study=study, annotator=annotator)) is not None:
        want_a = assignment.unit.output_a.candidate.name == prefer
        services.judgment_submit(assignment=assignment, choice="left" if assignment.left_is_a == want_a else "right")


@pytest.fixture
def study(study_factory):
    s = study_factory(candidates=("alpha-model", "beta-model"), overlap=2)
    assert Unit.objects.filter(study=s, kind=Unit.Kind.PAIRWISE).count() == 4
    return s


def _run(judge: Judge, claim: str = "task-1") -> str:
    judging.judge_run_start(study=judge.study, judge=judge)
    return judging.judge_run_execute(judge_id=judge.pk, claim=claim)


def test_it_asks_both_orders_and_stores_one_verdict_per_unit(study, evaluator):
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="gpt-judge", backend="openai", rubric=RUBRIC,
                                     spec={"base_url": server.base_url, "model": "judge-m", "max_concurrency": 1},
                                     actor=evaluator)
        assert _run(judge) == "done"
        bodies = list(server.bodies)
    assert len(bodies) == 8  # 4 units x 2 orders
    units = list(Unit.objects.filter(study=study).order_by("pk").select_related("output_a", "output_b", "prompt"))
    for unit, first, second in zip(units, bodies[0::2], bodies[1::2]):
        # output_a shown first, then output_b first, each with the unit's prompt
        assert _content(first) == judge_math.build_prompt(RUBRIC, unit.prompt.text, unit.output_a.text,
                                                          unit.output_b.text)
        assert _content(second) == judge_math.build_prompt(RUBRIC, unit.prompt.text, unit.output_b.text,
                                                           unit.output_a.text)
        assert first["model"] == "judge-m" and first["temperature"] == 0.0
    verdicts = {v.unit.prompt.external_id: v for v in JudgeVerdict.objects.select_related("unit__prompt",
                                                                                          "unit__output_a__candidate")}
    for pid in ("p1", "p2"):
        v = verdicts[pid]
        assert v.consistent and v.outcome == outcomes.STORED[_alpha_side(v.unit)]
        assert v.first_order_reply.endswith("VERDICT: " + ("1" if v.outcome == "a" else "2"))
    # position bias and an unparsed reply: ties, counted as inconsistent
    assert (verdicts["p3"].outcome, verdicts["p3"].consistent) == ("tie", False)
    assert verdicts["p3"].first_order_reply == verdicts["p3"].second_order_reply == (
        "The first one reads better.\nVERDICT: 1")
    assert (verdicts["p4"].outcome, verdicts["p4"].consistent) == ("tie", False)
    judge.refresh_from_db()
    assert (judge.status, judge.n_total, judge.n_done, judge.error) == ("done", 4, 4, "")


def test_a_second_run_asks_nothing_and_changes_nothing(study):
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC,
                                     spec={"base_url": server.base_url, "model": "m"})
        assert _run(judge, "first") == "done"
        before = list(JudgeVerdict.objects.order_by("pk").values_list("pk", "unit_id", "outcome", "consistent"))
        assert server.request_count == 8
        assert _run(judge, "second") == "done"
        assert server.request_count == 8
    assert list(JudgeVerdict.objects.order_by("pk").values_list("pk", "unit_id", "outcome", "consistent")) == before
    # a redelivery of a claimed task id finds nothing to claim once the run is done
    assert judging.judge_run_execute(judge_id=judge.pk, claim="second") == "not claimed"


def test_the_summary_gives_win_rates_inconsistency_and_agreement_with_humans(study, annotators):
    _vote(study, annotators[0], "alpha-model")
    _vote(study, annotators[1], "alpha-model")
    _vote(study, annotators[2], "beta-model")  # then excluded: must not count
    services.member_exclude(study=study, user=annotators[2])
    n_judgments = Judgment.objects.count()
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC,
                                     spec={"base_url": server.base_url, "model": "m"})
        _run(judge)
    assert Judgment.objects.count() == n_judgments  # a judge never writes human judgments
    [row] = judging.judge_summary(study)
    assert row["n_done"] == 4 and row["inconsistent"] == 2 and row["inconsistency_rate"] == 0.5
    # alpha: wins p1, p2, ties p3, p4 -> (1 + 1 + .5 + .5) / 4
    assert row["win_rates"] == [{"candidate": "alpha-model", "win_rate": 0.75, "n": 4},
                                {"candidate": "beta-model", "win_rate": 0.25, "n": 4}]
    # independent reference: the humans who count chose alpha on every unit
    units = Unit.objects.filter(study=study).order_by("pk").select_related("output_a__candidate")
    human = [_alpha_side(u) for u in units]
    by_unit = dict(JudgeVerdict.objects.values_list("unit_id", "outcome"))
    judged = [outcomes.STORED_CODE[by_unit[u.pk]] for u in units]
    assert row["n_agreement"] == 4 and row["percent_agreement"] == pytest.approx(50.0)
    expected = cohen_kappa_score(judged, human)
    assert row["kappa"] == pytest.approx(expected, abs=1e-12)


def test_the_spec_policy_refuses_a_key_variable_outside_evalsite_key(study):
    with pytest.raises(ServiceError, match="EVALSITE_API_KEY_ENVS"):
        judging.judge_create(study=study, name="j", backend="openai",
                             spec={"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "OPENAI_API_KEY"})
    with pytest.raises(ServiceError, match=r"\{output_1\}"):
        judging.judge_create(study=study, name="j", backend="openai", rubric="{prompt} {output_2}",
                             spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert not Judge.objects.exists()


def test_an_endpoint_error_is_stored_scrubbed_and_a_later_run_fills_the_gap(study, monkeypatch):
    secret = "sk-judge-secret-1234567890"
    monkeypatch.setenv("EVALSITE_KEY_JUDGE", secret)
    with FakeOpenAIServer(reply=scripted_judge, echo_headers="error", fail_status=502) as server:
        judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC,
                                     spec={"base_url": server.base_url, "model": "m", "api_key_env": "EVALSITE_KEY_JUDGE",
                                           "max_retries": 0})
        assert _run(judge, "first") == "failed"
        assert server.headers[0]["authorization"] == f"Bearer {secret}"
        judge.refresh_from_db()
        assert judge.status == "failed" and judge.n_failed == 4 and judge.n_done == 0
        assert "HTTP 502" in judge.error and secret not in judge.error
        assert not re.search(r"sk-judge", judge.error)
        assert not JudgeVerdict.objects.exists()
        server.echo_headers = None  # the endpoint recovers: the next start asks the four units again
        assert _run(judge, "second") == "done"
    judge.refresh_from_db()
    assert (judge.status, judge.n_done, judge.n_failed, judge.error) == ("done", 4, 0, "")


def test_starting_a_queued_judge_again_queues_nothing_new(study):
    judge = judging.judge_create(study=study, name="j", backend="openai", rubric="",
                                 spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert judge.rubric == judge_math.DEFAULT_RUBRIC
    assert judging.judge_run_start(study=study, judge=judge).status == "queued"
    assert Judge.objects.filter(pk=judge.pk, status="queued").update(claim="x") == 1
    assert judging.judge_run_start(study=study, judge=judge).claim == "x"  # left alone


def test_a_local_transformers_model_can_judge(study, tiny_models):
    # a random tiny model never writes the verdict line: every pair is unparsed, so a tie, inconsistent
    judge = judging.judge_create(study=study, name="local", backend="transformers", rubric=RUBRIC,
                                 spec={"model": tiny_models["causal"]}, max_new_tokens=8)
    assert _run(judge) == "done", Judge.objects.get(pk=judge.pk).error
    rows = list(JudgeVerdict.objects.filter(judge=judge).values_list("outcome", "consistent"))
    assert rows == [("tie", False)] * 4
    assert judging.judge_summary(study)[0]["inconsistency_rate"] == 1.0


def test_an_evaluator_adds_and_starts_a_judge_and_a_manager_reads_its_results(
        study, evaluator, manager, annotators, django_capture_on_commit_callbacks):
    from django.test import Client
    from django.urls import reverse

    _vote(study, annotators[0], "alpha-model")
    url = reverse("arena:judges", args=[study.pk])
    ev, mg = Client(), Client()
    ev.force_login(evaluator)
    mg.force_login(manager)
    with FakeOpenAIServer(reply=scripted_judge) as server:
        spec = '{"base_url": "%s", "model": "m"}' % server.base_url
        refused = ev.post(url, {"name": "j", "backend": "openai", "rubric": "no placeholders",
                                "max_new_tokens": "64", "spec": spec})
        assert refused.status_code == 400 and b"{prompt}" in refused.content
        assert mg.post(url, {"name": "j", "backend": "openai", "rubric": RUBRIC, "max_new_tokens": "64",
                             "spec": spec}).status_code == 403
        response = ev.post(url, {"name": "j", "backend": "openai", "rubric": RUBRIC, "max_new_tokens": "64",
                                 "spec": spec})
        assert response.status_code == 302
        judge = Judge.objects.get(study=study)
        with django_capture_on_commit_callbacks() as callbacks:
            assert ev.post(reverse("arena:judge_start", args=[study.pk, judge.pk])).status_code == 302
        assert len(callbacks) == 1  # one task enqueued (not run: the task body runs below, in-process)
        assert judging.judge_run_execute(judge_id=judge.pk, claim="page") == "done"
    summary_recompute(study_id=study.pk)  # the aggregation worker's part, requested when the run ended
    page = mg.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "alpha-model 0.750 (n=4)" in html and "beta-model 0.250 (n=4)" in html
    assert "2 (50%)" in html and "50.0% of 4" in html
    assert 'action="/studies/%d/judges/' % study.pk not in html  # managers get no forms


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_the_judge_and_its_figures_reach_the_summary(celery_worker_process, study_factory,
                                                                     annotators, manager):
    """Generation queue: the judge asks; aggregation queue: the refresh its end requested puts
    its win rates in the summary and its figures on the judges page."""
    from django.urls import reverse

    from arena.models import RatingSnapshot
    from tests.conftest import client_for, wait_for

    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=2)
    _vote(study, annotators[0], "alpha-model")
    with FakeOpenAIServer(reply=scripted_judge) as server:
        judge = judging.judge_create(study=study, name="w", backend="openai", rubric=RUBRIC, max_new_tokens=64,
                                     spec={"base_url": server.base_url, "model": "m"})
        judging.judge_run_start(study=study, judge=judge)
        wait_for(lambda: Judge.objects.get(pk=judge.pk).status == "done", what="the judge run",
                 worker=celery_worker_process)

    def summarised():
        payload = RatingSnapshot.objects.filter(study=study, method="summary").values_list("payload", flat=True)
        return any(j["judge"] == judge.pk for j in (payload.first() or {}).get("judges", []))

    wait_for(summarised, what="the judge in the summary", worker=celery_worker_process)
    rows = {r["candidate"]: r["judges"][0] for r in
            client_for(manager).get(reverse("metrics:summary", args=[study.pk]) + "?format=json").json()["rows"]}
    assert rows["alpha-model"] == {"key": f"judge{judge.pk}", "win_rate": 0.75, "n": 4}
    page = client_for(manager).get(reverse("arena:judges", args=[study.pk])).content.decode()
    assert "alpha-model 0.750 (n=4)" in page and "(figures updating)" not in page


def test_the_judges_page_says_whose_judgments_its_human_side_counted_in_constant_queries(study, annotators,
                                                                                          manager):
    """The ratings mode sentence the summary snapshot carries, read in the same query as the figures."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from annotation.models import Study
    from arena.services import ratings_recompute
    from tests.conftest import client_for

    _vote(study, annotators[0], "alpha-model")
    Study.objects.filter(pk=study.pk).update(ratings_mode="exclude_flagged")
    ratings_recompute(study_id=study.pk, rounds=20)
    summary_recompute(study_id=study.pk)
    client = client_for(manager)
    url = reverse("arena:judges", args=[study.pk])
    client.get(url)  # the session is cached from here on
    counts = []
    for n in range(2):
        with CaptureQueriesContext(connection) as ctx:
            html = client.get(url).content.decode()
        counts.append(len(ctx.captured_queries))
        assert 'id="judges-ratings-mode"' in html
        assert "Human side: Flagged annotators left out (0)." in " ".join(html.split())
        for k in range(2):  # more judges with verdicts on every pair
            judge = Judge.objects.create(study=study, name=f"j{n}{k}", backend="openai", spec={}, rubric="x",
                                         status=Judge.Status.DONE)
            JudgeVerdict.objects.bulk_create(JudgeVerdict(judge=judge, unit=u, outcome="a", consistent=True)
                                             for u in study.units.filter(kind="pairwise"))
        summary_recompute(study_id=study.pk)
    assert counts[0] == counts[1], counts
    assert "Human side: All annotators counted." not in html


# --- editing a judge, and a new judge from one ----------------------------------------------

EDITED = "Question: {prompt}\n<<1>> {output_1}\n<<2>> {output_2}\nWhich is more accurate? End with VERDICT: 1, 2 or tie."
SPEC = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}


def _edit(client, judge, **fields):
    from django.urls import reverse

    data = {"rubric": fields.pop("rubric", judge.rubric), "max_new_tokens": str(fields.pop("max_new_tokens", 512)),
            "spec": fields.pop("spec", '{"base_url": "http://127.0.0.1:9/v1", "model": "m"}')}
    return client.post(reverse("arena:judge_edit", args=[judge.study_id, judge.pk]), data)


def _text(response) -> str:
    return " ".join(response.content.decode().split())


def test_an_evaluator_edits_a_fresh_judges_rubric_and_the_judge_asks_with_it(study, evaluator):
    from html import unescape

    from django.urls import reverse

    from annotation.models import AuditEntry
    from tests.conftest import client_for

    judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC, spec=SPEC, actor=evaluator)
    client = client_for(evaluator)
    page = client.get(reverse("arena:judges", args=[study.pk])).content.decode()
    assert f'id="judge-edit-{judge.pk}"' in page
    assert f'action="{reverse("arena:judge_edit", args=[study.pk, judge.pk])}"' in page
    assert unescape(page).count(RUBRIC) >= 1  # the edit form holds the current rubric
    with FakeOpenAIServer(reply=scripted_judge) as server:
        spec = '{"base_url": "%s", "model": "judge-2"}' % server.base_url
        response = _edit(client, judge, rubric=EDITED, max_new_tokens=64, spec=spec)
        assert response.status_code == 302 and response["Location"] == reverse("arena:judges", args=[study.pk])
        judge.refresh_from_db()
        assert (judge.rubric, judge.max_new_tokens, judge.spec["model"]) == (EDITED, 64, "judge-2")
        assert (judge.name, judge.kind, judge.backend) == ("j", "pairwise", "openai")
        entry = AuditEntry.objects.get(study=study, action=AuditEntry.Action.JUDGE_CHANGED, target="judge j")
        assert entry.actor == evaluator
        assert entry.detail["rubric"] == {"from": RUBRIC, "to": EDITED}
        assert entry.detail["max_new_tokens"] == {"from": 512, "to": 64}
        assert _run(judge) == "done"
        bodies = list(server.bodies)
    units = Unit.objects.filter(study=study).select_related("prompt", "output_a", "output_b")
    assert sorted(_content(b) for b in bodies) == sorted(
        judge_math.build_prompt(EDITED, u.prompt.text, *texts)
        for u in units for texts in ((u.output_a.text, u.output_b.text), (u.output_b.text, u.output_a.text)))
    assert {(b["model"], b["max_tokens"]) for b in bodies} == {("judge-2", 64)}


def test_an_edit_with_bad_input_is_a_400_naming_the_field_and_changes_nothing(study, evaluator):
    from annotation.models import AuditEntry
    from tests.conftest import client_for

    judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC, spec=SPEC)
    client = client_for(evaluator)
    before = Judge.objects.values().get(pk=judge.pk)
    cases = [
        ({"rubric": "{prompt} <<1>> {output_1} and no second"},
         "Judge 'j' not saved: rubric: a pairwise rubric must contain {output_2}"),
        ({"rubric": "nothing to fill in"},
         "Judge 'j' not saved: rubric: a pairwise rubric must contain {prompt}, {output_1}, {output_2}"),
        ({"max_new_tokens": 0}, "Judge 'j' not saved: max_new_tokens: Ensure this value is greater than or equal to 1."),
        ({"spec": "[1, 2"}, "Judge 'j' not saved: spec is not valid JSON"),
        ({"spec": '{"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "OPENAI_API_KEY"}'},
         "EVALSITE_API_KEY_ENVS"),
    ]
    for fields, message in cases:
        response = _edit(client, judge, **fields)
        assert response.status_code == 400, fields
        assert message in _text(response).replace("&#x27;", "'"), (fields, _text(response)[:3000])
        assert f'id="judge-edit-{judge.pk}" open' in response.content.decode()  # the form is shown again, open
    assert Judge.objects.values().get(pk=judge.pk) == before
    assert not AuditEntry.objects.filter(target="judge j").exists()
    # an empty rubric takes the default of the kind, as at creation
    assert _edit(client, judge, rubric="").status_code == 302
    assert Judge.objects.get(pk=judge.pk).rubric == judge_math.DEFAULT_RUBRIC


def test_a_judge_with_verdicts_or_a_run_under_way_refuses_edits_and_says_what_to_do(study, evaluator):
    from annotation.models import AuditEntry
    from tests.conftest import client_for

    judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC, spec=SPEC)
    client = client_for(evaluator)
    judging.judge_run_start(study=study, judge=judge)  # queued: its task reads the rubric it has now
    response = _edit(client, judge, rubric=EDITED)
    assert response.status_code == 400
    assert "Not saved: judge 'j' is queued; wait until its run ends" in _text(response).replace("&#x27;", "'")
    Judge.objects.filter(pk=judge.pk).update(status=Judge.Status.DONE)
    JudgeVerdict.objects.bulk_create(JudgeVerdict(judge=judge, unit=u, outcome="a", consistent=True)
                                     for u in study.units.filter(kind="pairwise"))
    response = _edit(client, judge, rubric=EDITED)
    assert response.status_code == 400
    text = _text(response).replace("&#x27;", "'").replace("&quot;", '"')
    assert ("Not saved: judge 'j' already has 4 verdict(s) made with its current rubric, so it is not edited in "
            'place; use "New judge from this one" to add a copy with your changes') in text
    assert f'id="judge-edit-{judge.pk}"' not in response.content.decode()  # no edit form for it
    assert Judge.objects.get(pk=judge.pk).rubric == RUBRIC
    assert not AuditEntry.objects.filter(target="judge j").exists()
    with pytest.raises(ServiceError, match="already has 4 verdict"):  # the service refuses it too
        judging.judge_update(study=study, judge=judge, rubric=EDITED, spec=SPEC)


def test_a_new_judge_from_a_judged_one_is_prefilled_and_both_keep_their_figures(study, evaluator):
    from html import unescape

    from django.urls import reverse

    from tests.conftest import client_for

    spec = {**SPEC, "max_retries": 1}
    judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC, spec=spec,
                                 max_new_tokens=77)
    JudgeVerdict.objects.bulk_create(JudgeVerdict(judge=judge, unit=u, outcome="a", consistent=True)
                                     for u in study.units.filter(kind="pairwise"))
    client = client_for(evaluator)
    url = reverse("arena:judges", args=[study.pk])
    page = client.get(url).content.decode()
    assert f'href="{url}?from={judge.pk}#judge-add"' in page  # "New judge from this one"
    response = client.get(f"{url}?from={judge.pk}")
    assert response.status_code == 200
    html = unescape(response.content.decode())
    form = html.split('id="judge-add"', 1)[1].split("</form>", 1)[0]
    assert 'name="name" value="j v2"' in form
    assert '<option value="pairwise" selected>' in form and '<option value="openai" selected>' in form
    # the spec as stored (PostgreSQL's jsonb keeps its keys in an order of its own: compare values)
    shown = form.split('name="spec"', 1)[1].split(">", 1)[1].split("</textarea>", 1)[0]
    assert json.loads(shown) == judge.spec and judge.spec["max_retries"] == 1
    assert f"{RUBRIC}</textarea>" in form and 'name="max_new_tokens" value="77"' in form
    assert "A new judge from j:" in " ".join(html.split())
    # the evaluator edits the copy's rubric and adds it; the first judge keeps its rubric and verdicts
    response = client.post(url, {"name": "j v2", "kind": "pairwise", "backend": "openai", "rubric": EDITED,
                                 "max_new_tokens": "77", "spec": json_spec(spec)})
    assert response.status_code == 302
    copy = Judge.objects.get(study=study, name="j v2")
    assert (copy.rubric, copy.spec, copy.max_new_tokens) == (EDITED, judge.spec, 77)
    assert Judge.objects.get(pk=judge.pk).rubric == RUBRIC and JudgeVerdict.objects.filter(judge=judge).count() == 4
    # a copy of a copy gets the next free name
    assert 'name="name" value="j v3"' in client.get(f"{url}?from={judge.pk}").content.decode()
    # a from that names no judge of the study: a 400 naming it, the empty form
    for bad in ("999999", "x", str(10**30)):
        response = client.get(f"{url}?from={bad}")
        assert response.status_code == 400 and "from: &#x27;%s&#x27; is not a judge of this study" % bad[:40] in \
            response.content.decode()


def json_spec(spec: dict) -> str:
    import json

    return json.dumps(spec)


def test_only_the_studys_evaluator_edits_a_judge(study, evaluator, manager, annotators, make_user):
    from django.test import Client
    from django.urls import reverse

    from tests.conftest import client_for

    judge = judging.judge_create(study=study, name="j", backend="openai", rubric=RUBRIC, spec=SPEC)
    for user, status in ((manager, 403), (annotators[0], 403), (make_user("outsider"), 404)):
        assert _edit(client_for(user), judge, rubric=EDITED).status_code == status, user
    anonymous = _edit(Client(), judge, rubric=EDITED)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    assert client_for(evaluator).get(reverse("arena:judge_edit", args=[study.pk, judge.pk])).status_code == 405
    # a judge of another study, through this study's URL: not found
    from tests.conftest import PROMPTS_CSV

    other = services.study_create(name="Other study", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv")
    theirs = judging.judge_create(study=other, name="t", backend="openai", rubric=RUBRIC, spec=SPEC)
    response = client_for(evaluator).post(reverse("arena:judge_edit", args=[study.pk, theirs.pk]),
                                          {"rubric": EDITED, "max_new_tokens": "64", "spec": json_spec(SPEC)})
    assert response.status_code == 404
    assert Judge.objects.get(pk=judge.pk).rubric == RUBRIC and Judge.objects.get(pk=theirs.pk).rubric == RUBRIC
    # managers see neither the edit forms nor the copy links
    page = client_for(manager).get(reverse("arena:judges", args=[study.pk])).content.decode()
    assert "judge-edit-" not in page and "?from=" not in page


def test_the_evaluators_judges_page_with_its_forms_takes_constant_queries(study, evaluator):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from tests.conftest import client_for

    first = judging.judge_create(study=study, name="a", backend="openai", rubric=RUBRIC, spec=SPEC)
    client = client_for(evaluator)
    url = f"{reverse('arena:judges', args=[study.pk])}?from={first.pk}"
    client.get(url)
    counts = []
    for n in range(2):
        with CaptureQueriesContext(connection) as ctx:
            html = client.get(url).content.decode()
        counts.append(len(ctx.captured_queries))
        assert 'name="name" value="a v2"' in html
        for k in range(3):  # more judges, some with verdicts, some editable
            judge = judging.judge_create(study=study, name=f"j{n}{k}", backend="openai", rubric=RUBRIC, spec=SPEC)
            if k:
                JudgeVerdict.objects.bulk_create(JudgeVerdict(judge=judge, unit=u, outcome="a", consistent=True)
                                                 for u in study.units.filter(kind="pairwise"))
    # the second page: "a" and j00 editable, j01 and j02 judged; every judge has a copy link
    assert html.count('class="judge-edit"') == 2 and html.count('class="judge-copy"') == 4
    assert counts[0] == counts[1], counts
