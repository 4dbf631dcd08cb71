"""The annotator quality table is computed by the aggregation worker when it refreshes the
study's "all" slice and stored in a snapshot: the page reads the live members and that
snapshot at a cost that does not grow with the judgments, and the stored numbers equal a
recount from the judgments' rows."""
from __future__ import annotations

from dataclasses import asdict

import pytest
from django.db import connection
from django.urls import reverse

from annotation import services
from annotation.models import Judgment, StudyMember, Unit
from annotation.selectors import _CHOICE_WORDS, _screen_choice, _thresholds
from arena.models import RatingRequest, RatingSnapshot
from arena.services import QUALITY, quality_recompute, ratings_refresh
from metrics import gold, quality
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

# The page with a snapshot in place, whatever the number of judgments: the user (the session is
# cached), the study, the roles for the access check and again for the buttons (evaluator or
# manager), the members with their users, the snapshot and the refresh marker.
QUALITY_PAGE_QUERIES = 7
CHOICES = ("left", "right", "tie", "both_bad")


def _prompts(n: int) -> bytes:
    return ("id,prompt,tags\n" + "".join(f"q{i},Question {i}?,t{i % 3}\n" for i in range(n))).encode()


def _judge(study, annotator, n: int, *, offset: int = 0) -> int:
    """Up to ``n`` judgments by one annotator, the choices varied by annotator and position."""
    done = 0
    while done < n and (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        k = done + offset
        services.judgment_submit(assignment=a, choice=CHOICES[(k * k + offset) % 4] if k % 3 else "left",
                                 active_ms=None if k % 5 == 0 else 700 + 400 * (k % 7))
        done += 1
    return done


def _page(client, study, django_assert_max_num_queries) -> tuple[int, str]:
    with django_assert_max_num_queries(QUALITY_PAGE_QUERIES) as ctx:
        response = client.get(reverse("annotation:quality", args=[study.pk]))
    assert response.status_code == 200
    for q in ctx.captured_queries:
        assert "annotation_judgment" not in q["sql"], q["sql"]  # the page never reads a judgment
    return len(ctx.captured_queries), response.content.decode()


def _recount(study) -> dict[int, dict]:
    """The table straight from the judgments' rows, as the page computed it inline before."""
    excluded = set(StudyMember.objects.filter(study=study, excluded=True).values_list("user", flat=True))
    judgments = list(Judgment.objects.filter(study=study).exclude(outcome="").select_related("unit")
                     .order_by("annotator_id", "submitted_at", "pk"))
    peer = [j for j in judgments if not j.unit.is_gold]
    per_unit: dict[int, int] = {}
    for j in peer:
        per_unit[j.unit_id] = per_unit.get(j.unit_id, 0) + 1
    unit_votes: dict[int, dict] = {}
    for j in peer:
        if per_unit[j.unit_id] >= quality.MIN_PEER_JUDGMENTS and j.annotator_id not in excluded:
            votes = unit_votes.setdefault(j.unit_id, {})
            votes[j.outcome] = votes.get(j.outcome, 0) + 1
    result = {}
    for user_id in StudyMember.objects.filter(study=study, role="annotator").values_list("user", flat=True):
        own = [j for j in judgments if j.annotator_id == user_id]
        agree, compared = quality.peer_agreement(
            {j.unit_id: j.outcome for j in own if not j.unit.is_gold and per_unit[j.unit_id] >= 3}, unit_votes,
            own_in_votes=user_id not in excluded)
        row = quality.annotator_quality(
            [_screen_choice(j.outcome, j.left_is_a) for j in own],
            [(j.submitted_at - j.served_at).total_seconds() for j in own],
            [j.active_ms / 1000 if j.active_ms is not None else None for j in own],
            agree, compared, _thresholds(), describe=_CHOICE_WORDS.get)
        checked = [j for j in own if j.unit.is_gold and j.unit.expected]
        result[user_id] = {**asdict(row), "flags": list(row.flags), "gold_answered": len(checked),
                           "gold_right": sum(gold.answer_right(j.unit.expected, outcome=j.outcome) for j in checked)}
    return result


def _stored(study) -> dict[int, dict]:
    snapshot = RatingSnapshot.objects.get(study=study, slice_key="all", method=QUALITY)
    return {int(k): v for k, v in snapshot.payload["annotators"].items()}


def test_the_page_reads_the_snapshot_at_a_cost_that_does_not_grow_with_the_judgments(
        study_factory, annotators, evaluator, manager, django_assert_max_num_queries):
    study = study_factory(prompts=_prompts(30), overlap=3)
    assert _judge(study, annotators[0], 10) == 10
    ratings_refresh(study_id=study.pk)  # the votes asked for it; the worker claims it
    evaluator_client, manager_client = client_for(evaluator), client_for(manager)
    small, html = _page(evaluator_client, study, django_assert_max_num_queries)
    assert "from 10 judgments" in html and 'id="quality-behind"' not in html
    assert _page(manager_client, study, django_assert_max_num_queries)[0] == small

    for i, annotator in enumerate(annotators):
        _judge(study, annotator, 64 if i == 0 else 63, offset=i)
    assert Judgment.objects.filter(study=study).count() == 200
    before = _page(evaluator_client, study, django_assert_max_num_queries)[1]
    assert "from 10 judgments" in before and 'id="quality-behind"' in before  # pages never recompute
    ratings_refresh(study_id=study.pk)
    large, html = _page(evaluator_client, study, django_assert_max_num_queries)
    assert "from 200 judgments" in html and 'id="quality-behind"' not in html
    assert small == large == _page(manager_client, study, django_assert_max_num_queries)[0] <= QUALITY_PAGE_QUERIES
    assert connection.vendor in ("sqlite", "postgresql")


def test_the_stored_statistics_equal_a_recount_and_gold_units_make_no_majority(study_factory, annotators, evaluator):
    study = study_factory(prompts=_prompts(6), overlap=3)  # 18 pairs, each judged by all three
    for i, annotator in enumerate(annotators):
        assert _judge(study, annotator, 18, offset=i) == 18
    ratings_refresh(study_id=study.pk)
    stored = _stored(study)
    assert stored == _recount(study)
    assert {s["judgments"] for s in stored.values()} == {18}
    assert all(s["compared"] > 0 for s in stored.values())

    gold = list(Unit.objects.filter(study=study).order_by("pk").values_list("pk", flat=True)[:5])
    Unit.objects.filter(pk__in=gold).update(is_gold=True)
    quality_recompute(study_id=study.pk, force=True)  # gold flags are set when units are built; force here
    with_gold = _stored(study)
    assert with_gold == _recount(study)
    for user_id, s in with_gold.items():
        assert s["judgments"] == 18  # gold judgments count in every column but agreement
        assert s["compared"] <= stored[user_id]["compared"]
    assert sum(s["compared"] for s in with_gold.values()) < sum(s["compared"] for s in stored.values())

    services.member_exclude(study=study, user=annotators[2], actor=evaluator)
    ratings_refresh(study_id=study.pk)  # the exclusion moved the study's version: redone in full
    assert _stored(study) == _recount(study)
    snapshot = RatingSnapshot.objects.get(study=study, slice_key="all", method=QUALITY)
    assert snapshot.study_version == study.__class__.objects.get(pk=study.pk).version


def test_an_exclusion_shows_at_once_and_the_numbers_follow_after_the_refresh(
        study_factory, annotators, evaluator):
    study = study_factory(prompts=_prompts(2), overlap=3)
    for i, annotator in enumerate(annotators):
        _judge(study, annotator, 6, offset=i)
    ratings_refresh(study_id=study.pk)
    computed = RatingSnapshot.objects.get(study=study, method=QUALITY).payload["computed_at"]
    client = client_for(evaluator)
    client.post(reverse("annotation:member_exclude", args=[study.pk, annotators[1].pk]),
                {"excluded": "1", "next": "quality"})
    html = client.get(reverse("annotation:quality", args=[study.pk])).content.decode()
    row = next(r for r in html.split('<tr id="annotator-')[1:] if "ann2" in r)
    assert "<strong>excluded</strong>" in row and "Re-admit" in row and 'id="quality-behind"' in html
    assert RatingSnapshot.objects.get(study=study, method=QUALITY).payload["computed_at"] == computed

    ratings_refresh(study_id=study.pk)
    assert RatingSnapshot.objects.get(study=study, method=QUALITY).payload["computed_at"] != computed
    assert _stored(study) == _recount(study)
    html = client.get(reverse("annotation:quality", args=[study.pk])).content.decode()
    assert 'id="quality-behind"' not in html and "<strong>excluded</strong>" in html


def test_a_refresh_with_nothing_new_keeps_the_table_and_marks_it_current(study_factory, annotators):
    study = study_factory(prompts=_prompts(2), overlap=1)
    _judge(study, annotators[0], 4)
    first = quality_recompute(study_id=study.pk)
    second = quality_recompute(study_id=study.pk)
    assert second.payload == first.payload and second.computed_at >= first.computed_at


def test_without_a_snapshot_the_page_says_it_is_being_computed_and_requests_a_refresh(
        study_factory, annotators, evaluator):
    study = study_factory(prompts=_prompts(2), overlap=1)
    _judge(study, annotators[0], 3)
    RatingRequest.objects.filter(study=study).update(pending=False)  # as if the worker had claimed it
    assert not RatingSnapshot.objects.filter(study=study, method=QUALITY).exists()
    html = client_for(evaluator).get(reverse("annotation:quality", args=[study.pk])).content.decode()
    assert 'id="quality-computing"' in html and "ann1" in html and "not computed yet" in html
    assert not RatingSnapshot.objects.filter(study=study, method=QUALITY).exists()  # never computed inline
    assert RatingRequest.objects.get(study=study, slice_key="all").pending
    ratings_refresh(study_id=study.pk)
    html = client_for(evaluator).get(reverse("annotation:quality", args=[study.pk])).content.decode()
    assert 'id="quality-computing"' not in html and "from 3 judgments" in html
