"""The manager's leaderboard: reads the last snapshot, never fits on the request path."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotation import access

from . import plots, selectors
from .models import RatingSnapshot
from .tasks import recompute_ratings


def leaderboard_context(study) -> dict:
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key="all", method="bt").first()
    latest = selectors.latest_judgment_id(study.pk)
    ctx = {"study": study, "snapshot": snapshot, "stale": bool(latest and (not snapshot or snapshot.last_judgment_id < latest))}
    if snapshot and snapshot.payload.get("rows"):
        rows = snapshot.payload["rows"]
        ctx["rows"] = rows
        ctx["interval_svg"] = plots.interval_plot(
            [r["model"] for r in rows], [r["rating"] for r in rows],
            [r["lower"] for r in rows], [r["upper"] for r in rows],
        )
        ctx["heatmap_svg"] = plots.heatmap(
            snapshot.payload["models"], snapshot.payload["observed"],
            title="Observed win rate of row model against column model (ties count half)",
        )
    return ctx


@login_required
def leaderboard(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_manager(request.user, study_id)
    ctx = leaderboard_context(study)
    if ctx["stale"]:
        recompute_ratings.delay(study.pk)
    template = "arena/partials/_leaderboard.html" if request.htmx else "arena/leaderboard.html"
    return render(request, template, ctx)


@login_required
@require_POST
def recompute(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_manager(request.user, study_id)
    recompute_ratings.delay(study.pk, force=True)
    messages.success(request, "Recomputing; the page refreshes when the worker is done.")
    return redirect("arena:leaderboard", study_id=study.pk)
