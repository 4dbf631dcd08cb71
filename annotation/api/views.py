"""REST endpoints of the annotation app (routed under ``/api/`` with the others, in arena/api/urls.py)."""
from __future__ import annotations

from django.core.paginator import InvalidPage, Paginator
from rest_framework.decorators import api_view
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from .. import access, audit


@api_view(["GET"])
def audit_log(request: Request, study_id: int) -> Response:
    """``GET /api/studies/<id>/audit?page=N``: the study's audit entries, newest first, 50 a page."""
    study = access.get_study_for_evaluator(request.user, study_id)
    paginator = Paginator(audit.entries(study), audit.PAGE_SIZE)
    try:
        page = paginator.page(request.query_params.get("page", 1))
    except InvalidPage as exc:
        raise ValidationError({"page": f"{exc} (pages: 1 to {paginator.num_pages})"}) from None
    return Response({
        "study": study.pk,
        "count": paginator.count,
        "page": page.number,
        "pages": paginator.num_pages,
        "entries": [
            {"id": e.pk, "at": e.at, "actor": e.actor_name, "actor_id": e.actor_id, "action": e.action,
             "action_label": e.get_action_display(), "target": e.target, "detail": e.detail}
            for e in page
        ],
    })
