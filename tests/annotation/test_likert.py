"""Likert tasks and failure tags: settings checked in one place, units served like pairs,
answers checked against the study's criteria, stored, summarised, and blind throughout."""
from __future__ import annotations

import json
import re
import threading

import pytest
from django.db import connection, connections
from django.db.models import Count
from django.urls import reverse

from annotation import services
from annotation.models import AuditEntry, Judgment, StudyMember, Unit
from tests.conftest import client_for, imported_jsonl, on_screen

pytestmark = pytest.mark.django_db

CRITERIA = [
    {"key": "factuality", "name": "Factuality", "scale": 3, "labels": ["Wrong", "Partly right", "Right"],
     "allow_na": True},
    {"key": "style", "name": "Style consistency", "scale": 5,
     "labels": ["Very poor", "Poor", "Fair", "Good", "Very good"]},
]
TAGS = [{"key": "hallucination", "label": "Hallucination"}, {"key": "refused", "label": "Refused"}]
CANDIDATES = ("alpha-model", "beta-model")


def _prompts(n: int) -> bytes:
    return ("id,prompt\n" + "".join(f"q{i},Question {i}?\n" for i in range(n))).encode()


@pytest.fixture
def likert_study(evaluator, annotators, manager):
    def make(*, kinds="likert", overlap=1, n_prompts=3, ask_rationale="optional", tags=TAGS):
        study = services.study_create(
            name="Rated study", created_by=evaluator, prompts_data=_prompts(n_prompts), prompts_filename="p.csv",
            overlap=overlap, annotators=annotators, managers=[manager],
            tasks={"task_kinds": kinds, "likert_criteria": CRITERIA, "failure_tags": tags,
                   "ask_rationale": ask_rationale},
        )
        for n, name in enumerate(CANDIDATES):
            cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
            services.outputs_import(candidate=cand, filename="out.jsonl", data=imported_jsonl(
                {f"q{i}": f"Variant {n} answer to q{i}" for i in range(n_prompts)}))
        study.refresh_from_db()
        return study
    return make


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize("tasks, message", [
    ({"task_kinds": "likert"}, "likert_criteria: task_kinds 'likert' needs at least one criterion"),
    ({"task_kinds": "grid"}, "task_kinds must be one of pairwise, likert, both"),
    ({"likert_criteria": [{"key": "f", "name": "F", "scale": 11, "labels": ["x"] * 11}]},
     "likert_criteria 'f' scale must be a whole number from 2 to 10"),
    ({"likert_criteria": [{"key": "f", "name": "F", "scale": 3, "labels": ["a", "b"]}]},
     "likert_criteria 'f' needs 3 labels, one for each point 1..3"),
    ({"likert_criteria": [{"key": "Has Space", "name": "F", "scale": 2, "labels": ["a", "b"]}]},
     "likert_criteria[1].key must be a short key"),
    ({"failure_tags": [{"key": "hands", "label": "Hands"}, {"key": "hands", "label": "Again"}]},
     "failure_tags[2].key 'hands' is used twice"),
    ({"ask_rationale": "always"}, "ask_rationale must be one of off, optional, required"),
])
def test_bad_task_settings_are_refused_naming_the_field(evaluator, tasks, message):
    with pytest.raises(services.ServiceError, match=re.escape(message)):
        services.study_create(name="S", created_by=evaluator, prompts_data=_prompts(1), prompts_filename="p.csv",
                              tasks=tasks)
    assert not StudyMember.objects.exists()


def test_the_settings_form_changes_the_tasks_with_an_audit_entry_and_builds_likert_units(
        client, likert_study, evaluator):
    study = likert_study(kinds="pairwise", tags=[])
    assert set(Unit.objects.filter(study=study).values_list("kind", flat=True)) == {"pairwise"}
    client.force_login(evaluator)
    url = reverse("annotation:settings", args=[study.pk])
    bad = client.post(url, {"overlap": 1, "task_kinds": "both", "ask_rationale": "required",
                            "likert_criteria": '[{"key": "f", "name": "F", "scale": 12}]', "failure_tags": ""},
                      follow=True)
    assert "likert_criteria &#x27;f&#x27; scale must be a whole number from 2 to 10" in bad.content.decode()
    study.refresh_from_db()
    assert study.task_kinds == "pairwise"
    client.post(url, {"overlap": 1, "task_kinds": "both", "ask_rationale": "required",
                      "likert_criteria": json.dumps(CRITERIA), "failure_tags": json.dumps(TAGS)})
    study.refresh_from_db()
    assert (study.task_kinds, study.ask_rationale, study.likert_criteria[0]["key"]) == ("both", "required",
                                                                                      "factuality")
    kinds = dict(Unit.objects.filter(study=study).values_list("kind").annotate(n=Count("id")))
    assert kinds == {"pairwise": 3, "likert": 6}  # one pair per prompt, one Likert unit per output
    entry = AuditEntry.objects.filter(study=study, action="settings_changed").latest("id")
    assert {"task_kinds", "failure_tags", "ask_rationale"} <= set(entry.detail)
    page = client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert "Style consistency" in page  # the criteria are shown back for editing


# --- units and answers ---------------------------------------------------------------


def test_a_likert_study_serves_single_outputs_and_a_mixed_one_serves_both_kinds(likert_study, annotators):
    likert = likert_study()
    assert list(Unit.objects.filter(study=likert).values_list("kind", flat=True).distinct()) == ["likert"]
    assert likert.units_total == 6 and not Unit.objects.filter(study=likert, output_b__isnull=False).exists()
    both = likert_study(kinds="both", n_prompts=10)
    seen = set()
    while (a := services.assignment_next(study=both, annotator=annotators[0])) is not None:
        seen.add(a.unit.kind)
        if a.unit.kind == "likert":
            services.judgment_submit(assignment=a, ratings={"factuality": 2, "style": 4})
        else:
            services.judgment_submit(assignment=a, choice="left")
    assert seen == {"likert", "pairwise"}
    assert Judgment.objects.filter(study=both).count() == 30  # 10 pairs + 20 outputs


@pytest.mark.parametrize("answer, message", [
    ({"ratings": {"factuality": 2, "style": 4, "tone": 1}}, "ratings: unknown criterion 'tone'"),
    ({"ratings": {"factuality": 4, "style": 4}}, "criterion 'factuality' (Factuality) is rated 4; give a point "
                                                 "from 1 to 3 or null for not applicable"),
    ({"ratings": {"factuality": 2, "style": None}}, "criterion 'style' (Style consistency) has no \"not applicable\""),
    ({"ratings": {"factuality": 2}}, "criterion 'style' (Style consistency) is not rated"),
    ({"ratings": {"factuality": 2, "style": 4}, "tags": ["hands"]}, "tags: unknown tag 'hands'"),
    ({"choice": "left"}, "choice: this is a Likert task; send ratings"),
])
def test_a_bad_likert_answer_is_refused_naming_what_is_wrong_and_nothing_is_written(
        likert_study, annotators, answer, message):
    study = likert_study()
    a = services.assignment_next(study=study, annotator=annotators[0])
    with pytest.raises(services.AnswerInvalid, match=re.escape(message)):
        services.judgment_submit(assignment=a, **answer)
    assert not Judgment.objects.exists()
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 0


def test_a_required_rationale_is_required_on_both_kinds(likert_study, annotators):
    study = likert_study(kinds="both", ask_rationale="required")
    a = services.assignment_next(study=study, annotator=annotators[0])
    answer = {"ratings": {"factuality": None, "style": 1}} if a.unit.kind == "likert" else {"choice": "tie"}
    with pytest.raises(services.AnswerInvalid, match="rationale: this study asks for a reason"):
        services.judgment_submit(assignment=a, rationale="   ", **answer)
    judgment, created = services.judgment_submit(assignment=a, rationale=" Because. ", **answer)
    assert created and Judgment.objects.get(pk=judgment.pk).rationale == "Because."


def test_ratings_and_tags_are_stored_and_a_repeat_is_idempotent(likert_study, annotators):
    study = likert_study()
    a = services.assignment_next(study=study, annotator=annotators[0])
    answer = {"ratings": {"factuality": None, "style": 5}, "tags": ["refused", "hallucination"]}
    services.judgment_submit(assignment=a, **answer)
    stored = Judgment.objects.get()
    assert (stored.ratings, stored.tags, stored.outcome) == ({"factuality": None, "style": 5},
                                                             ["hallucination", "refused"], "")
    again, created = services.judgment_submit(assignment=a, **answer)
    assert not created and again.pk == stored.pk
    with pytest.raises(services.AlreadySubmitted):
        services.judgment_submit(assignment=a, ratings={"factuality": 1, "style": 5})


def test_tags_are_accepted_on_pairwise_judgments_too(likert_study, annotators):
    study = likert_study(kinds="pairwise")
    a = services.assignment_next(study=study, annotator=annotators[0])
    services.judgment_submit(assignment=a, choice="both_bad", tags=["refused"])
    assert Judgment.objects.get().tags == ["refused"]
    with pytest.raises(services.AnswerInvalid, match="ratings: this is a pairwise task"):
        services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotators[1]),
                                 ratings={"style": 1})


# --- the page -------------------------------------------------------------------------


def _token(html: str) -> str:
    return re.search(r'action="/tasks/([^"/]+)/"', html).group(1)


def test_the_likert_page_shows_one_output_its_criteria_and_tags_and_records_the_form(
        client, likert_study, annotators):
    study = likert_study()
    client.force_login(annotators[0])
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    for name in CANDIDATES:
        assert name not in html
    html = on_screen(html)
    assert html.count('type="radio" name="rating_factuality"') == 4  # 3 points and "not applicable"
    assert html.count('type="radio" name="rating_style"') == 5
    assert 'name="tag" value="hallucination" data-letter="q"' in html and 'id="side-b"' not in html
    bad = client.post(reverse("annotation:submit", args=[_token(html)]),
                      {"rating_factuality": "2", "rating_style": "na"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 400
    assert "has no &quot;not applicable&quot;" in bad.content.decode()
    ok = client.post(reverse("annotation:submit", args=[_token(html)]),
                     {"rating_factuality": "na", "rating_style": "3", "tag": ["refused"], "rationale": "Off topic"},
                     HTTP_HX_REQUEST="true")
    assert ok.status_code == 200 and _token(ok.content.decode()) != _token(html)
    j = Judgment.objects.get()
    assert (j.ratings, j.tags, j.rationale) == ({"factuality": None, "style": 3}, ["refused"], "Off topic")


def test_a_likert_round_trip_costs_the_same_queries_as_a_pairwise_one(
        client, likert_study, annotators, django_assert_max_num_queries):
    from arena.models import RatingRequest

    from .test_vote_path import ROUND_TRIP_QUERIES, _round_trip_queries

    pairwise = likert_study(kinds="pairwise", n_prompts=5)
    likert = likert_study(kinds="likert", n_prompts=5)
    RatingRequest.objects.update(pending=True)  # the steady state while votes flow
    pairwise_n = _round_trip_queries(client, django_assert_max_num_queries, pairwise, annotators[0])
    client.force_login(annotators[1])
    token = _token(client.get(reverse("annotation:annotate", args=[likert.pk])).content.decode())
    with django_assert_max_num_queries(ROUND_TRIP_QUERIES) as ctx:
        response = client.post(reverse("annotation:submit", args=[token]),
                               {"rating_factuality": "1", "rating_style": "2", "tag": "refused"},
                               HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and _token(response.content.decode()) != token
    assert len(ctx.captured_queries) == pairwise_n


# --- the API --------------------------------------------------------------------------


def test_the_api_serves_a_blind_likert_task_and_takes_ratings(likert_study, annotators):
    study = likert_study(ask_rationale="required")
    api = client_for(annotators[0])
    raw = api.get(reverse("api-task-next", args=[study.pk]))
    task = raw.json()
    for name in CANDIDATES:
        assert name not in raw.content.decode()
    assert task["kind"] == "likert" and [o["label"] for o in task["outputs"]] == ["A"]
    assert set(task["outputs"][0]) == {"label", "text"}
    assert task["criteria"] == CRITERIA[:1] + [{**CRITERIA[1], "allow_na": False}]
    assert task["tags"] == TAGS and "requires" in task["detail"]
    url = reverse("api-judgment", args=[task["token"]])
    for body, field, text in [
        ({"ratings": {"factuality": 1, "style": 9}, "rationale": "x"}, "ratings", "give a point from 1 to 5"),
        ({"ratings": {"factuality": 1, "style": 2}}, "rationale", "asks for a reason"),
        ({"ratings": {"factuality": 1, "style": 2}, "tags": ["nope"], "rationale": "x"}, "tags", "unknown tag"),
    ]:
        refused = api.post(url, body, content_type="application/json")
        assert refused.status_code == 400 and text in refused.json()[field][0], refused.json()
    done = api.post(url, {"ratings": {"factuality": None, "style": 2}, "tags": ["refused"], "rationale": "Meh"},
                    content_type="application/json")
    assert done.status_code == 201, done.json()
    body = done.json()
    assert body["judgment"]["ratings"] == {"factuality": None, "style": 2} and body["judgment"]["choice"] is None
    assert body["judgment"]["tags"] == ["refused"] and body["next"]["kind"] == "likert"
    assert Judgment.objects.get().ratings == {"factuality": None, "style": 2}


def test_likert_summaries_are_on_the_leaderboard_page_and_api_without_touching_the_pairwise_board(
        client, likert_study, annotators, manager):
    study = likert_study(kinds="both", n_prompts=2, overlap=1)
    style = iter([5, 4, 3, 2])
    while (a := services.assignment_next(study=study, annotator=annotators[0])) is not None:
        if a.unit.kind == "likert":
            services.judgment_submit(assignment=a, ratings={"factuality": None, "style": next(style)},
                                     tags=["refused"] if a.unit.cand_lo.name == "alpha-model" else [])
        else:
            services.judgment_submit(assignment=a, choice="left")
    from arena.services import ratings_recompute

    ratings_recompute(study_id=study.pk, rounds=50)  # the worker's refresh: pages and the API only read it
    api = client_for(manager).get(reverse("api-leaderboard", args=[study.pk])).json()
    likert = api["likert"]
    assert likert["n_judgments"] == 4 and likert["interval"] == "Student t, 95%"
    by_name = {c["candidate"]: c for c in likert["candidates"]}
    assert set(by_name) == set(CANDIDATES)
    for c in by_name.values():
        assert c["criteria"]["factuality"] == {"n": 0, "n_na": 2, "mean": None, "lower": None, "upper": None,
                                               "distribution": [0, 0, 0]}
        assert c["criteria"]["style"]["n"] == 2 and sum(c["criteria"]["style"]["distribution"]) == 2
    assert by_name["alpha-model"]["tags"]["refused"]["n"] == 2 and by_name["beta-model"]["tags"]["refused"]["n"] == 0
    client.force_login(manager)
    page = client.get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
    assert 'id="likert-table"' in page and "Style consistency (1–5)" in page and 'id="tag-table"' in page
    # the pairwise aggregation counts the 2 pairs only
    from arena.selectors import study_judgments
    assert study_judgments(study.pk).count() == 2


# --- concurrency ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_annotators_never_overfill_a_likert_unit(likert_study, make_user):
    study = likert_study(kinds="both", n_prompts=4, overlap=2)  # 4 pairs + 8 outputs = 12 units
    crowd = [make_user(f"rater{i}") for i in range(5)]
    for user in crowd:
        services.member_set(study=study, user=user, role="annotator")
    results, errors = [0] * len(crowd), []

    def annotate(i):
        try:
            while (a := services.assignment_next(study=study, annotator=crowd[i])) is not None:
                if a.unit.kind == "likert":
                    services.judgment_submit(assignment=a, ratings={"factuality": 1 + i % 3, "style": 3})
                else:
                    services.judgment_submit(assignment=a, choice="tie")
                results[i] += 1
        except Exception as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(len(crowd))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(results) == 12 * 2
    assert not Unit.objects.filter(study=study).exclude(taken=2).exists()
    assert not Judgment.objects.values("unit", "annotator").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert Judgment.objects.filter(study=study, ratings__isnull=False).count() == 16
    for member in StudyMember.objects.filter(study=study, role="annotator"):
        assert member.done == Judgment.objects.filter(study=study, annotator=member.user).count()
    assert connection.vendor in ("sqlite", "postgresql")


def test_a_scale_shortened_after_ratings_leaves_the_answers_off_it_out_and_says_so(likert_study, annotators, manager):
    """The evaluator cut Style from 1–5 to 1–3 after ratings came in: the ratings refresh keeps
    working, the means count the answers still on the scale, and the page says how many are out."""
    from arena.services import ratings_recompute

    study = likert_study(kinds="likert", n_prompts=2, overlap=1)
    style = iter([5, 2, 3, 1])
    while (a := services.assignment_next(study=study, annotator=annotators[0])) is not None:
        services.judgment_submit(assignment=a, ratings={"factuality": 2, "style": next(style)})
    shorter = [CRITERIA[0], {**CRITERIA[1], "scale": 3, "labels": ["Poor", "Fair", "Good"]}]
    services.study_update_tasks(study=study, tasks={"task_kinds": "likert", "likert_criteria": shorter,
                                                    "failure_tags": TAGS, "ask_rationale": "optional"})
    snapshot = ratings_recompute(study_id=study.pk, rounds=50)
    cells = {c["candidate"]: c["criteria"]["style"] for c in snapshot.payload["likert"]["candidates"]}
    kept = sorted(p for c in cells.values() for p, k in enumerate(c["distribution"], 1) for _ in range(k))
    assert kept == [1, 2, 3] and snapshot.payload["likert"]["off_scale"] == {"style": 1}
    assert sum(c["n"] for c in cells.values()) == 3
    page = client_for(manager).get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
    assert "1 answer on Style consistency lies outside 1–3" in page
