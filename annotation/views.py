"""Evaluator and annotator pages.  Thin: validate, fetch through access, call a service."""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from . import access, audit, selectors, services
from . import checks as checks_service
from .forms import (
    AttentionForm,
    CandidateForm,
    CandidateRenameForm,
    CheckSettingsForm,
    CheckUploadForm,
    InstructionsForm,
    InvitationForm,
    JudgmentForm,
    MemberChangeForm,
    MemberForm,
    QuizAnswerForm,
    SkipForm,
    StudyCreateForm,
    StudySettingsForm,
    upload_size_error,
)
from .models import Candidate, Invitation, Output, Skip, StudyMember, Unit
from .uploads import RowError, UploadError


@login_required
@require_safe
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
                tasks=form.cleaned_data["tasks"],
                instructions=form.cleaned_data["instructions"],
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
        "n_units": study.units.filter(is_gold=False).count(),
        "n_judgments": study.judgments.count(),
        "members": study.members.select_related("user").order_by("role", "user__username"),
        "settings_form": StudySettingsForm(initial={"overlap": study.overlap,
                                                    "adaptive_sampling": study.adaptive_sampling,
                                                    **StudySettingsForm.initial_for(study)}),
        **extra,
    }


def _identity_context(study) -> dict:
    counts = selectors.identity_counts(study)
    return {"identity_awaiting": counts[Output.Identity.FLAGGED], "identity_unchecked": counts[Output.Identity.UNCHECKED]}


def _page_context(study, **extra) -> dict:
    """The whole study page: the progress fragment's context, the forms and the invitations."""
    forms = {"candidate_form": CandidateForm(), "member_form": MemberForm(), "invitation_form": InvitationForm(),
             "instructions_form": InstructionsForm(initial={"instructions": study.instructions})}
    return _study_context(
        study, candidates=study.candidates.order_by("name"), invitations=selectors.study_invitations(study),
        roles=StudyMember.Role.values,
        n_rule_ties=selectors.rule_tie_count(study), **_identity_context(study),
        **{**forms, **extra},
    )


@login_required
@require_safe
def study_detail(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    return render(request, "annotation/study_detail.html", _page_context(study))


@login_required
@require_POST
def study_settings(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = StudySettingsForm(request.POST)
    if form.is_valid():
        d = form.cleaned_data
        try:
            services.study_update_settings(study=study, actor=request.user, overlap=d["overlap"],
                                           adaptive_sampling=d["adaptive_sampling"])
            if d["tasks"] is not None:
                services.study_update_tasks(study=study, tasks=d["tasks"], actor=request.user)
        except services.ServiceError as exc:
            messages.error(request, f"Settings not saved: {exc}")
        else:
            messages.success(request, "Settings saved.")
    else:
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    return redirect("annotation:study", study_id=study.pk)


@login_required
@require_safe
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
    ctx = _page_context(study, candidate_form=form, upload_errors=upload_errors)
    return render(request, "annotation/study_detail.html", ctx, status=400)


@login_required
@require_POST
def member_add(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = MemberForm(request.POST)
    status = 400
    if form.is_valid():
        user, role = form.cleaned_data["username"], form.cleaned_data["role"]
        already = StudyMember.objects.filter(study=study, user=user).exists()
        try:
            services.member_set(study=study, user=user, role=role, group=form.cleaned_data["group"],
                                actor=request.user)
        except services.ServiceError as exc:  # in the study with another role or group
            form.add_error(None, str(exc))
            status = 409
        else:
            name = user.get_username()
            messages.success(request, f"{name} is already {role} here; nothing changed." if already
                             else f"{name} is now {role}.")
            return redirect("annotation:study", study_id=study.pk)
    return render(request, "annotation/study_detail.html", _page_context(study, member_form=form), status=status)


@login_required
@require_POST
def member_change(request: HttpRequest, study_id: int, user_id: int) -> HttpResponse:
    """Change a member's role or group: its own action, never a side effect of adding them."""
    study = access.get_study_for_evaluator(request.user, study_id)
    member = get_object_or_404(StudyMember.objects.select_related("user"), study=study, user_id=user_id)
    form = MemberChangeForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("annotation:study", study_id=study.pk)
    before, name = member.role, member.user.get_username()
    try:
        after = services.member_change(study=study, user=member.user, actor=request.user, **form.cleaned_data)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        if after.role != before:
            messages.success(request, f"{name} is now {after.role} (was {before}).")
        else:
            messages.success(request, f"{name}: group is now “{after.group}”." if after.group
                             else f"{name}: no group now.")
    return redirect("annotation:study", study_id=study.pk)


def _form_errors(form) -> str:
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


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
    if request.POST.get("next") == "quality":  # the quality table's buttons come back to it
        return redirect("annotation:quality", study_id=study.pk)
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
        ctx = _page_context(study, upload_errors=exc.errors)
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


# --- candidates --------------------------------------------------------------------


def _candidate_of(request: HttpRequest, study_id: int, candidate_id: int):
    study = access.get_study_for_evaluator(request.user, study_id)
    return study, get_object_or_404(Candidate.objects.select_related("study"), pk=candidate_id, study=study)


def _to_candidates(study) -> HttpResponse:
    response = redirect("annotation:study", study_id=study.pk)
    response["Location"] += "#candidates"
    return response


@login_required
@require_POST
def candidate_rename(request: HttpRequest, study_id: int, candidate_id: int) -> HttpResponse:
    study, candidate = _candidate_of(request, study_id, candidate_id)
    form = CandidateRenameForm(request.POST)
    old = candidate.name
    if not form.is_valid():
        messages.error(request, f"Candidate '{old}' keeps its name: {_form_errors(form)}")
        return _to_candidates(study)
    try:
        services.candidate_rename(candidate=candidate, name=form.cleaned_data["name"], actor=request.user)
    except services.ServiceError as exc:
        messages.error(request, f"Candidate '{old}' keeps its name: {exc}.")
    else:
        if candidate.name != old:
            messages.success(request, f"Candidate '{old}' is now called '{candidate.name}'.")
    return _to_candidates(study)


@login_required
@require_POST
def candidate_remove(request: HttpRequest, study_id: int, candidate_id: int) -> HttpResponse:
    study, candidate = _candidate_of(request, study_id, candidate_id)
    try:
        services.candidate_remove(candidate=candidate, actor=request.user)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Candidate '{candidate.name}' removed, with its outputs and pairs.")
    return _to_candidates(study)


@login_required
@require_POST
def candidate_hide(request: HttpRequest, study_id: int, candidate_id: int) -> HttpResponse:
    """Hide a candidate from new pairs (``hidden=1``) or show it again (``hidden=0``)."""
    study, candidate = _candidate_of(request, study_id, candidate_id)
    flag = request.POST.get("hidden", "")
    if flag not in ("0", "1"):
        messages.error(request, "hidden: send 1 to hide the candidate from new pairs or 0 to show it again.")
        return _to_candidates(study)
    changed = services.candidate_hide(candidate=candidate, hidden=flag == "1", actor=request.user)
    name = candidate.name
    if flag == "1":
        messages.success(request, f"Candidate '{name}' is hidden from new pairs; its votes and ratings stay."
                         if changed else f"Candidate '{name}' was already hidden from new pairs.")
    else:
        messages.success(request, f"Candidate '{name}' is in new pairs again." if changed
                         else f"Candidate '{name}' was not hidden.")
    return _to_candidates(study)


# --- invitations -------------------------------------------------------------------


@login_required
@require_POST
def invitation_create(request: HttpRequest, study_id: int) -> HttpResponse:
    """Make a link and show it, once: only its hash is stored."""
    study = access.get_study_for_evaluator(request.user, study_id)
    form = InvitationForm(request.POST)
    if form.is_valid():
        d = form.cleaned_data
        try:
            invitation, token = services.invitation_create(study=study, role=d["role"], group=d["group"],
                                                           days=d["days"], max_uses=form.max_uses(),
                                                           actor=request.user)
        except services.ServiceError as exc:
            form.add_error(None, str(exc))
        else:
            link = request.build_absolute_uri(reverse("annotation:invitation", args=[token]))
            return render(request, "annotation/invitation_created.html",
                          {"study": study, "invitation": invitation, "link": link})
    return render(request, "annotation/study_detail.html", _page_context(study, invitation_form=form), status=400)


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, study_id: int, invitation_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    invitation = get_object_or_404(Invitation, pk=invitation_id, study=study)
    if services.invitation_revoke(invitation=invitation, actor=request.user):
        messages.success(request, f"Invitation {invitation.pk} withdrawn: nobody else can join through it.")
    else:
        messages.error(request, f"Invitation {invitation.pk} was already withdrawn.")
    response = redirect("annotation:study", study_id=study.pk)
    response["Location"] += "#invitations"
    return response


def _landing(member: StudyMember) -> str:
    if member.role == StudyMember.Role.ANNOTATOR:
        return reverse("annotation:annotate", args=[member.study_id])
    if member.role == StudyMember.Role.MANAGER:
        return reverse("arena:leaderboard", args=[member.study_id])
    return reverse("annotation:study", args=[member.study_id])


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link: GET says what it offers, POST (the Join button) joins.

    Someone not signed in is sent to sign in and back here (``login_required``).  404 for a
    link that does not exist, 410 for one expired, used up or withdrawn, 409 for a member of
    the study in another role; none of them changes anything.
    """
    invitation = selectors.invitation_for_token(token)
    if invitation is None:
        return render(request, "annotation/invitation.html", {
            "refusal": "This invitation link is not valid: check that it was copied whole, or ask the study's "
                       "evaluator for a new one."}, status=404)
    member = StudyMember.objects.filter(study=invitation.study, user=request.user).first()
    if request.method == "POST":
        try:
            member, joined = services.invitation_accept(invitation=invitation, user=request.user)
        except services.RoleClash as exc:
            return _invitation_page(request, invitation, member, refusal=str(exc), status=409)
        except services.InvitationGone as exc:
            return _invitation_page(request, invitation, member, refusal=str(exc), status=410)
        where = f"“{invitation.study.name}”"
        messages.success(request, f"You joined {where} as {member.role}." if joined
                         else f"You are already {member.role} in {where}; nothing changed.")
        return redirect(_landing(member))
    clash = services.invitation_member_clash(invitation, member)
    if clash:
        return _invitation_page(request, invitation, member, refusal=clash, status=409)
    refusal = services.invitation_refusal(invitation) if member is None else None
    return _invitation_page(request, invitation, member, refusal=refusal, status=410 if refusal else 200)


def _invitation_page(request, invitation, member, *, refusal: str | None, status: int) -> HttpResponse:
    ctx = {"invitation": invitation, "study": invitation.study, "member": member, "refusal": refusal,
           "landing": _landing(member) if member is not None else None}
    return render(request, "annotation/invitation.html", ctx, status=status)


@login_required
@require_safe
def study_audit(request: HttpRequest, study_id: int) -> HttpResponse:
    """Who changed what in the study, newest first, in pages."""
    study = access.get_study_for_evaluator(request.user, study_id)
    page = Paginator(audit.entries(study), audit.PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [(entry, audit.describe(entry.detail)) for entry in page]
    return render(request, "annotation/audit.html", {"study": study, "page": page, "rows": rows})


# --- annotators ---------------------------------------------------------------------


def _task_response(request: HttpRequest, study, assignment, *, done: int, error: str = "",
                   status: int = 200, undo_token: str = "", lean: bool = False) -> HttpResponse:
    """The task page, or its partial for htmx.  ``lean``: the page already shows this task (it
    was fetched ahead and put on screen by the vote); the answer carries only what changed:
    progress, the undo bar and the next task ahead."""
    task = (services.task_view(assignment=assignment, done=done, units_total=study.units_total, study=study)
            if assignment else None)
    # Only when there is no pair: outputs still being generated mean "not yet", not "all done".
    generating = task is None and selectors.generation_pending(study.pk)
    ctx = {"study_id": study.pk, "study_name": study.name, "task": task, "error": error, "done": done,
           "generating": generating, "undo_token": undo_token, "undo_seconds": settings.EVALSITE_UNDO_SECONDS,
           "skip_reasons": Skip.Reason.choices, "ahead_html": "", "idle_seconds": settings.EVALSITE_IDLE_SECONDS,
           "lean": lean and request.htmx}
    if task is not None and settings.EVALSITE_FETCH_AHEAD:
        # the next task, held hidden by the page and shown the moment this one is voted on (annotate.js)
        ahead = services.assignment_ahead(study=study, annotator=request.user,
                                          check_held=not getattr(assignment, "promoted", False))
        if ahead is not None:
            ctx["ahead_html"] = render_to_string("annotation/partials/_task.html", {
                **ctx, "task": services.task_view(assignment=ahead, done=done + 1, units_total=study.units_total,
                                                  study=study),
                "error": "", "undo_token": "", "done": done + 1, "lean": False}, request=request)
    template = "annotation/partials/_task.html" if request.htmx else "annotation/annotate.html"
    return render(request, template, ctx, status=status)


@never_cache
@login_required
@require_safe
def annotate(request: HttpRequest, study_id: int) -> HttpResponse:
    """The annotator's page: the task they hold, or the next one.  Never cached: Back shows the current task."""
    member = access.get_member_for_annotator(request.user, study_id)
    if member.done == 0 and member.instructions_seen_at is None and member.study.instructions_html:
        url = reverse("annotation:instructions", args=[study_id])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    if member.done == 0 and member.study.quiz_size and member.qualified_at is None:  # the quiz comes first
        url = reverse("annotation:quiz", args=[study_id])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    assignment = services.assignment_next(study=member.study, annotator=request.user)
    return _task_response(request, member.study, assignment, done=member.done)


_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def _image_response(request: HttpRequest, study_id: int, name: str, *, thumbnail: bool) -> HttpResponse:
    """An output's image through Django's storage, checked for permission on every request
    (access.get_output_image_for_user) and never kept by a shared cache."""
    folder = f"outputs/{study_id}/thumbs/" if thumbnail else f"outputs/{study_id}/"
    output = access.get_output_image_for_user(request.user, study_id, folder + name, thumbnail=thumbnail)
    stored = output.thumbnail if thumbnail else output.image
    try:
        handle = stored.open("rb")
    except (FileNotFoundError, OSError):
        raise Http404("The image file is missing from storage") from None
    suffix = name[name.rindex("."):]
    response = FileResponse(handle, content_type=_IMAGE_TYPES[suffix])
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_safe
def output_image(request: HttpRequest, study_id: int, name: str) -> HttpResponse:
    return _image_response(request, study_id, name, thumbnail=False)


@login_required
@require_safe
def output_thumbnail(request: HttpRequest, study_id: int, name: str) -> HttpResponse:
    return _image_response(request, study_id, name, thumbnail=True)


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def annotate_instructions(request: HttpRequest, study_id: int) -> HttpResponse:
    """The study's instructions: shown before the first task, and whenever the annotator asks.
    "Start" (POST) records that they were read and leads to the task."""
    member = access.get_member_for_annotator(request.user, study_id)
    if request.method == "POST":
        services.member_acknowledge_instructions(member=member)
        return redirect("annotation:annotate", study_id=study_id)
    return render(request, "annotation/instructions.html", {
        "study": member.study, "first_time": member.instructions_seen_at is None and member.done == 0})


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
            choice=form.cleaned_data["choice"] or None,
            rationale=form.cleaned_data["rationale"] or "",
            active_ms=form.cleaned_data["active_ms"],
            ratings=form.ratings() if assignment.unit_kind == "likert" else None,
            tags=form.tags(),
        )
    except services.AnswerInvalid as exc:
        current = services.assignment_next(study=study, annotator=request.user)
        return _task_response(request, study, current, done=done, error=f"Not recorded: {exc}", status=400)
    except services.ServiceError as exc:
        current = services.assignment_next(study=study, annotator=request.user)
        return _task_response(request, study, current, done=done, error=str(exc), status=409)
    done += created
    # The lease just closed was the annotator's only open one on screen unless this was a repeat.
    nxt = services.assignment_next(study=study, annotator=request.user, check_held=not created)
    # annotate.js says which task it put on screen at the vote; when it is this one, it needs no copy
    shown = request.headers.get("X-Evalsite-Shown", "")
    return _task_response(request, study, nxt, done=done, lean=bool(shown) and nxt is not None and nxt.token == shown,
                          undo_token=token if created and settings.EVALSITE_UNDO_SECONDS else "")


@never_cache
@login_required
@require_POST
def task_skip(request: HttpRequest, token: str) -> HttpResponse:
    """Pass on a task with a reason; its place goes to someone else, and the next task comes back."""
    assignment = access.get_assignment_for_annotator(request.user, token)
    study, done = assignment.study, assignment.member_done
    form = SkipForm(request.POST)
    try:
        if not form.is_valid():
            raise services.AnswerInvalid(_form_errors(form))
        created = services.task_skip(assignment=assignment, reason=form.cleaned_data["reason"],
                                     note=form.cleaned_data["note"])
    except services.ServiceError as exc:
        status = 400 if isinstance(exc, services.AnswerInvalid) else 409
        current = services.assignment_next(study=study, annotator=request.user)
        return _task_response(request, study, current, done=done, error=f"Not skipped: {exc}", status=status)
    nxt = services.assignment_next(study=study, annotator=request.user, check_held=not created)
    return _task_response(request, study, nxt, done=done)


@never_cache
@login_required
@require_POST
def judgment_undo(request: HttpRequest, token: str) -> HttpResponse:
    """Take back the latest judgment (within EVALSITE_UNDO_SECONDS) and show that task again."""
    assignment = access.get_assignment_for_annotator(request.user, token)
    study, done = assignment.study, assignment.member_done
    try:
        reopened = services.judgment_undo(assignment=assignment)
    except services.ServiceError as exc:
        current = services.assignment_next(study=study, annotator=request.user)
        return _task_response(request, study, current, done=done, error=f"Not undone: {exc}", status=409)
    return _task_response(request, study, reopened, done=max(0, done - 1))


# --- quality: ties by rule, identity guard, annotator quality, judgments --------------

QUALITY_PAGE_SIZE = 50


def _is_evaluator(user, study) -> bool:
    return StudyMember.Role.EVALUATOR in access.study_roles(user, study)


@login_required
@require_POST
def study_instructions(request: HttpRequest, study_id: int) -> HttpResponse:
    """The evaluator sets the instructions annotators read before their first task."""
    study = access.get_study_for_evaluator(request.user, study_id)
    form = InstructionsForm(request.POST)
    if form.is_valid():
        services.study_set_instructions(study=study, text=form.cleaned_data["instructions"], actor=request.user)
        messages.success(request, "Instructions saved.")
    else:
        messages.error(request, f"Instructions not saved: {_form_errors(form)}")
    return redirect(reverse("annotation:study", args=[study.pk]) + "#instructions")


@login_required
@require_safe
def rule_ties(request: HttpRequest, study_id: int) -> HttpResponse:
    """The pairs whose outputs were identical or nearly so, recorded as ties by rule."""
    study = access.get_study_for_evaluator(request.user, study_id)
    page = Paginator(selectors.rule_ties(study), QUALITY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "annotation/rule_ties.html", {"study": study, "page": page,
                                                         "per_pair": selectors.rule_ties_per_pair(study)})


@login_required
@require_http_methods(["GET", "POST"])
def identity_check(request: HttpRequest, study_id: int) -> HttpResponse:
    """Outputs that name a model or maker, each match highlighted; POST checks every output again."""
    study = access.get_study_for_evaluator(request.user, study_id)
    if request.method == "POST":
        flagged = services.outputs_identity_scan(study=study)
        messages.success(request, f"Checked every output without a decision: {flagged} name a model or maker.")
        return redirect("annotation:identity", study_id=study.pk)
    state = request.GET.get("state", Output.Identity.FLAGGED)
    if state not in (Output.Identity.FLAGGED, Output.Identity.KEPT, Output.Identity.EXCLUDED):
        state = Output.Identity.FLAGGED
    page = Paginator(selectors.identity_outputs(study, state), QUALITY_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = selectors.identity_rows(study, page, services.identity_pattern(study))
    counts = selectors.identity_counts(study)
    return render(request, "annotation/identity.html", {
        "study": study, "page": page, "rows": rows, "state": state, "counts": counts,
        "unchecked": counts[Output.Identity.UNCHECKED],
        "states": [(s, Output.Identity(s).label) for s in
                   (Output.Identity.FLAGGED, Output.Identity.KEPT, Output.Identity.EXCLUDED)]})


@login_required
@require_POST
def output_identity(request: HttpRequest, study_id: int, output_id: int) -> HttpResponse:
    """Keep (``decision=kept``) or exclude (``decision=excluded``) an output that names a model."""
    study = access.get_study_for_evaluator(request.user, study_id)
    output = get_object_or_404(Output.objects.select_related("study", "candidate", "prompt"), study=study,
                               pk=output_id)
    decision = request.POST.get("decision", "")
    try:
        services.output_identity_decide(output=output, decision=decision, actor=request.user)
    except services.ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{output.candidate.name} on prompt {output.prompt.external_id}: "
                         + ("excluded from pairs." if decision == Output.Identity.EXCLUDED else "kept."))
    return redirect(reverse("annotation:identity", args=[study.pk]) + "?state=" + Output.Identity.FLAGGED)


@login_required
@require_safe
def quality(request: HttpRequest, study_id: int) -> HttpResponse:
    """Per-annotator quality; evaluators exclude or re-admit from it, managers read it (pseudonyms)."""
    study = access.get_study_for_manager(request.user, study_id)
    evaluator = _is_evaluator(request.user, study)
    # Reads the worker's snapshot and the live members only: a constant number of queries.
    table = selectors.quality_table(study, pseudonymize=not evaluator)
    if table.computed_at is None:  # never computed: ask the worker (the one place that requests recomputes)
        from arena.services import ratings_request

        ratings_request(study_id=study.pk)
    return render(request, "annotation/quality.html", {
        "study": study, "table": table, "rows": table.rows, "evaluator": evaluator,
        "thresholds": selectors._thresholds()})


@login_required
@require_safe
def judgments(request: HttpRequest, study_id: int) -> HttpResponse:
    """Every judgment with its rationale, newest first; filter by candidate pair or annotator."""
    study = access.get_study_for_manager(request.user, study_id)
    evaluator = _is_evaluator(request.user, study)
    pair = annotator_id = None
    try:
        if request.GET.get("pair"):
            lo, hi = (int(x) for x in request.GET["pair"].split("-", 1))
            pair = (min(lo, hi), max(lo, hi))
        if request.GET.get("annotator") and evaluator:
            annotator_id = int(request.GET["annotator"])
    except ValueError:
        messages.error(request, "pair: give two candidate ids as LO-HI; annotator: a user id.")
    page = Paginator(selectors.judgments_list(study, pair=pair, annotator_id=annotator_id),
                     QUALITY_PAGE_SIZE).get_page(request.GET.get("page"))
    from .api.selectors import pseudonym

    for j in page:
        j.who = j.annotator.get_username() if evaluator else pseudonym(study.pk, j.annotator_id)
        _describe_judgment(j)
    skips = selectors.skip_summary(study)
    for skip in skips["latest"]:
        skip.who = skip.annotator.get_username() if evaluator else pseudonym(study.pk, skip.annotator_id)
    query = "&".join(f"{k}={v}" for k, v in (("pair", pair and f"{pair[0]}-{pair[1]}"), ("annotator", annotator_id))
                     if v)
    return render(request, "annotation/judgments.html", {
        "study": study, "page": page, "evaluator": evaluator, "pair": pair, "annotator_id": annotator_id, "query": query,
        "pair_value": f"{pair[0]}-{pair[1]}" if pair else "",
        "pairs": selectors.candidate_pairs(study), "skips": skips,
        "annotators": study.members.filter(role=StudyMember.Role.ANNOTATOR).select_related("user")
        if evaluator else []})


def _describe_judgment(j) -> None:
    """Which candidate was on each side, and the verdict in words naming the winner."""
    unit = j.unit
    lo, hi = unit.cand_lo.name, (unit.cand_hi.name if unit.cand_hi_id else "–")
    a_name, b_name = (lo, hi) if unit.a_is_lo else (hi, lo)
    j.left_name, j.right_name = (a_name, b_name) if j.left_is_a else (b_name, a_name)
    j.verdict = {"a": f"{a_name} better", "b": f"{b_name} better", "tie": "Tie", "both_bad": "Both bad"}.get(
        j.outcome, "Rated (Likert)")
    j.seconds = (j.submitted_at - j.served_at).total_seconds()


# --- known-answer checks and the qualification quiz (annotation.checks) ---------------


def _checks_context(study, **extra) -> dict:
    return {"study": study, "rows": checks_service.checks_list(study),
            "counts": checks_service.count_by_kind(study),
            "settings_form": extra.pop("settings_form", None) or CheckSettingsForm(initial={
                f: getattr(study, f) for f in ("check_rate", "gold_pass", "quiz_size", "quiz_pass", "quiz_attempts")}),
            "upload_form": CheckUploadForm(), "attention_form": extra.pop("attention_form", None) or AttentionForm(),
            "likert_only": study.task_kinds == "likert", **extra}


@login_required
@require_safe
def checks(request: HttpRequest, study_id: int) -> HttpResponse:
    """Gold items and attention checks: how often each is served, answered and answered right."""
    study = access.get_study_for_evaluator(request.user, study_id)
    return render(request, "annotation/checks.html", _checks_context(study))


@login_required
@require_POST
def checks_settings(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = CheckSettingsForm(request.POST)
    if form.is_valid():
        try:
            checks_service.checks_settings_update(study=study, actor=request.user, **form.cleaned_data)
        except checks_service.CheckError as exc:
            form.add_error(None, str(exc))
    if form.errors:
        return render(request, "annotation/checks.html",
                      _checks_context(study, settings_form=form, error=f"Not saved: {_form_errors(form)}"), status=400)
    messages.success(request, "Check and quiz settings saved.")
    return redirect("annotation:checks", study_id=study.pk)


@login_required
@require_POST
def checks_upload(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    upload = request.FILES.get("checks")
    try:
        if upload is None:
            raise UploadError([RowError(None, "checks", "choose a file of checks (CSV or JSONL) to upload")])
        too_big = upload_size_error(upload)  # before a byte of it is read
        if too_big:
            raise UploadError([RowError(None, "checks", too_big)])
        added = checks_service.checks_import(study=study, data=upload, filename=upload.name, actor=request.user)
    except UploadError as exc:
        return render(request, "annotation/checks.html", _checks_context(study, upload_errors=exc.errors), status=400)
    messages.success(request, f"{added} checks added.")
    return redirect("annotation:checks", study_id=study.pk)


@login_required
@require_POST
def checks_attention(request: HttpRequest, study_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    form = AttentionForm(request.POST)
    if form.is_valid():
        try:
            made = checks_service.checks_make_attention(
                study=study, count=form.cleaned_data["count"], criterion=form.cleaned_data["criterion"] or "",
                at_most=form.cleaned_data["at_most"], actor=request.user)
        except checks_service.CheckError as exc:
            form.add_error(None, str(exc))
    if form.errors:
        return render(request, "annotation/checks.html",
                      _checks_context(study, attention_form=form, error=f"Not made: {_form_errors(form)}"), status=400)
    messages.success(request, f"{made} attention checks made.")
    return redirect("annotation:checks", study_id=study.pk)


@login_required
@require_POST
def check_remove(request: HttpRequest, study_id: int, unit_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    unit = get_object_or_404(Unit.objects.select_related("study"), study=study, pk=unit_id, is_gold=True)
    answered = checks_service.check_remove(unit=unit, actor=request.user)
    messages.success(request, f"Check removed, with the {answered} answer{'s' if answered != 1 else ''} given to it.")
    return redirect("annotation:checks", study_id=study.pk)


def _quiz_page(request, member, *, feedback=None, error: str = "", status: int = 200) -> HttpResponse:
    study = member.study
    state = checks_service.quiz_state(study=study, member=member)
    item = checks_service.quiz_item(state.attempt) if state.status == "in_progress" else None
    return render(request, "annotation/quiz.html", {
        "study": study, "state": state, "item": item, "feedback": feedback, "error": error,
        "score": sum(1 for a in state.attempt.answers if a["right"]) if state.attempt else 0}, status=status)


@never_cache
@login_required
@require_safe
def quiz(request: HttpRequest, study_id: int) -> HttpResponse:
    """The qualification quiz: where the annotator stands, or the question waiting for an answer."""
    member = access.get_member_for_annotator(request.user, study_id)
    return _quiz_page(request, member)


@never_cache
@login_required
@require_POST
def quiz_start(request: HttpRequest, study_id: int) -> HttpResponse:
    member = access.get_member_for_annotator(request.user, study_id)
    try:
        checks_service.quiz_start(study=member.study, member=member)
    except checks_service.CheckError as exc:
        return _quiz_page(request, member, error=str(exc), status=409)
    return redirect("annotation:quiz", study_id=study_id)


@never_cache
@login_required
@require_POST
def quiz_answer(request: HttpRequest, study_id: int) -> HttpResponse:
    """Score one answer and say at once whether it was right, and what was expected."""
    member = access.get_member_for_annotator(request.user, study_id)
    state = checks_service.quiz_state(study=member.study, member=member)
    if state.status != "in_progress":
        return _quiz_page(request, member, error="There is no quiz question waiting for an answer.", status=409)
    form = QuizAnswerForm(request.POST)
    if not form.is_valid():
        return _quiz_page(request, member, error=f"Not recorded: {_form_errors(form)}", status=400)
    try:
        feedback = checks_service.quiz_answer(attempt=state.attempt, index=form.cleaned_data["index"],
                                              choice=form.cleaned_data["choice"] or None, ratings=form.ratings())
    except checks_service.CheckError as exc:
        return _quiz_page(request, member, error=f"Not recorded: {exc}", status=400)
    member.refresh_from_db(fields=["qualified_at"])
    return _quiz_page(request, member, feedback=feedback)


@login_required
@require_POST
def adjudicate(request: HttpRequest, study_id: int) -> HttpResponse:
    """Evaluators send low-agreement units to more annotators (``action=more``, ``extra``) or
    reserve them for a named expert (``action=expert``, ``expert``); back to the agreement page."""
    from . import adjudication

    study = access.get_study_for_evaluator(request.user, study_id)
    action = request.POST.get("action", "")
    try:
        # a comma-separated list, or one ``units`` field per ticked box on the agreement page
        unit_ids = adjudication.parse_unit_ids(",".join(request.POST.getlist("units"))[:20_000])
        if action == "more":
            raw = request.POST.get("extra", "").strip()
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
                raise services.ServiceError(
                    f"extra must be a whole number from 1 to {adjudication.MAX_EXTRA}, not {raw[:20]!r}")
            sent = adjudication.units_send_for_more(study=study, unit_ids=unit_ids, extra=int(raw),
                                                    actor=request.user)
            done = f"{sent} units sent to {raw} more annotators each."
        elif action == "expert":
            name = request.POST.get("expert", "").strip()[:150]
            if not name:
                raise services.ServiceError("expert: name the annotator to send the units to")
            added = adjudication.units_send_to_expert(study=study, unit_ids=unit_ids, expert=name,
                                                      actor=request.user)
            done = f"{added} units reserved for {name}."
        else:
            raise services.ServiceError("action must be 'more' (with extra) or 'expert' (with a username)")
    except services.ServiceError as exc:  # the agreement page again, the reason above the units
        from metrics.agreement_service import agreement_page

        return render(request, "metrics/agreement.html", {
            "study": study, "evaluator": True, "adjudicate_error": f"Not sent: {exc}",
            **agreement_page(study, pseudonymize=False)}, status=400)
    messages.success(request, done)
    return redirect("metrics:agreement", study_id=study.pk)
