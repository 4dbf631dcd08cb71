"""Evaluator and annotator pages.  Thin: validate, fetch through access, call a service."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from . import access, audit, selectors, services
from .forms import (
    CandidateForm,
    JudgmentForm,
    MemberForm,
    StudyCreateForm,
    StudySettingsForm,
    upload_size_error,
)
from .models import Output, StudyMember
from .uploads import RowError, UploadError


@login_required
def home(request: HttpRequest) -> HttpResponse:
    studies = access.studies_for_user(request.user)
    return render(request, "annotation/home.html", {"studies": studies, "can_create": _can_create(request.user)})


def _can_create(user) -> bool:
    """Creating a study takes one explicit permission (superusers have it); ``is_staff``
    alone does not. Rights inside a study come from membership (``access``)."""
    return user.has_perm("annotation.add_study")


@login_required
@require_http_methods(["GET", "POST"])
def study_create(request: HttpRequest) -> HttpResponse:
    if not _can_create(request.user):
        raise PermissionDenied("Creating a study needs the annotation.add_study permission (\"Can add study\"); "
                               "ask an administrator to grant it.")
    form = StudyCreateForm(request.POST or None, request.FILES or None)
    upload_errors = None
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["prompts"]
        try:
            study = services.study_create(
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                created_by=request.user,
                prompts_data=upload,  # the parser streams it; the form checked its size
                prompts_filename=upload.name,
                overlap=form.cleaned_data["overlap"],
                generation_settings=form.generation_settings(),
                annotators=form.cleaned_data["annotators"],
                managers=form.cleaned_data["managers"],
                adaptive_sampling=form.cleaned_data["adaptive_sampling"],
            )
        except UploadError as exc:
            upload_errors = exc.errors
        except services.ServiceError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Study created with {study.prompts.count()} prompts.")
            return redirect("annotation:study", study_id=study.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "annotation/study_create.html", {"form": form, "upload_errors": upload_errors}, status=status)


def _study_context(study, **extra) -> dict:
    progress = selectors.generation_progress(study)
    return {
        "study": study,
        "progress": progress,
        "finished": selectors.generation_finished(progress),
        "failed": selectors.failed_outputs(study),
        "stuck": selectors.stuck_outputs(study),
        "workers_alive": selectors.workers_alive(),
        "n_prompts": study.prompts.count(),
        "n_units": study.units.count(),
        "n_judgments": study.judgments.count(),
        "members": study.members.select_related("user").order_by("role", "user__username"),
        "settings_form": StudySettingsForm(initial={"overlap": study.overlap,
                                                    "adaptive_sampling": study.adaptive_sampling}),
        **extra,
    }


@login_required
def study_detail(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    ctx = _study_context(study, candidate_form=CandidateForm(), member_form=MemberForm())
    return render(request, "annotation/study_detail.html", ctx)


@login_required
@require_POST
def study_settings(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = StudySettingsForm(request.POST)
    if form.is_valid():
        services.study_update_settings(study=study, actor=request.user, **form.cleaned_data)
        messages.success(request, "Settings saved.")
    else:
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    return redirect("annotation:study", study_id=study.pk)


@login_required
def study_progress(request: HttpRequest, study_id: int) -> HttpResponse:
    """The progress fragment; htmx polls it and stops once nothing is queued or running."""
    study = access.get_study_for_evaluator(request.user, study_id)
    ctx = _study_context(study)
    response = render(request, "annotation/partials/_progress.html", ctx)
    if request.htmx and ctx["finished"] and request.GET.get("poll"):
        stop = HttpResponseStopPolling(response.content)
        return stop
    return response


@login_required
@require_POST
def candidate_add(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = CandidateForm(request.POST, request.FILES)
    upload_errors = None
    if form.is_valid():
        d = form.cleaned_data
        try:
            # one transaction: a refused outputs file leaves neither the candidate nor its audit entry
            with transaction.atomic():
                candidate = services.candidate_create(study=study, name=d["name"], backend=d["backend"],
                                                      spec=d["spec"], actor=request.user)
                if d.get("outputs"):
                    services.outputs_import(candidate=candidate, data=d["outputs"],
                                            filename=d["outputs"].name, actor=request.user)
        except UploadError as exc:
            upload_errors = exc.errors
        except services.ServiceError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Candidate {candidate.name!r} added.")
            return redirect("annotation:study", study_id=study.pk)
    ctx = _study_context(study, candidate_form=form, member_form=MemberForm(), upload_errors=upload_errors)
    return render(request, "annotation/study_detail.html", ctx, status=400)


@login_required
@require_POST
def member_add(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = MemberForm(request.POST)
    if form.is_valid():
        services.member_set(study=study, user=form.cleaned_data["username"], role=form.cleaned_data["role"],
                            group=form.cleaned_data["group"], actor=request.user)
        messages.success(request, f"{form.cleaned_data['username']} is now {form.cleaned_data['role']}.")
        return redirect("annotation:study", study_id=study.pk)
    ctx = _study_context(study, candidate_form=CandidateForm(), member_form=form)
    return render(request, "annotation/study_detail.html", ctx, status=400)


@login_required
@require_POST
def member_exclude(request: HttpRequest, study_id: int, user_id: int) -> HttpResponse:
    """Exclude an annotator (``excluded=1``) or re-admit one (``excluded=0``)."""
    study = access.get_study_for_evaluator(request.user, study_id)
    member = get_object_or_404(StudyMember.objects.select_related("user"), study=study, user_id=user_id)
    flag = request.POST.get("excluded", "")
    if flag not in ("0", "1"):
        messages.error(request, "excluded: send 1 to exclude the annotator or 0 to re-admit them.")
        return redirect("annotation:study", study_id=study.pk)
    name = member.user.get_username()
    if member.role != StudyMember.Role.ANNOTATOR:
        messages.error(request, f"{name} is {member.role}; only annotators can be excluded or re-admitted.")
        return redirect("annotation:study", study_id=study.pk)
    services.member_exclude(study=study, user=member.user, excluded=flag == "1", actor=request.user)
    messages.success(request, f"{name} is excluded: their judgments no longer count." if flag == "1"
                     else f"{name} is re-admitted: their judgments count again.")
    return redirect("annotation:study", study_id=study.pk)


@login_required
@require_POST
def member_remove(request: HttpRequest, study_id: int, user_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    member = get_object_or_404(StudyMember.objects.select_related("user"), study=study, user_id=user_id)
    try:
        services.member_remove(study=study, user=member.user, actor=request.user)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{member.user.get_username()} is no longer in this study.")
    return redirect("annotation:study", study_id=study.pk)


@login_required
@require_POST
def generation_start(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    try:
        queued = services.generation_start(study=study, actor=request.user)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{queued} outputs queued for generation.")
    return redirect("annotation:study", study_id=study.pk)


@login_required
@require_POST
def prompts_add(request: HttpRequest, study_id: int) -> HttpResponse:
    """Add prompts to a study from another upload (ids must be new to the study)."""
    study = access.get_study_for_evaluator(request.user, study_id)
    upload = request.FILES.get("prompts")
    if upload is None:
        messages.error(request, "Choose a prompt file (CSV or JSONL) to upload.")
        return redirect("annotation:study", study_id=study.pk)
    try:
        too_big = upload_size_error(upload)  # before a byte of it is read
        if too_big:
            raise UploadError([RowError(None, "prompts", too_big)])
        added = services.prompts_import(study=study, data=upload, filename=upload.name, actor=request.user)
    except UploadError as exc:
        ctx = _study_context(study, candidate_form=CandidateForm(), member_form=MemberForm(),
                             upload_errors=exc.errors)
        return render(request, "annotation/study_detail.html", ctx, status=400)
    messages.success(request, f"{added} prompts added; start generation to produce their outputs.")
    return redirect("annotation:study", study_id=study.pk)


@login_required
@require_POST
def outputs_retry_failed(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    retried = services.outputs_retry_failed(study=study, actor=request.user)
    messages.success(request, f"{retried} failed outputs queued again.")
    return redirect("annotation:study", study_id=study.pk)


@login_required
@require_POST
def output_retry(request: HttpRequest, study_id: int, output_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    output = get_object_or_404(Output, pk=output_id, study=study)
    try:
        services.output_retry(output=output, actor=request.user)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    if request.htmx:
        return render(request, "annotation/partials/_progress.html", _study_context(study))
    return redirect("annotation:study", study_id=study.pk)


@login_required
def study_audit(request: HttpRequest, study_id: int) -> HttpResponse:
    """Who changed what in the study, newest first, in pages."""
    study = access.get_study_for_evaluator(request.user, study_id)
    page = Paginator(audit.entries(study), audit.PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [(entry, audit.describe(entry.detail)) for entry in page]
    return render(request, "annotation/audit.html", {"study": study, "page": page, "rows": rows})


# --- annotators ---------------------------------------------------------------------


def _task_response(request: HttpRequest, study, assignment, *, done: int, error: str = "",
                   status: int = 200) -> HttpResponse:
    task = services.task_view(assignment=assignment, done=done, units_total=study.units_total) if assignment else None
    # Only when there is no pair: outputs still being generated mean "not yet", not "all done".
    generating = task is None and selectors.generation_pending(study.pk)
    ctx = {"study_id": study.pk, "study_name": study.name, "task": task, "error": error, "done": done,
           "generating": generating}
    template = "annotation/partials/_task.html" if request.htmx else "annotation/annotate.html"
    return render(request, template, ctx, status=status)


@never_cache
@login_required
def annotate(request: HttpRequest, study_id: int) -> HttpResponse:
    """The annotator's page: the task they hold, or the next one.  Never cached: Back shows the current task."""
    member = access.get_member_for_annotator(request.user, study_id)
    assignment = services.assignment_next(study=member.study, annotator=request.user)
    return _task_response(request, member.study, assignment, done=member.done)


@never_cache
@login_required
@require_POST
def judgment_submit(request: HttpRequest, token: str) -> HttpResponse:
    """Record a verdict and answer with the next task in the same round trip.

    A refused vote (400: a bad form; 409: already answered otherwise, or the lease
    expired and the place went to someone else) answers with its message and the
    annotator's current task, which htmx swaps in like any other answer.
    """
    assignment = access.get_assignment_for_annotator(request.user, token)
    study, done = assignment.study, assignment.member_done
    form = JudgmentForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(errs)}" for field, errs in form.errors.items())
        current = services.assignment_next(study=study, annotator=request.user)
        return _task_response(request, study, current, done=done, error=f"Not recorded: {errors}", status=400)
    try:
        _, created = services.judgment_submit(
            assignment=assignment,
            choice=form.cleaned_data["choice"],
            rationale=form.cleaned_data["rationale"] or "",
            active_ms=form.cleaned_data["active_ms"],
        )
    except services.ServiceError as exc:
        current = services.assignment_next(study=study, annotator=request.user)
        return _task_response(request, study, current, done=done, error=str(exc), status=409)
    done += created
    # The lease just closed was the annotator's only open one unless this was a repeat.
    nxt = services.assignment_next(study=study, annotator=request.user, check_held=not created)
    return _task_response(request, study, nxt, done=done)
