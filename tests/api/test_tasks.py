"""The annotator's API: the next task, blind, and the judgment with its idempotence and refusals."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Candidate, Judgment, Output, StudyMember, Unit

from .conftest import client_as

pytestmark = pytest.mark.django_db

TASK_KEYS = {"state", "detail", "token", "kind", "prompt", "outputs", "criteria", "tags", "done", "remaining"}


def _next(client, study):
    return client.get(reverse("api-task-next", args=[study.pk]))


def _judge(client, token, **body):
    return client.post(reverse("api-judgment", args=[token]), body, content_type="application/json")


def _assert_blind(raw: bytes, study) -> None:
    """No candidate name, and no id of a candidate, an output or a unit, anywhere in the answer."""
    text = raw.decode()
    for name in Candidate.objects.filter(study=study).values_list("name", flat=True):
        assert name not in text, name
    data = json.loads(text)
    task = data.get("next", data)
    assert set(task) == TASK_KEYS
    for output in task["outputs"]:
        assert set(output) == {"label", "text"}
    if "judgment" in data:
        assert set(data["judgment"]) == {"token", "choice", "ratings", "tags", "rationale", "active_ms",
                                          "submitted_at"}
    numbers = {v for v in _values(data) if isinstance(v, int) and not isinstance(v, bool)}
    assert numbers <= {task["done"], task["remaining"], data.get("judgment", {}).get("active_ms")}


def _values(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _values(v)
    elif isinstance(value, list):
        for v in value:
            yield from _values(v)
    else:
        yield value


def test_the_next_task_is_blind_and_shaped_for_likert_to_come(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    response = _next(client, study)
    assert response.status_code == 200 and response["Cache-Control"].startswith("max-age=0")
    _assert_blind(response.content, study)
    task = response.json()
    assert task["state"] == "open" and task["kind"] == "pairwise"
    assert task["criteria"] == [] and task["tags"] == []
    assert task["done"] == 0 and task["remaining"] == 11
    assignment = Assignment.objects.get(token=task["token"])
    left, right = ((assignment.unit.output_a, assignment.unit.output_b) if assignment.left_is_a
                   else (assignment.unit.output_b, assignment.unit.output_a))
    assert task["prompt"] == assignment.unit.prompt.text
    assert task["outputs"] == [{"label": "A", "text": left.text}, {"label": "B", "text": right.text}]
    assert _next(client, study).json()["token"] == task["token"]  # asking again: the same lease


def test_a_judgment_is_stored_in_outputs_and_answers_blind_with_the_next_task(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    task = _next(client, study).json()
    response = _judge(client, task["token"], choice="left", rationale="  A is clearer  ", active_ms=4200)
    assert response.status_code == 201
    _assert_blind(response.content, study)
    body = response.json()
    assert body["created"] is True
    assert body["judgment"]["choice"] == "left" and body["judgment"]["rationale"] == "A is clearer"
    assert body["judgment"]["active_ms"] == 4200
    assert body["next"]["state"] == "open" and body["next"]["token"] != task["token"]
    assert body["next"]["done"] == 1
    judgment = Judgment.objects.get()
    assert judgment.outcome == ("a" if judgment.left_is_a else "b")  # left won, in terms of outputs
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 1


def test_the_same_answer_again_is_a_200_and_changes_nothing(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    first = _judge(client, token, choice="right", rationale="B")
    again = _judge(client, token, choice="right", rationale="B")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["created"] is False
    assert again.json()["judgment"]["choice"] == "right"
    assert again.json()["next"]["token"] == first.json()["next"]["token"]  # the lease held, not a new one
    assert Judgment.objects.count() == 1
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 1


def test_another_answer_on_a_judged_task_is_a_409_and_keeps_the_first(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    assert _judge(client, token, choice="tie").status_code == 201
    response = _judge(client, token, choice="left")
    assert response.status_code == 409
    assert response.json() == {"detail": "This task was already submitted with another answer.",
                               "code": "already_submitted"}
    assert Judgment.objects.get().outcome == "tie"


def test_an_expired_lease_that_someone_else_took_is_a_409(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), prompts=b"id,prompt\nq1,Hello?\n")
    first = client_as(annotators[0], "token")
    token = _next(first, study).json()["token"]
    later = timezone.now() + timedelta(hours=2)
    services.leases_release_expired(study_id=study.pk, now=later)
    second = client_as(annotators[1], "token")
    assert _next(second, study).json()["state"] == "open"  # the freed place goes to someone else
    response = _judge(first, token, choice="left")
    assert response.status_code == 409 and response.json()["code"] == "lease_expired"
    assert not Judgment.objects.exists()
    assert Unit.objects.get().taken == 1


def test_someone_elses_task_is_a_404_and_records_nothing(study_factory, annotators, manager):
    study = study_factory()
    token = _next(client_as(annotators[0], "token"), study).json()["token"]
    for user in (annotators[1], manager):
        response = _judge(client_as(user, "token"), token, choice="left")
        assert response.status_code == 404
        assert "belongs to someone else" in response.json()["detail"]
    assert not Judgment.objects.exists()


@pytest.mark.parametrize("body, field", [
    ({"choice": "A"}, "choice"),
    ({}, "choice"),
    ({"choice": "left", "active_ms": 2**31}, "active_ms"),
    ({"choice": "left", "active_ms": -1}, "active_ms"),
    ({"choice": "left", "rationale": "a\x00b"}, "rationale"),
    ({"choice": "left", "rationale": "x" * 5001}, "rationale"),
])
def test_a_bad_judgment_is_a_400_naming_the_field_and_records_nothing(study_factory, annotators, body, field):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    response = _judge(client, token, **body)
    assert response.status_code == 400
    assert field in response.json()
    assert not Judgment.objects.exists()


def test_with_nothing_left_the_answer_says_finished_and_while_generating_waiting(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), prompts=b"id,prompt\nq1,Hello?\n")
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    done = _judge(client, token, choice="both_bad").json()["next"]
    assert done["state"] == "finished" and done["token"] is None and done["kind"] is None
    assert done["outputs"] == [] and done["done"] == 1 and done["remaining"] == 0
    assert "Nothing left" in done["detail"]
    Output.objects.filter(study=study, candidate__name="beta-model").update(status=Output.Status.PENDING)
    waiting = _next(client_as(annotators[1], "token"), study).json()
    assert waiting["state"] == "waiting" and waiting["token"] is None
    assert "still being generated" in waiting["detail"]
