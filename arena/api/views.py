"""Read-only REST endpoints for dashboards and scripts."""
from __future__ import annotations

from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import access
from annotation import selectors as annotation_selectors

from ..models import RatingSnapshot


@api_view(["GET"])
def leaderboard(request: Request, study_id: int) -> Response:
    """``GET /api/studies/<id>/leaderboard``: the last computed Bradley-Terry snapshot."""
    study = access.get_study_for_manager(request.user, study_id)
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key="all", method="bt").first()
    if snapshot is None:
        return Response({"study": study.pk, "computed_at": None, "rows": []})
    payload = snapshot.payload
    return Response({
        "study": study.pk,
        "computed_at": snapshot.computed_at,
        "n_judgments": snapshot.n_judgments,
        "rounds": payload.get("rounds"),
        "regularization": payload.get("regularization"),
        "note": payload.get("note"),
        "rows": payload.get("rows", []),
    })


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
