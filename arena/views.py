"""The manager's leaderboard: reads the last snapshot, never fits on the request path."""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotation import access

from . import plots, selectors
from .models import RatingRequest, RatingSnapshot
from .services import BT, ONLINE_ELO, ratings_request


def leaderboard_context(study, slice_key: str) -> dict:
    slices = selectors.study_slices(study.pk)
    if slice_key not in {s.key for s in slices}:
        slice_key = selectors.ALL
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key=slice_key, method=BT).first()
    request = RatingRequest.objects.filter(study=study, slice_key=slice_key).first()
    # Pending, or claimed by a worker that has not written its snapshot yet: O(1), no count.
    stale = bool(request and (request.pending or (request.started_at and (
        not snapshot or snapshot.computed_at < request.started_at))))
    ctx = {"study": study, "snapshot": snapshot, "slices": slices, "slice_key": slice_key, "stale": stale}
    payload = snapshot.payload if snapshot else {}
    rows = payload.get("rows") or []
    if not rows:
        return ctx
    style = payload.get("style") or {}
    elo = RatingSnapshot.objects.filter(study=study, slice_key=selectors.ALL, method=ONLINE_ELO).first()
    for r in rows:
        r["lc_rating"] = (style.get("ratings") or {}).get(r["model"])
        r["online_elo"] = elo.payload["ratings"].get(r["model"]) if elo and slice_key == selectors.ALL else None
    names = [r["model"] for r in rows]
    ctx.update(
        rows=rows, style=style, position=payload.get("position_bias"), length=payload.get("length_bias"),
        online_elo=elo if slice_key == selectors.ALL else None,
        interval_svg=plots.interval_plot(names, [r["rating"] for r in rows], [r["lower"] for r in rows],
                                         [r["upper"] for r in rows]),
        heatmap_svg=plots.heatmap(payload["models"], payload["observed"],
                                  title="Observed: row beats column (ties half)"),
        predicted_svg=plots.heatmap(payload["models"], payload["predicted"],
                                    title="Predicted by the ratings: row beats column"),
        both_bad_svg=plots.bar_chart(names, [r["both_bad_rate"] or 0.0 for r in rows],
                                     title="Share of a model's battles voted 'both bad'"),
        length_svg=plots.length_bias_plot(payload.get("length_bias") or {}),
    )
    return ctx


@login_required
def leaderboard(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_manager(request.user, study_id)
    # Reads only: the worker refreshes snapshots after votes; the page says how old this one is.
    ctx = leaderboard_context(study, request.GET.get("slice", selectors.ALL))
    template = "arena/partials/_leaderboard.html" if request.htmx else "arena/leaderboard.html"
    return render(request, template, ctx)


@login_required
@require_POST
def recompute(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_manager(request.user, study_id)
    slice_key = request.POST.get("slice", selectors.ALL)
    if slice_key not in {s.key for s in selectors.study_slices(study.pk)}:
        slice_key = selectors.ALL
    ratings_request(study_id=study.pk, slice_key=slice_key)
    messages.success(request, "Recomputing; the page refreshes when the worker is done.")
    response = redirect("arena:leaderboard", study_id=study.pk)
    response["Location"] += "?" + urlencode({"slice": slice_key})
    return response
