"""The manager's leaderboard: reads the last snapshot, never fits on the request path."""
from __future__ import annotations

from dataclasses import asdict
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import HttpResponseStopPolling

from annotation import access
from annotation.services import ServiceError
from metrics import judge as judge_math

from . import judging, modes, plots, selectors
from .forms import JudgeForm
from .models import Judge, RatingRequest, RatingSnapshot
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
    ctx = {"study": study, "snapshot": snapshot, "slices": slices, "slice_key": slice_key, "stale": stale,
           "ratings_mode_sentence": modes.sentence(snapshot.payload if snapshot else None),
           "ratings_modes": type(study).RatingsMode.choices}
    board = snapshot.board if snapshot else None
    ctx["board"] = board
    # The slice's Likert summaries, as the worker stored them with the board (never computed here).
    expected = bool(study.likert_criteria or study.failure_tags)
    likert = board.likert if board is not None and expected else None
    ctx.update(likert=likert, likert_expected=expected, likert_rows=likert.rows() if likert else [])
    if board is None or not board.rows:
        return ctx
    lc = board.style.get("ratings") or {}
    elo = RatingSnapshot.objects.filter(study=study, slice_key=selectors.ALL, method=ONLINE_ELO).first()
    live = elo.payload.get("ratings", {}) if elo and slice_key == selectors.ALL else {}
    hidden = selectors.hidden_candidates(study.pk)
    rows = [{**asdict(r), "lc_rating": lc.get(r.model), "online_elo": live.get(r.model), "hidden": r.model in hidden}
            for r in board.rows]
    names = [r.model for r in board.rows]
    ctx.update(
        rows=rows, style=board.style, position=board.position_bias, length=board.length_bias,
        online_elo=elo if slice_key == selectors.ALL else None,
        interval_svg=plots.interval_plot(names, [r.rating for r in board.rows], [r.lower for r in board.rows],
                                         [r.upper for r in board.rows]),
        heatmap_svg=plots.heatmap(list(board.models), [list(r) for r in board.observed],
                                  title="Observed: row beats column (ties half)"),
        predicted_svg=plots.heatmap(list(board.models), [list(r) for r in board.predicted],
                                    title="Predicted by the ratings: row beats column"),
        both_bad_svg=plots.bar_chart(names, [r.both_bad_rate or 0.0 for r in board.rows],
                                     title="Share of a model's battles voted 'both bad'"),
        length_svg=plots.length_bias_plot(board.length_bias or {}),
    )
    return ctx


@login_required
@require_safe
def leaderboard(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_manager(request.user, study_id)
    # Reads only: the worker refreshes snapshots after votes; the page says how old this one is.
    ctx = leaderboard_context(study, request.GET.get("slice", selectors.ALL))
    ctx["evaluator"] = access.Role.EVALUATOR in study.viewer_roles
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


def _judges_page(request: HttpRequest, study, form=None, error: str = "", status: int = 200) -> HttpResponse:
    from metrics.summary import stored_summary

    stored = stored_summary(study)  # one read: the judges' figures and whose human judgments they used
    rows, computed_at = judging.judges_page_rows(study, stored)
    ctx = {"study": study, "judges": rows, "figures_at": computed_at, "form": form or JudgeForm(), "error": error,
           "ratings_mode": stored[1].get("ratings_mode"),
           "active": any(j["status"] in (Judge.Status.QUEUED, Judge.Status.RUNNING) or j["figures_pending"]
                         for j in rows),
           "evaluator": access.Role.EVALUATOR in access.study_roles(request.user, study),
           "default_rubrics": {"pairwise": judge_math.DEFAULT_RUBRIC, "likert": judge_math.DEFAULT_LIKERT_RUBRIC}}
    if request.htmx and request.method == "GET":
        response = render(request, "arena/partials/_judges.html", ctx)
        if request.GET.get("poll") and not ctx["active"]:
            return HttpResponseStopPolling(response.content)  # nothing queued or running: htmx stops polling
        return response
    return render(request, "arena/judges.html", ctx, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def judges(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: managers and evaluators read the judges' results; POST: an evaluator adds a judge."""
    if request.method == "GET":
        return _judges_page(request, access.get_study_for_manager(request.user, study_id))
    study = access.get_study_for_evaluator(request.user, study_id)
    form = JudgeForm(request.POST)
    if not form.is_valid():
        return _judges_page(request, study, form, status=400)
    try:
        judging.judge_create(study=study, actor=request.user, **form.cleaned_data)
    except ServiceError as exc:
        return _judges_page(request, study, form, str(exc), status=409)
    return redirect(reverse("arena:judges", args=[study.pk]))


@login_required
@require_POST
def judge_start(request: HttpRequest, study_id: int, judge_id: int) -> HttpResponse:
    """An evaluator starts (or starts again) a judge: it asks only the units it has not answered."""
    study = access.get_study_for_evaluator(request.user, study_id)
    judge = get_object_or_404(Judge, pk=judge_id, study=study)
    judging.judge_run_start(study=study, judge=judge, actor=request.user)
    return redirect(reverse("arena:judges", args=[study.pk]))


@login_required
@require_POST
def ratings_mode(request: HttpRequest, study_id: int) -> HttpResponse:
    """Evaluators choose whose judgments count (``mode``: all, exclude_flagged or competence); a recompute
    is requested."""
    from .services import ratings_mode_set

    study = access.get_study_for_evaluator(request.user, study_id)
    try:
        ratings_mode_set(study=study, mode=request.POST.get("mode", "")[:40], actor=request.user)
    except ServiceError as exc:
        return HttpResponse(f"Not changed: {exc}", status=400, content_type="text/plain; charset=utf-8")
    messages.success(request, "Ratings mode saved; the leaderboard is being recomputed.")
    return redirect("arena:leaderboard", study_id=study.pk)
