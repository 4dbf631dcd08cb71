"""Read-only REST endpoints for dashboards and scripts."""
from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import access
from annotation import selectors as annotation_selectors

from .. import modes, selectors
from ..board import Board
from ..models import RatingSnapshot
from ..services import BT
from . import serializers as s


@extend_schema(summary="The study's leaderboard", tags=["leaderboard"], parameters=[s.LeaderboardQuerySerializer],
               responses=s.LeaderboardSerializer)
@api_view(["GET"])
def leaderboard(request: Request, study_id: int) -> Response:
    """``GET /api/studies/<id>/leaderboard?slice=all|tag:<t>|group:<g>``: the last computed snapshot."""
    study = access.get_study_for_manager(request.user, study_id)
    slice_key = request.query_params.get("slice", selectors.ALL)
    slices = [s.key for s in selectors.study_slices(study.pk)]
    if slice_key not in slices:
        raise ValidationError({"slice": f"unknown slice {slice_key!r} for this study"})
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key=slice_key, method=BT).first()
    if snapshot is None:  # reads never enqueue work; the worker computes after votes
        return Response({"study": study.pk, "slice": slice_key, "computed_at": None, "age_seconds": None,
                         "rows": [], "likert": None})
    board = snapshot.board or Board(rounds=0, seed=0, n_battles=0)
    data = board.to_json()
    hidden = selectors.hidden_candidates(study.pk)
    return Response({
        "study": study.pk,
        "slice": slice_key,
        "computed_at": snapshot.computed_at,
        "age_seconds": round((timezone.now() - snapshot.computed_at).total_seconds(), 1),
        "n_judgments": snapshot.n_judgments,
        "rounds": board.rounds,
        "regularization": board.regularization,
        "note": board.note,
        "rows": [{**row, "hidden": row["model"] in hidden} for row in data["rows"]],
        "length_controlled": board.style,
        "position_bias": board.position_bias,
        "length_bias": board.length_bias,
        "slices": slices,
        "likert": board.likert.to_json() if board.likert and (study.likert_criteria or study.failure_tags) else None,
        "ratings_mode": {**snapshot.payload.get("ratings_mode", {"mode": "all", "left_out": []}),
                         "sentence": modes.sentence(snapshot.payload)},
    })


@extend_schema(summary="Generation progress", tags=["outputs"], responses=s.ProgressSerializer)
@api_view(["GET"])
def progress(request: Request, study_id: int) -> Response:
    """``GET /api/studies/<id>/progress``: generation counts per candidate."""
    study = access.get_study_for_evaluator(request.user, study_id)
    rows = annotation_selectors.generation_progress(study)
    return Response({
        "study": study.pk,
        "finished": annotation_selectors.generation_finished(rows),
        "candidates": [row.__dict__ for row in rows],
    })
