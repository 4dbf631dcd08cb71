"""The manager's leaderboard: reads the last snapshot, never fits on the request path."""
from __future__ import annotations

import json
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
from .forms import JudgeEditForm, JudgeForm
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


def _copy_name(name: str, taken: set[str]) -> str:
    """A free name for a copy of judge ``name``: ``name v2``, ``name v3``, ..."""
    n = 2
    while f"{name} v{n}"[:200] in taken:
        n += 1
    return f"{name} v{n}"[:200]


def _judge_forms(request: HttpRequest, study, edit: tuple | None) -> tuple[JudgeForm | None, list[dict], str]:
    """The evaluator's forms, from one read of the judges (:func:`judging.judge_edit_rows`): the add
    form pre-filled from ``?from=<judge id>`` ("New judge from this one"), an edit form for each
    judge that can still be edited (``edit``: the bound form and its judge, after a refused edit),
    and an error for a ``from`` that names no judge of the study."""
    rows = judging.judge_edit_rows(study)
    form, error = None, ""
    source = request.GET.get("from") if request.method == "GET" else None
    if source:
        row = rows.get(int(source)) if source.isascii() and source.isdigit() and len(source) < 19 else None
        if row is None:
            error = f"from: {source[:40]!r} is not a judge of this study; nothing was copied"
        else:
            form = JudgeForm(initial={
                "name": _copy_name(row["name"], {r["name"] for r in rows.values()}), "kind": row["kind"],
                "backend": row["backend"], "spec": json.dumps(row["spec"], ensure_ascii=False),
                "rubric": row["rubric"], "max_new_tokens": row["max_new_tokens"]})
            form.copied_from = row["name"]
    edits = []
    for row in sorted(rows.values(), key=lambda r: r["name"]):
        if edit is not None and edit[1] == row["id"]:
            edits.append({**row, "form": edit[0], "open": True})
        elif row["editable"]:
            edits.append({**row, "open": False, "form": JudgeEditForm(auto_id=f"judge{row['id']}_%s", initial={
                "spec": json.dumps(row["spec"], ensure_ascii=False), "rubric": row["rubric"],
                "max_new_tokens": row["max_new_tokens"]})})
    return form, edits, error


def _form_error(form) -> str:
    """A form's errors as one line, each naming its field."""
    parts = []
    for field, errors in form.errors.items():
        for message in errors:
            parts.append(message if field == "__all__" or message.startswith(field) else f"{field}: {message}")
    return "; ".join(parts)


def _judges_page(request: HttpRequest, study, form=None, error: str = "", status: int = 200,
                 edit: tuple | None = None) -> HttpResponse:
    from metrics.summary import stored_summary

    stored = stored_summary(study)  # one read: the judges' figures and whose human judgments they used
    rows, computed_at = judging.judges_page_rows(study, stored)
    evaluator = access.Role.EVALUATOR in access.study_roles(request.user, study)
    edits = []
    if evaluator and not (request.htmx and request.method == "GET"):  # the polled table needs no forms
        copy_form, edits, copy_error = _judge_forms(request, study, edit)
        form, error = form or copy_form, error or copy_error
        status = 400 if copy_error and status == 200 else status
    ctx = {"study": study, "judges": rows, "figures_at": computed_at, "form": form or JudgeForm(), "error": error,
           "ratings_mode": stored[1].get("ratings_mode"), "edits": edits,
           "active": any(j["status"] in (Judge.Status.QUEUED, Judge.Status.RUNNING) or j["figures_pending"]
                         for j in rows),
           "evaluator": evaluator,
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
    """GET: managers and evaluators read the judges' results (an evaluator's add form pre-filled from
    ``?from=<judge id>``); POST: an evaluator adds a judge."""
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
def judge_edit(request: HttpRequest, study_id: int, judge_id: int) -> HttpResponse:
    """An evaluator changes a judge's rubric, spec or reply length while it has no verdict or score
    and is not running; otherwise a 400 says why (and to add a new judge from this one)."""
    study = access.get_study_for_evaluator(request.user, study_id)
    judge = get_object_or_404(Judge, pk=judge_id, study=study)
    form = JudgeEditForm(request.POST, kind=judge.kind, auto_id=f"judge{judge.pk}_%s")
    refusal = judging.judge_edit_refusal(judge)  # before the form: a judged judge is never edited
    if refusal or not form.is_valid():
        error = f"Not saved: {refusal}" if refusal else f"Judge {judge.name!r} not saved: {_form_error(form)}"
        return _judges_page(request, study, error=error, status=400, edit=None if refusal else (form, judge.pk))
    try:
        judging.judge_update(study=study, judge=judge, actor=request.user, **form.cleaned_data)
    except ServiceError as exc:
        return _judges_page(request, study, error=f"Judge {judge.name!r} not saved: {exc}", status=400,
                            edit=(form, judge.pk))
    messages.success(request, f"Judge {judge.name} saved; start it to ask with the new rubric.")
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
