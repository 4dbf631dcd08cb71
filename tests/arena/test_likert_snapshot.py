"""Likert summaries and tag rates are computed by the aggregation worker with the pairwise
board and stored in its snapshot: the leaderboard page and API read them at a cost that does
not grow with the judgments, and the numbers equal a recount from the judgments."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import Judgment, StudyMember, Unit
from arena.models import RatingSnapshot
from arena.services import BT, ratings_recompute, ratings_refresh
from metrics import likert
from tests.annotation.test_likert import CRITERIA, TAGS, likert_study  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

# Reads of the page and the API with a snapshot in place, whatever the number of judgments: the
# user (the session is cached), the study and the access check, the slices (prompt tags, groups),
# the snapshot, the names of candidates hidden from new pairs (marked on the board), then on the
# page the refresh marker and the online-Elo preview.
PAGE_QUERIES = 9
API_QUERIES = 7
TAG_SETS = ([], ["hallucination"], ["hallucination", "refused"])


def _judge_all(study, annotator, *, style=(5, 4, 3, 2, 1)) -> None:
    points = iter(style * 100)
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        if a.unit.kind == "likert":
            services.judgment_submit(
                assignment=a, ratings={"factuality": 1 + next(points) % 3, "style": next(points)},
                tags=["refused"] if a.unit.cand_lo.name == "alpha-model" else TAG_SETS[next(points) % 3])
        else:
            services.judgment_submit(assignment=a, choice="left")


def _recount(study, slice_annotators=None) -> dict:
    """The summaries straight from the judgments' rows, without the worker's GROUP BY."""
    excluded = set(StudyMember.objects.filter(study=study, excluded=True).values_list("user", flat=True))
    judgments = Judgment.objects.filter(study=study, ratings__isnull=False).select_related("unit__output_a__candidate")
    rows = [(j.unit.output_a.candidate.name, j.ratings, j.tags or [], j.unit.output_a_id) for j in judgments
            if j.annotator_id not in excluded and (slice_annotators is None or j.annotator_id in slice_annotators)]
    return {"n": len(rows), "summaries": likert.summarize(CRITERIA, ((c, r) for c, r, _, _ in rows)),
            "rates": likert.tag_rates([t["key"] for t in TAGS], ((c, t, o) for c, _, t, o in rows))}


def _close(stored, expected) -> bool:
    if stored is None:
        return math.isnan(expected)
    return stored == pytest.approx(expected, abs=1e-4)


def _assert_equal(stored: dict, recount: dict) -> None:
    assert stored["n_judgments"] == recount["n"]
    assert {c["candidate"] for c in stored["candidates"]} == set(recount["summaries"])
    for c in stored["candidates"]:
        for key, s in recount["summaries"][c["candidate"]].items():
            cell = c["criteria"][key]
            assert (cell["n"], cell["n_na"], tuple(cell["distribution"])) == (s.n, s.n_na, s.distribution)
            assert _close(cell["mean"], s.mean) and _close(cell["lower"], s.lower) and _close(cell["upper"], s.upper)
        for key, r in recount["rates"][c["candidate"]].items():
            cell = c["tags"][key]
            assert (cell["n"], cell["of"]) == (r.n, r.of)
            assert _close(cell["share"], r.share) and _close(cell["lower"], r.lower) and _close(cell["upper"], r.upper)


def _reads(client, study) -> tuple[int, int, dict, str]:
    with CaptureQueriesContext(connection) as page_queries:
        page = client.get(reverse("arena:leaderboard", args=[study.pk]))
    with CaptureQueriesContext(connection) as api_queries:
        api = client.get(reverse("api-leaderboard", args=[study.pk]))
    assert page.status_code == 200 and api.status_code == 200
    for q in [*page_queries.captured_queries, *api_queries.captured_queries]:
        assert "annotation_judgment" not in q["sql"], q["sql"]  # no request reads a judgment
    return len(page_queries), len(api_queries), api.json(), page.content.decode()


def test_page_and_api_read_the_stored_summaries_at_a_cost_that_does_not_grow_with_the_judgments(
        client, likert_study, annotators, manager):
    study = likert_study(kinds="both", n_prompts=3, overlap=3)
    client.force_login(manager)
    _judge_all(study, annotators[0])
    ratings_recompute(study_id=study.pk, rounds=50)
    small_page, small_api, api, page = _reads(client, study)
    assert api["likert"]["n_judgments"] == 6 and 'id="likert-table"' in page and 'class="likert-age"' in page
    _assert_equal(api["likert"], _recount(study))

    for annotator in annotators[1:]:
        _judge_all(study, annotator, style=(1, 2, 2, 3, 5))
    before = _reads(client, study)[2]["likert"]
    assert before["n_judgments"] == 6  # reads never recompute: the snapshot is what the page shows
    ratings_recompute(study_id=study.pk, rounds=50)
    big_page, big_api, api, page = _reads(client, study)
    assert api["likert"]["n_judgments"] == 18
    _assert_equal(api["likert"], _recount(study))
    assert (small_page, small_api) == (big_page, big_api) == (PAGE_QUERIES, API_QUERIES)


def test_a_likert_only_study_gets_snapshots_and_a_likert_vote_leaves_the_pairwise_board_alone(
        likert_study, annotators, manager):
    only = likert_study(kinds="likert", n_prompts=2, overlap=2)
    _judge_all(only, annotators[0])
    snapshot = ratings_refresh(study_id=only.pk)  # the vote asked for it; the worker claims it
    assert snapshot is not None and snapshot.board.likert.n_judgments == 4 and not snapshot.board.rows
    _judge_all(only, annotators[1])
    assert ratings_refresh(study_id=only.pk).board.likert.n_judgments == 8
    _assert_equal(snapshot_likert(only), _recount(only))
    computed = RatingSnapshot.objects.get(study=only, method=BT).computed_at
    assert ratings_recompute(study_id=only.pk).computed_at == computed  # nothing new: no work

    mixed = likert_study(kinds="both", n_prompts=2, overlap=2)
    _judge_all(mixed, annotators[0])
    Judgment.objects.filter(study=mixed).update(submitted_at=timezone.now() - timedelta(minutes=10))  # settled
    first = ratings_recompute(study_id=mixed.pk, rounds=50)
    Unit.objects.filter(study=mixed).exclude(kind="likert").update(needed=1)  # the pairs are done
    _judge_all(mixed, annotators[1])  # Likert votes only now
    second = ratings_recompute(study_id=mixed.pk, rounds=50)
    assert (first.payload["likert"]["n_judgments"], second.payload["likert"]["n_judgments"]) == (4, 8)
    assert {**second.payload, "likert": None} == {**first.payload, "likert": None}
    assert (second.n_judgments, bytes(second.cells)) == (first.n_judgments, bytes(first.cells)) and first.n_judgments


def snapshot_likert(study) -> dict:
    return RatingSnapshot.objects.get(study=study, slice_key="all", method=BT).payload["likert"]


def test_an_exclusion_a_group_slice_and_new_settings_are_reflected_after_the_refresh(
        likert_study, annotators, evaluator):
    study = likert_study(kinds="likert", n_prompts=2, overlap=3)
    for annotator in annotators:
        _judge_all(study, annotator)
    ratings_recompute(study_id=study.pk)
    assert snapshot_likert(study)["n_judgments"] == 12

    services.member_exclude(study=study, user=annotators[2], actor=evaluator)
    ratings_refresh(study_id=study.pk)
    assert snapshot_likert(study)["n_judgments"] == 8
    _assert_equal(snapshot_likert(study), _recount(study))

    services.member_change(study=study, user=annotators[0], role=StudyMember.Role.ANNOTATOR, group="night",
                           actor=evaluator)
    ratings_refresh(study_id=study.pk)
    group = ratings_refresh(study_id=study.pk, slice_key="group:night")
    assert group.board.likert.n_judgments == 4
    _assert_equal(group.payload["likert"], _recount(study, slice_annotators={annotators[0].pk}))

    services.study_update_tasks(study=study, tasks={"task_kinds": "likert", "likert_criteria": CRITERIA,
                                                    "failure_tags": [*TAGS, {"key": "rude", "label": "Rude"}]},
                                actor=evaluator)
    ratings_refresh(study_id=study.pk)  # the settings change asked for it
    stored = snapshot_likert(study)
    assert [t["key"] for t in stored["tags"]] == ["hallucination", "refused", "rude"]
    assert all(c["tags"]["rude"]["n"] == 0 for c in stored["candidates"])
