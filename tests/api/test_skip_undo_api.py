"""The annotator's API passes on a task (skip, with a reason) and takes back a judgment (undo),
with the same services and the same refusals as the task page's buttons."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Judgment, Skip, StudyMember, Unit

from .conftest import client_as
from .test_tasks import _assert_blind, _judge, _next

pytestmark = pytest.mark.django_db


def _skip(client, token, **body):
    return client.post(reverse("api-task-skip", args=[token]), body, content_type="application/json")


def _undo(client, token):
    return client.post(reverse("api-task-undo", args=[token]))


def _done(study, user) -> int:
    return StudyMember.objects.get(study=study, user=user).done


def test_a_skip_gives_the_place_back_and_answers_blind_with_the_next_task(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    unit_id = Assignment.objects.get(token=token).unit_id
    assert Unit.objects.get(pk=unit_id).taken == 1

    response = _skip(client, token, reason="broken", note="The answer stops mid-sentence.")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] is True
    assert body["next"]["state"] == "open" and body["next"]["token"] not in (None, token)
    assert body["next"]["done"] == 0 and body["next"]["remaining"] == 11
    _assert_blind(response.content, study)
    skip = Skip.objects.get()
    assert (skip.reason, skip.note, skip.annotator_id) == ("broken", "The answer stops mid-sentence.",
                                                          annotators[0].pk)
    assert Unit.objects.get(pk=unit_id).taken == 0  # its place went back for someone else
    assert Assignment.objects.get(token=body["next"]["token"]).unit_id != unit_id
    assert _next(client, study).json()["token"] == body["next"]["token"]  # the next task is the one held


def test_the_same_skip_again_is_a_200_and_records_nothing_more(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    first = _skip(client, token, reason="cant_judge")
    again = _skip(client, token, reason="cant_judge")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["created"] is False
    assert again.json()["next"]["token"] == first.json()["next"]["token"]
    assert Skip.objects.count() == 1


@pytest.mark.parametrize("body, field", [
    ({}, "reason"),
    ({"reason": "bored"}, "reason"),
    ({"reason": "other"}, "note"),
    ({"reason": "other", "note": "   "}, "note"),
    ({"reason": "broken", "note": "x" * 2001}, "note"),
    ({"reason": "broken", "note": "a\x00b"}, "note"),
    ({"reason": "broken", "note": "\ud800"}, "note"),
])
def test_a_bad_skip_is_a_400_naming_the_field_and_records_nothing(study_factory, annotators, body, field):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    response = _skip(client, token, **body)
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Skip.objects.exists()
    assert Assignment.objects.get(token=token).submitted_at is None


def test_a_skip_of_a_judged_task_is_a_409_and_keeps_the_judgment(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    assert _judge(client, token, choice="left").status_code == 201
    response = _skip(client, token, reason="offensive")
    assert response.status_code == 409
    assert response.json() == {"detail": "This task was already judged; it cannot be skipped now.",
                               "code": "already_submitted"}
    assert Judgment.objects.count() == 1 and not Skip.objects.exists()


def test_someone_elses_task_cannot_be_skipped_or_undone(study_factory, annotators, manager):
    study = study_factory()
    owner = client_as(annotators[0], "token")
    token = _next(owner, study).json()["token"]
    for user in (annotators[1], manager):
        other = client_as(user, "token")
        assert _skip(other, token, reason="broken").status_code == 404
        assert _undo(other, token).status_code == 404
    assert not Skip.objects.exists()
    assert _judge(owner, token, choice="tie").status_code == 201
    assert _undo(client_as(annotators[1], "token"), token).status_code == 404
    assert Judgment.objects.count() == 1
    assert client_as(None).post(reverse("api-task-undo", args=[token])).status_code == 401


def test_an_excluded_annotator_cannot_skip_their_task(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    services.member_exclude(study=study, user=annotators[0])
    response = _skip(client, token, reason="broken")
    assert response.status_code == 403
    assert response.json()["detail"] == "You have been excluded from this study."
    assert not Skip.objects.exists()


def test_undo_reopens_the_latest_judgment_and_releases_the_next_task(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    voted = _judge(client, token, choice="left", rationale="clearer")
    assert voted.status_code == 201
    given_next = voted.json()["next"]["token"]
    assert _done(study, annotators[0]) == 1

    response = _undo(client, token)
    assert response.status_code == 200, response.content
    task = response.json()
    _assert_blind(response.content, study)
    assert task["state"] == "open" and task["token"] == token and task["done"] == 0
    assert not Judgment.objects.exists()
    assert _done(study, annotators[0]) == 0
    released = Assignment.objects.get(token=given_next)
    assert released.released and released.submitted_at is None
    assert Unit.objects.get(pk=released.unit_id).taken == 0
    # the reopened task is the one held, and takes a new verdict
    assert _next(client, study).json()["token"] == token
    again = _judge(client, token, choice="right")
    assert again.status_code == 201 and again.json()["judgment"]["choice"] == "right"
    assert Judgment.objects.get().outcome in ("a", "b")


def test_undo_is_refused_with_a_409_saying_why(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    first = _next(client, study).json()["token"]
    second = _judge(client, first, choice="left").json()["next"]["token"]
    assert _judge(client, second, choice="tie").status_code == 201

    response = _undo(client, first)
    assert response.status_code == 409
    assert response.json() == {"detail": "Only your latest judgment can be undone.", "code": "undo_refused"}
    assert _undo(client, second).status_code == 200
    response = _undo(client, second)  # undone already: nothing to undo
    assert response.status_code == 409
    assert response.json()["detail"].startswith("There is no judgment on this task to undo")
    assert Judgment.objects.count() == 1


def test_undo_after_the_window_is_a_409_and_the_judgment_stays(study_factory, annotators, settings):
    settings.EVALSITE_UNDO_SECONDS = 30
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    held = Assignment.objects.get(token=token)
    services.judgment_submit(assignment=held, choice="tie", now=timezone.now() - timedelta(minutes=5))
    response = _undo(client, token)
    assert response.status_code == 409
    assert response.json()["detail"].startswith("Too late to undo: a judgment can be undone within 30 seconds")
    assert Judgment.objects.count() == 1 and _done(study, annotators[0]) == 1


def test_undo_of_a_skipped_task_is_a_409_and_the_skip_stays(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    assert _skip(client, token, reason="cant_judge").status_code == 201
    response = _undo(client, token)
    assert response.status_code == 409 and response.json()["code"] == "undo_refused"
    assert Skip.objects.count() == 1


def test_skip_and_undo_answer_only_post(study_factory, annotators):
    study = study_factory()
    client = client_as(annotators[0], "token")
    token = _next(client, study).json()["token"]
    for name in ("api-task-skip", "api-task-undo"):
        assert client.get(reverse(name, args=[token])).status_code == 405
