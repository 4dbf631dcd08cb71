"""Every state change of a study, in one place.

Views, the REST API, Celery tasks and management commands all call these functions;
none of them writes study rows on its own.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from itertools import combinations
from pathlib import PurePosixPath

from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Substr
from django.utils import timezone

from arena import outcomes

from . import audit, identity, markdown, neardup, selectors, taskconfig, uploads
from .generation import base as generation_base
from .generation import images as generation_images
from .models import (
    Adjudication,
    Assignment,
    Candidate,
    Invitation,
    Judgment,
    Output,
    Prompt,
    PromptTag,
    Study,
    Skip,
    StudyMember,
    Unit,
    WorkerHeartbeat,
)

log = logging.getLogger(__name__)
User = get_user_model()


class ServiceError(ValueError):
    """A request that cannot be carried out; the message says why, for the user."""


# --- studies and members -------------------------------------------------------------


def study_create(
    *,
    name: str,
    created_by,
    prompts_data: uploads.UploadData,
    prompts_filename: str,
    description: str = "",
    overlap: int = 1,
    samples_per_prompt: int = 1,
    generation_settings: dict | None = None,
    annotators: Iterable = (),
    managers: Iterable = (),
    adaptive_sampling: bool = False,
    tasks: dict | None = None,
    instructions: str = "",
) -> Study:
    """Create a study with its prompt set; the upload is validated whole first.

    ``tasks``: what annotators are asked (task_kinds, likert_criteria, failure_tags,
    ask_rationale; see :mod:`annotation.taskconfig`); blind pairs with an optional reason
    when not given.  Raises ``uploads.UploadError`` (nothing written) when any prompt row is bad.
    """
    tasks = tasks_validate(tasks or {})
    rows = uploads.parse_prompts(prompts_data, prompts_filename,
                                 max_bytes=django_settings.EVALSITE_UPLOAD_MAX_BYTES).rows
    gen = generation_settings_validate(generation_settings or {})
    if overlap < 1:
        raise ServiceError("overlap must be at least 1")
    annotators, managers = list(annotators), list(managers)
    _refuse_second_roles(created_by, annotators, managers)
    with transaction.atomic():
        study = Study.objects.create(
            name=name,
            description=description,
            created_by=created_by,
            overlap=overlap,
            samples_per_prompt=samples_per_prompt,
            generation_settings=gen,
            adaptive_sampling=adaptive_sampling,
            instructions=instructions.strip(),
            instructions_html=markdown.render(instructions.strip()),
            **tasks,
        )
        StudyMember.objects.create(study=study, user=created_by, role=StudyMember.Role.EVALUATOR)
        _ratings_marker_create(study)
        _prompts_write(study, rows, start=0)
        StudyMember.objects.bulk_create(
            [StudyMember(study=study, user=user, role=StudyMember.Role.ANNOTATOR) for user in annotators]
            + [StudyMember(study=study, user=user, role=StudyMember.Role.MANAGER) for user in managers]
        )
        audit.record(study, created_by, audit.Action.STUDY_CREATED, study.name, {
            "prompts": len(rows), "file": prompts_filename, "overlap": overlap,
            "samples_per_prompt": samples_per_prompt, "adaptive_sampling": adaptive_sampling,
            "generation_settings": gen, "annotators": [u.get_username() for u in annotators],
            "managers": [u.get_username() for u in managers], **tasks,
        })
    return study


_TASK_DEFAULTS = {"task_kinds": "pairwise", "likert_criteria": [], "failure_tags": [], "ask_rationale": "optional"}


def tasks_validate(raw: dict) -> dict:
    """A study's task settings, defaults filled in, checked together; ServiceError names the field."""
    try:
        return taskconfig.config_validate(**{**_TASK_DEFAULTS, **raw})
    except taskconfig.ConfigError as exc:
        raise ServiceError(str(exc)) from None


def study_update_tasks(*, study: Study, tasks: dict, actor=None) -> Study:
    """Change what annotators are asked; Likert units are built for the finished outputs when
    the study now has Likert tasks.  Judgments already given keep their ratings and tags."""
    tasks = tasks_validate(tasks)
    with transaction.atomic():
        before = Study.objects.select_for_update().filter(pk=study.pk).values(*_TASK_DEFAULTS).get()
        Study.objects.filter(pk=study.pk).update(**tasks)
        changed = audit.changes(before, tasks)
        if changed:
            audit.record(study, actor, audit.Action.SETTINGS_CHANGED, study.name, changed)
    study.refresh_from_db()
    units_build(study=study)
    if {"likert_criteria", "failure_tags"} & set(changed):
        _request_ratings(study.pk)  # the stored Likert summaries are laid out by these
    return study


def _refuse_second_roles(created_by, annotators: Sequence, managers: Sequence) -> None:
    """A person has one role per study: the creator is its evaluator, and nobody is listed twice."""
    seen: dict[int, str] = {created_by.pk: StudyMember.Role.EVALUATOR}
    for role, users in ((StudyMember.Role.ANNOTATOR, annotators), (StudyMember.Role.MANAGER, managers)):
        for user in users:
            if user.pk in seen:
                raise ServiceError(
                    f"{user.get_username()} is listed as {seen[user.pk]} and as {role}; a person has one role "
                    "in a study (the creator is its evaluator)"
                )
            seen[user.pk] = role


def _ratings_marker_create(study: Study) -> None:
    """The study's "all" refresh marker, which the vote path only ever flips (never creates)."""
    from arena.models import RatingRequest

    RatingRequest.objects.get_or_create(study=study, slice_key="all")


def study_update_settings(*, study: Study, overlap: int, adaptive_sampling: bool, actor=None) -> Study:
    """Change overlap (applied to every unit, judged ones included) and adaptive sampling."""
    if overlap < 1:
        raise ServiceError("overlap must be at least 1")
    with transaction.atomic():
        before = Study.objects.select_for_update().filter(pk=study.pk).values("overlap", "adaptive_sampling").get()
        Study.objects.filter(pk=study.pk).update(overlap=overlap, adaptive_sampling=adaptive_sampling)
        # the units of hidden candidates stay closed (needed = 0; see candidate_hide)
        hidden = list(Candidate.objects.filter(study=study, hidden=True).values_list("pk", flat=True))
        _reopenable(Unit.objects.filter(study=study).exclude(cand_lo__in=hidden).exclude(cand_hi__in=hidden)).update(
            needed=F("extra") + overlap)  # places asked by adjudication stay asked
        changed = audit.changes(before, {"overlap": overlap, "adaptive_sampling": adaptive_sampling})
        if changed:
            audit.record(study, actor, audit.Action.SETTINGS_CHANGED, study.name, changed)
    study.refresh_from_db()
    return study


def study_set_instructions(*, study: Study, text: str, actor=None) -> Study:
    """Set the Markdown annotators read before their first task (rendered and sanitised once, here)."""
    text = text.strip()
    with transaction.atomic():
        before = Study.objects.select_for_update().filter(pk=study.pk).values_list("instructions", flat=True).get()
        if before != text:
            Study.objects.filter(pk=study.pk).update(instructions=text, instructions_html=markdown.render(text))
            audit.record(study, actor, audit.Action.SETTINGS_CHANGED, study.name, {
                "instructions": audit.change(f"{len(before)} characters", f"{len(text)} characters")})
    study.refresh_from_db()
    return study


def member_acknowledge_instructions(*, member: StudyMember) -> StudyMember:
    """The annotator pressed Start on the instructions page; the first time counts."""
    if member.instructions_seen_at is None:
        now = timezone.now()
        StudyMember.objects.filter(pk=member.pk, instructions_seen_at__isnull=True).update(instructions_seen_at=now)
        member.instructions_seen_at = now
    return member


def generation_settings_validate(raw: dict) -> dict:
    try:
        return generation_base.GenerationSettings.from_dict(raw).to_dict()
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"generation settings: {exc}") from None


class RoleClash(ServiceError):
    """The person is already in the study in another role or group: a change is its own action."""


def _check_role(role: str) -> None:
    if role not in StudyMember.Role.values:
        raise ServiceError(f"there is no role “{role}”; a study has {', '.join(StudyMember.Role.values)}s")


def _membership(member: StudyMember) -> str:
    """"annotator" or "annotator in group night", for sentences."""
    return f"{member.role} in group “{member.group}”" if member.group else member.role


def member_set(*, study: Study, user, role: str, group: str = "", actor=None) -> StudyMember:
    """Add ``user`` to the study in ``role`` (the "add person" form, by account).

    Never changes a membership: the same role and group again changes nothing, and another
    role or group is refused (:class:`RoleClash`); :func:`member_change` is that action.
    """
    _check_role(role)
    name = user.get_username()
    with transaction.atomic():
        member, created = StudyMember.objects.get_or_create(study=study, user=user,
                                                            defaults={"role": role, "group": group})
        if created:
            audit.record(study, actor, audit.Action.MEMBER_ADDED, name, {"role": role, "group": group})
            return member
    if (member.role, member.group) != (role, group):
        wanted = _membership(StudyMember(role=role, group=group))
        raise RoleClash(
            f"{name} is already {_membership(member)} in this study; nothing changed. To make them {wanted}, "
            f"use “Change” beside {name} under People."
        )
    return member


def member_change(*, study: Study, user, role: str, group: str, actor=None) -> StudyMember:
    """Change a member's role or group, explicitly; one audit entry says from what to what.

    The study's creator stays its evaluator.  Judgments already cast stay and keep counting;
    when their annotator changes group, the study's version moves so every slice is redone.
    """
    _check_role(role)
    name = user.get_username()
    with transaction.atomic():
        member = StudyMember.objects.select_for_update().filter(study=study, user=user).first()
        if member is None:
            raise ServiceError(f"{name} is not a member of this study; add them first")
        if user.pk == study.created_by_id and role != StudyMember.Role.EVALUATOR:
            raise ServiceError(f"{name} created this study and stays its evaluator")
        changed = audit.changes({"role": member.role, "group": member.group}, {"role": role, "group": group})
        if not changed:
            return member
        StudyMember.objects.filter(pk=member.pk).update(role=role, group=group)
        action = audit.Action.MEMBER_ROLE_CHANGED if "role" in changed else audit.Action.MEMBER_GROUP_CHANGED
        audit.record(study, actor, action, name, changed)
        judged = Judgment.objects.filter(study=study, annotator=user).exists()
        if judged:  # group slices (and the slice list) read memberships: recount them
            Study.objects.filter(pk=study.pk).update(version=F("version") + 1)
    if judged:
        _request_ratings(study.pk)
    member.role, member.group = role, group
    return member


def member_remove(*, study: Study, user, actor=None) -> None:
    """Take a person out of the study.

    Refused for the study's creator (who always keeps the study) and for an annotator
    who has judged or holds a task here: their judgments must keep their membership,
    so exclude them instead.
    """
    if user.pk == study.created_by_id:
        raise ServiceError(f"{user.get_username()} created this study and cannot be removed")
    with transaction.atomic():
        member = StudyMember.objects.select_for_update().filter(study=study, user=user).first()
        if member is None:
            raise ServiceError(f"{user.get_username()} is not a member of this study")
        if Assignment.objects.filter(study=study, annotator=user).exists():
            raise ServiceError(
                f"{user.get_username()} has judged or holds a task in this study; exclude them instead, "
                "which keeps their judgments out of the results"
            )
        member.delete()
        audit.record(study, actor, audit.Action.MEMBER_REMOVED, user.get_username(),
                     {"role": member.role, "group": member.group})


def member_exclude(*, study: Study, user, excluded: bool = True, actor=None) -> None:
    """Exclude (or re-admit) an annotator: the judgments stay, aggregates leave them out.

    An excluded annotator's judgments and lease free their places, so others judge
    those pairs again; re-admitting counts the judgments back (a unit may then hold
    more than it needs).  The study's version moves, so every slice is redone in full.
    """
    from arena.services import online_elo_reset

    with transaction.atomic():
        changed = StudyMember.objects.filter(study=study, user=user).exclude(excluded=excluded).update(
            excluded=excluded
        )
        if not changed:
            if not StudyMember.objects.filter(study=study, user=user).exists():
                raise ServiceError(f"{user} is not a member of this study")
            return
        # Every assignment that holds a place is exactly one with released=False.
        if excluded:
            holding = Assignment.objects.filter(study=study, annotator=user, released=False)
        else:
            # judged ones only: a skipped task (closed and released) gave its place back for good
            holding = Assignment.objects.filter(study=study, annotator=user, submitted_at__isnull=False,
                                                judgment__isnull=False)
        # (unit, annotator) is unique, so each unit moves by exactly one place.
        step = -1 if excluded else 1
        Unit.objects.filter(pk__in=holding.values("unit_id")).update(taken=F("taken") + step)
        holding.update(released=excluded)
        Study.objects.filter(pk=study.pk).update(version=F("version") + 1)
        judged = Judgment.objects.filter(study=study, annotator=user).count()
        action = audit.Action.MEMBER_EXCLUDED if excluded else audit.Action.MEMBER_READMITTED
        audit.record(study, actor, action, user.get_username(), {"judgments": judged})
    online_elo_reset(study_id=study.pk)  # the sequential preview cannot un-count votes; replay it
    _request_ratings(study.pk)


# --- invitations ---------------------------------------------------------------------

INVITABLE_ROLES = (StudyMember.Role.ANNOTATOR, StudyMember.Role.MANAGER)


class InvitationGone(ServiceError):
    """The link exists but can no longer be used: expired, used up or revoked."""


def _utc(when: datetime) -> str:
    return f"{timezone.localtime(when, dt_timezone.utc):%Y-%m-%d %H:%M} UTC"


def invitation_create(*, study: Study, role: str, group: str = "", days: int | None = None,
                      max_uses: int | None = 1, actor=None) -> tuple[Invitation, str]:
    """Make an invitation link to join the study as annotator or manager (with a group label).

    Returns the invitation and its token: the token is not stored (only its hash), so the
    caller shows the link now or never.  ``days`` defaults to ``EVALSITE_INVITATION_DAYS``;
    ``max_uses=None`` lets any number of people join (a crowd link).
    """
    if role not in INVITABLE_ROLES:
        raise ServiceError(f"an invitation link is for annotators or managers, not {role}s; add an evaluator "
                           "by account under People")
    limit = django_settings.EVALSITE_INVITATION_MAX_DAYS
    days = django_settings.EVALSITE_INVITATION_DAYS if days is None else days
    if not 1 <= days <= limit:
        raise ServiceError(f"an invitation lasts from 1 to {limit} days (EVALSITE_INVITATION_MAX_DAYS), not {days}")
    if max_uses is not None and max_uses < 1:
        raise ServiceError("an invitation needs room for at least one person")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            study=study, role=role, group=group, token_hash=Invitation.hash_token(token), created_by=actor,
            expires_at=timezone.now() + timedelta(days=days), max_uses=max_uses,
        )
        audit.record(study, actor, audit.Action.INVITATION_CREATED, f"invitation {invitation.pk}", {
            "role": role, "group": group, "expires": _utc(invitation.expires_at),
            "people": max_uses if max_uses is not None else "any number",
        })
    return invitation, token


def invitation_refusal(invitation: Invitation, now: datetime | None = None) -> str | None:
    """Why the link can no longer be used, in plain words, or ``None`` while it can."""
    state = invitation.state(now or timezone.now())
    ask = "Nothing changed; ask the study's evaluator for a new link."
    if state == "revoked":
        return f"This invitation was withdrawn on {_utc(invitation.revoked_at)}. {ask}"
    if state == "expired":
        return f"This invitation expired on {_utc(invitation.expires_at)}. {ask}"
    if state == "used up":
        people = "one person" if invitation.max_uses == 1 else f"{invitation.max_uses} people"
        return f"This invitation has been used already: it was for {people}. {ask}"
    return None


def invitation_member_clash(invitation: Invitation, member: StudyMember | None) -> str | None:
    """Why a member cannot take this invitation (another role), or ``None``."""
    if member is None or member.role == invitation.role:
        return None
    return (f"You are already {member.role} in “{invitation.study.name}”, and this link invites "
            f"{invitation.role}s. Nothing changed: a role changes only when the study's evaluator changes it.")


def invitation_accept(*, invitation: Invitation, user) -> tuple[StudyMember, bool]:
    """Join the invitation's study in its role and group; returns ``(member, joined)``.

    A member in the same role stays as they are (``joined`` false, no place used); a member
    in another role is refused (:class:`RoleClash`) and nothing changes.  A place is taken
    by a conditional UPDATE (``uses < max_uses``, not revoked, not expired) whose row count
    decides, so two people racing for a single-use link cannot both join.
    """
    study = invitation.study
    now = timezone.now()
    existing = StudyMember.objects.filter(study=study, user=user).first()
    if existing is not None:
        return _already_member(invitation, existing), False
    try:
        with transaction.atomic():
            took = Invitation.objects.filter(pk=invitation.pk, revoked_at__isnull=True, expires_at__gt=now).filter(
                Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses"))
            ).update(uses=F("uses") + 1)
            if not took:
                invitation.refresh_from_db()
                raise InvitationGone(invitation_refusal(invitation, now) or "This invitation can no longer be used.")
            # a second request of the same person fails here, which gives the place back
            member = StudyMember.objects.create(study=study, user=user, role=invitation.role, group=invitation.group)
            audit.record(study, user, audit.Action.INVITATION_ACCEPTED, user.get_username(), {
                "invitation": invitation.pk, "role": invitation.role, "group": invitation.group,
            })
    except IntegrityError:
        existing = StudyMember.objects.filter(study=study, user=user).first()
        if existing is None:
            raise
        return _already_member(invitation, existing), False
    invitation.uses += 1
    return member, True


def _already_member(invitation: Invitation, member: StudyMember) -> StudyMember:
    clash = invitation_member_clash(invitation, member)
    if clash:
        raise RoleClash(clash)
    return member


def invitation_revoke(*, invitation: Invitation, actor=None) -> bool:
    """Withdraw a link: nobody else joins through it.  Returns False if it was already withdrawn."""
    now = timezone.now()
    with transaction.atomic():
        if not Invitation.objects.filter(pk=invitation.pk, revoked_at__isnull=True).update(revoked_at=now):
            return False
        invitation.refresh_from_db()
        audit.record(invitation.study, actor, audit.Action.INVITATION_REVOKED, f"invitation {invitation.pk}", {
            "role": invitation.role, "group": invitation.group, "joined": invitation.uses,
        })
    return True


# --- prompts -------------------------------------------------------------------------


def prompts_import(*, study: Study, data: uploads.UploadData, filename: str, actor=None) -> int:
    """Add prompts from an upload; an id that the study already has is an error."""
    rows = uploads.parse_prompts(data, filename, max_bytes=django_settings.EVALSITE_UPLOAD_MAX_BYTES).rows
    existing = set(study.prompts.values_list("external_id", flat=True))
    clashes = [
        uploads.RowError(line=row.line, field="id", message=f"{row.external_id!r} already exists in this study")
        for row in rows
        if row.external_id in existing
    ]
    if clashes:
        raise uploads.UploadError(clashes)
    with transaction.atomic():
        start = study.prompts.count()
        _prompts_write(study, rows, start=start)
        audit.record(study, actor, audit.Action.PROMPTS_ADDED, filename, {"prompts": len(rows), "file": filename})
    return len(rows)


def _prompts_write(study: Study, rows: Sequence, *, start: int) -> None:
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                study=study,
                external_id=row.external_id,
                text=row.text,
                html=markdown.render(row.text),
                reference=row.reference or "",
                tags=list(row.tags),
                image=row.image or "",
                gold_answer=row.gold_answer or "",
                is_gold=bool(row.gold_answer),
                position=start + i,
            )
            for i, row in enumerate(rows)
        ]
    )
    if any(row.tags for row in rows):
        # bulk_create sets primary keys on PostgreSQL and SQLite alike
        PromptTag.objects.bulk_create(
            [PromptTag(prompt=p, study=study, tag=tag) for p, row in zip(prompts, rows) for tag in row.tags],
            ignore_conflicts=True,
        )


# --- candidates and outputs ---------------------------------------------------------


def spec_policy() -> generation_base.SpecPolicy:
    """The operator's candidate-spec policy, from this process's settings.

    The web applies it when a candidate is added; each worker applies its own again before
    it checks or loads anything, so a worker configured more strictly still refuses.
    """
    s = django_settings
    return generation_base.SpecPolicy(
        api_key_envs=tuple(s.EVALSITE_API_KEY_ENVS),
        trust_remote_code=bool(s.EVALSITE_TRUST_REMOTE_CODE),
        model_roots=tuple(str(root) for root in s.EVALSITE_MODEL_ROOTS),
        allow_hub_ids=bool(s.EVALSITE_ALLOW_HUB_IDS),
        base_urls=tuple(s.EVALSITE_BASE_URLS),
        diffusers_device=s.EVALSITE_DIFFUSERS_DEVICE,
    )


def error_scrubber(spec: dict | None = None) -> generation_base.Scrubber:
    """The scrubber for error text of one candidate: its key and this process's credentials."""
    policy = spec_policy()
    key_env = (spec or {}).get("api_key_env")
    key = os.environ.get(key_env) if isinstance(key_env, str) and policy.key_env_allowed(key_env) else None
    return generation_base.Scrubber([key, *generation_base.environment_secrets(policy)])


def candidate_create(*, study: Study, name: str, backend: str, spec: dict, actor=None) -> Candidate:
    """Add a candidate model; its spec is checked now against the operator's policy.

    No model is loaded. A model directory is looked for now when its model root exists on
    this machine (refused if missing); otherwise (a root mounted only on the GPU workers,
    a hub id) the candidate is saved with ``check_state=pending`` and a worker looks
    (``candidate_check_run``); generation waits for that check to pass.
    """
    name = name.strip()
    if not name:
        raise ServiceError("a candidate needs a name")
    if backend not in Candidate.Backend.values:
        raise ServiceError(f"unknown backend {backend!r}; use one of {', '.join(Candidate.Backend.values)}")
    check_state = Candidate.Check.NOT_NEEDED
    if backend != Candidate.Backend.IMPORTED:
        policy = spec_policy()
        try:
            spec = generation_base.validate_spec(backend, spec, policy)
            check_state = generation_base.check_files(backend, spec, policy)
        except generation_base.BackendError as exc:
            raise ServiceError(f"candidate {name!r}: {exc}") from None
    if study.candidates.filter(name=name).exists():
        raise ServiceError(f"this study already has a candidate named {name!r}")
    try:
        with transaction.atomic():
            candidate = Candidate.objects.create(
                study=study, name=name, backend=backend, spec=spec, check_state=check_state,
                checked_at=timezone.now() if check_state == Candidate.Check.OK else None,
            )
            audit.record(study, actor, audit.Action.CANDIDATE_ADDED, name,
                         {"backend": backend, "spec": audit.redact(spec)})
            if check_state == Candidate.Check.PENDING:
                _enqueue_candidate_check(candidate.pk)
            return candidate
    except IntegrityError:
        raise ServiceError(f"this study already has a candidate named {name!r}") from None


def _enqueue_candidate_check(candidate_id: int) -> None:
    from .tasks import check_candidate

    check_candidate.delay_on_commit(candidate_id)


def candidate_check_run(*, candidate_id: int, worker: str = "") -> str:
    """Look, on this worker, for the files a pending candidate names; the body of its task.

    Records ``ok`` or ``failed`` with the reason (scrubbed) under this worker's own policy.
    Only a pending check is written (a conditional UPDATE), so a re-run changes nothing.
    Returns the state recorded, or ``""`` when there was nothing to do.
    """
    candidate = Candidate.objects.filter(pk=candidate_id, check_state=Candidate.Check.PENDING).first()
    if candidate is None:
        return ""
    policy = spec_policy()
    where = f" (checked on worker {worker})" if worker else ""
    try:
        spec = generation_base.validate_spec(candidate.backend, candidate.spec, policy)
        generation_base.check_files(candidate.backend, spec, policy, on_worker=True)
    except generation_base.BackendError as exc:
        state, error = Candidate.Check.FAILED, error_scrubber(candidate.spec)(f"{exc}{where}")
    except Exception as exc:  # an unexpected failure is a failed check, visibly, not a stuck one
        log.error("checking candidate %s failed: %s", candidate_id,
                  error_scrubber(candidate.spec)(traceback.format_exc(), limit=4000))
        state, error = Candidate.Check.FAILED, error_scrubber(candidate.spec)(f"{type(exc).__name__}: {exc}{where}")
    else:
        state, error = Candidate.Check.OK, ""
    Candidate.objects.filter(pk=candidate_id, check_state=Candidate.Check.PENDING).update(
        check_state=state, check_error=error, checked_at=timezone.now()
    )
    return state


def _reopenable(units):
    """Leave out the units that stay closed whatever the overlap: ties by rule and pairs with an
    output the identity guard excluded (see :func:`output_identity_decide`)."""
    excluded = Output.objects.filter(identity=Output.Identity.EXCLUDED)
    return (units.exclude(rule_tie=True).exclude(is_gold=True).exclude(output_a__in=excluded.values("pk"))
            .exclude(output_b__in=excluded.values("pk")))


def _candidate_units(candidate: Candidate):
    return Unit.objects.filter(study_id=candidate.study_id).filter(Q(cand_lo=candidate) | Q(cand_hi=candidate))


def candidate_rename(*, candidate: Candidate, name: str, actor=None) -> Candidate:
    """Give a candidate another name (unique in its study); its outputs and judgments stay.

    Leaderboards and the online-Elo preview name candidates, so the study's version moves
    (every slice is redone under the new name) and the preview is replayed.
    """
    from arena.services import online_elo_reset

    name, old = name.strip(), candidate.name
    if not name:
        raise ServiceError("a candidate needs a name")
    if name == old:
        return candidate
    study = candidate.study
    clash = ServiceError(f"this study already has a candidate named '{name}'")
    if study.candidates.filter(name=name).exists():
        raise clash
    try:
        with transaction.atomic():
            Candidate.objects.filter(pk=candidate.pk).update(name=name)
            Study.objects.filter(pk=study.pk).update(version=F("version") + 1)
            audit.record(study, actor, audit.Action.CANDIDATE_RENAMED, name, {"name": audit.change(old, name)})
    except IntegrityError:
        raise clash from None
    candidate.name = name
    online_elo_reset(study_id=study.pk)
    _request_ratings(study.pk)
    return candidate


def candidate_remove(*, candidate: Candidate, actor=None) -> None:
    """Delete a candidate with its outputs and pairs, as long as no judgment involves it.

    Once votes exist the candidate can only be hidden from new pairs (:func:`candidate_hide`),
    which keeps its ratings.  Its pairs are closed first, so no new lease takes one; then the
    leases on them are locked, so a vote being submitted on one either commits first (and the
    removal is refused) or finds its task gone.  A lease still open on one of its pairs goes
    with it: that annotator is served another pair.
    """
    study, name = candidate.study, candidate.name
    units = _candidate_units(candidate)
    with transaction.atomic():
        units.update(needed=0)
        list(Assignment.objects.select_for_update().filter(unit__in=units).values_list("pk", flat=True))
        judged = Judgment.objects.filter(unit__in=units).count()
        if judged:
            raise ServiceError(
                f"candidate '{name}' cannot be removed: "
                + (f"{judged} judgments already involve it" if judged != 1 else "a judgment already involves it")
                + ". Hide it from new pairs instead; its ratings from those votes stay."
            )
        outputs, pairs = candidate.outputs.count(), units.count()
        candidate.delete()
        Study.objects.filter(pk=study.pk).update(units_total=Unit.objects.filter(study=study, is_gold=False).count())
        audit.record(study, actor, audit.Action.CANDIDATE_REMOVED, name,
                     {"backend": candidate.backend, "outputs": outputs, "pairs": pairs})


def candidate_hide(*, candidate: Candidate, hidden: bool = True, actor=None) -> bool:
    """Hide a candidate from new pairs (or show it again); returns whether anything changed.

    Its open pairs are closed by setting their ``needed`` to 0: the lease statements pick
    units with ``taken < needed``, so they skip these with no change to the vote path (no
    extra join, no extra query), and ``taken`` can never drop below 0 when a lease expires
    or an annotator is excluded.  Judgments and ratings stay; a lease already on screen can
    still be answered.  Showing it again gives its pairs the study's overlap (unless the
    other candidate of a pair is hidden too).
    """
    study = candidate.study
    with transaction.atomic():
        overlap = Study.objects.select_for_update().values_list("overlap", flat=True).get(pk=study.pk)
        if not Candidate.objects.filter(pk=candidate.pk).exclude(hidden=hidden).update(hidden=hidden):
            return False
        units = _candidate_units(candidate)
        if hidden:
            closed = units.filter(taken__lt=F("needed")).count()
            units.update(needed=0)
            audit.record(study, actor, audit.Action.CANDIDATE_HIDDEN, candidate.name, {"open_pairs_closed": closed})
        else:
            others = list(Candidate.objects.filter(study=study, hidden=True).values_list("pk", flat=True))
            opening = _reopenable(units.exclude(cand_lo__in=others).exclude(cand_hi__in=others))
            reopened = opening.filter(taken__lt=overlap).count()
            opening.update(needed=F("extra") + overlap)
            audit.record(study, actor, audit.Action.CANDIDATE_SHOWN, candidate.name, {"pairs_reopened": reopened})
    candidate.hidden = hidden
    return True


def _refuse_unchecked(candidates: Sequence[Candidate]) -> None:
    """Generation waits for every model check; a failed check is queued again, for after a fix."""
    problems = []
    for cand in candidates:
        if cand.check_state == Candidate.Check.PENDING:
            problems.append(f"{cand.name!r} is waiting for a worker on the generation queue to check its model")
        elif cand.check_state == Candidate.Check.FAILED:
            problems.append(f"{cand.name!r} failed its model check: {cand.check_error} (checking again now)")
    if not problems:
        return
    with transaction.atomic():
        for cand in candidates:
            if cand.check_state == Candidate.Check.FAILED and Candidate.objects.filter(
                pk=cand.pk, check_state=Candidate.Check.FAILED
            ).update(check_state=Candidate.Check.PENDING):
                _enqueue_candidate_check(cand.pk)
    raise ServiceError("generation cannot start yet: " + "; ".join(problems))


def outputs_import(*, candidate: Candidate, data: uploads.UploadData, filename: str, actor=None) -> int:
    """Load an imported candidate's outputs; validated whole, written in one transaction.

    Re-importing replaces the text of outputs with the same (prompt, sample index).
    """
    if candidate.backend != Candidate.Backend.IMPORTED:
        raise ServiceError(f"{candidate.name!r} generates its outputs; only imported candidates take uploads")
    study = candidate.study
    prompts = dict(study.prompts.values_list("external_id", "pk"))
    rows = uploads.parse_imported_outputs(data, filename, known_prompt_ids=set(prompts),
                                          max_bytes=django_settings.EVALSITE_UPLOAD_MAX_BYTES).rows
    now = timezone.now()
    fields = ["status", "text", "html", "error", "latency_ms", "cost", "prompt_tokens", "completion_tokens",
              "finished_at", "settings"]
    with transaction.atomic():
        Output.objects.bulk_create(
            [
                Output(study=study, prompt_id=prompts[row.prompt_id], candidate=candidate,
                       sample_index=row.sample_index, status=Output.Status.DONE, text=row.text,
                       html=markdown.render(row.text), error="",
                       latency_ms=row.latency_ms, cost=row.cost, prompt_tokens=row.prompt_tokens,
                       completion_tokens=row.completion_tokens, finished_at=now,
                       settings={"imported_from": filename})
                for row in rows
            ],
            update_conflicts=True, unique_fields=["study", "prompt", "candidate", "sample_index"],
            update_fields=fields, batch_size=2000,
        )
        # a re-import can change texts already judged (and so length bins): recount in full
        Study.objects.filter(pk=study.pk).update(version=F("version") + 1)
        # replaced texts are checked again by the identity guard (units_build, below); decisions stay
        Output.objects.filter(study=study, candidate=candidate, identity__in=[
            Output.Identity.CLEAN, Output.Identity.FLAGGED]).update(identity=Output.Identity.UNCHECKED)
        audit.record(study, actor, audit.Action.OUTPUTS_IMPORTED, candidate.name,
                     {"outputs": len(rows), "file": filename})
    units_build(study=study)
    _request_ratings(study.pk)
    return len(rows)


def _output_seed(study: Study, position: int, sample_index: int) -> int:
    """The seed of a prompt's sample: the study's seed plus the sample's place in the study
    (prompt position × samples per prompt + sample index), below 2**31.

    Every (prompt, sample) starts from its own noise, so the compositions of one prompt's
    sample k are not correlated with those of every other prompt's; every candidate gets the
    same seed for the same (prompt, sample), a fair comparison.  Text generation uses the same
    seeds: sampling (temperature > 0) is then independent across prompts; greedy decoding
    ignores them.  Recorded on the output; a rerun or a retry uses the recorded seed.
    """
    base = int(study.generation_settings.get("seed", 0))
    place = position * study.samples_per_prompt + sample_index
    return (base + place) % (generation_base.GenerationSettings.MAX_SEED + 1)


def _study_seeds(study: Study) -> dict[tuple[int, int], int]:
    """The seed already recorded for each (prompt, sample) of the study, so a candidate added
    later gets the seeds the others were made with (even if the study's seed, or how seeds are
    derived, changed since)."""
    seeds: dict[tuple[int, int], int] = {}
    for prompt_id, sample, seed in (Output.objects.filter(study=study, seed__isnull=False).order_by()
                                    .values_list("prompt_id", "sample_index", "seed").distinct()):
        seeds[(prompt_id, sample)] = min(seed, seeds.get((prompt_id, sample), seed))
    return seeds


def generation_start(*, study: Study, candidates: Sequence[Candidate] | None = None, actor=None) -> int:
    """Create the pending outputs of every generating candidate and enqueue their batches.

    Safe to press twice, or from two tabs at once: outputs are unique per (prompt,
    candidate, sample), and an output goes from pending to queued by a conditional
    UPDATE before its batch is enqueued, so no output is queued twice.  Returns the
    number of outputs queued.
    """
    candidates = list(candidates if candidates is not None else study.candidates.all())
    generating = [c for c in candidates if c.backend != Candidate.Backend.IMPORTED]
    prompts = list(study.prompts.order_by("position").values_list("pk", "position"))
    if not prompts:
        raise ServiceError("the study has no prompts")
    # check states as they are now (a worker may have just recorded one), not as passed in
    _refuse_unchecked(list(Candidate.objects.filter(pk__in=[c.pk for c in generating]).order_by("name")))
    recorded = _study_seeds(study) if generating else {}
    Output.objects.bulk_create(
        [
            Output(
                study=study,
                prompt_id=pid,
                candidate=cand,
                sample_index=s,
                seed=recorded.get((pid, s), _output_seed(study, position, s)),
                settings=study.generation_settings,
            )
            for cand in generating
            for pid, position in prompts
            for s in range(study.samples_per_prompt)
        ],
        ignore_conflicts=True,
    )
    _release_stale_claims(study)
    with transaction.atomic():  # batches are enqueued on commit, with the audit entry
        queued = {cand.name: _queue_pending(cand) for cand in generating}
        total = sum(queued.values())
        if total:
            audit.record(study, actor, audit.Action.GENERATION_STARTED, study.name,
                         {"queued": total, "candidates": {name: n for name, n in queued.items() if n}})
    return total


def _queue_pending(candidate: Candidate) -> int:
    """Mark a candidate's pending outputs queued (one conditional UPDATE) and enqueue them in batches.

    The UPDATE stamps a fresh queue token, so only the outputs this call moved are
    enqueued, even when another request queues the same candidate at the same moment.
    """
    token = f"queued:{secrets.token_hex(8)}"
    moved = Output.objects.filter(candidate=candidate, status=Output.Status.PENDING, claim="").update(
        status=Output.Status.QUEUED, claim=token, claimed_at=timezone.now(), claimed_by=""
    )
    if not moved:
        return 0
    pending = list(
        Output.objects.filter(candidate=candidate, status=Output.Status.QUEUED, claim=token)
        .order_by("prompt__position", "sample_index")
        .values_list("pk", flat=True)
    )
    batch = int(candidate.spec.get("batch_size") or django_settings.EVALSITE_GENERATION_BATCH)
    for i in range(0, len(pending), batch):
        _enqueue_generation(candidate.pk, pending[i : i + batch])
    return len(pending)


def _release_stale_claims(study: Study) -> int:
    """Free a study's outputs for "Start generation" to queue again: those whose holder is gone
    (see ``_stale_held``), and queued ones whose message seems lost (queued for longer than
    ``EVALSITE_QUEUED_STALE_SECONDS``)."""
    now = timezone.now()
    held = len(_release_held([qs.filter(study=study) for qs in _stale_held(now)], now))
    queued = Output.objects.filter(
        study=study, status=Output.Status.QUEUED,
        claimed_at__lt=now - timedelta(seconds=django_settings.EVALSITE_QUEUED_STALE_SECONDS),
    ).update(status=Output.Status.PENDING, claim="", claimed_by="")
    return held + queued


# How far apart two machines' clocks may be, on top of the time limit, before a claim is stale.
_CLOCK_MARGIN = timedelta(seconds=60)


def _stale_held(now: datetime) -> tuple:
    """Outputs that a worker holds but nobody will generate: (running, queued) querysets.

    A worker holds an output from receiving its batch's message (queued, ``claimed_by`` set)
    through generating it (running).  Stale when the holder is gone (stopped, replaced under
    its node name, silent for ``EVALSITE_WORKER_DEAD_SECONDS``), or was never recorded and
    took it longer ago than that (its row was cleaned up); a running output also when claimed
    longer ago than the hard task time limit, past which its task was killed whoever ran it.
    Two queries, each served by a small partial index.
    """
    dead_after = timedelta(seconds=django_settings.EVALSITE_WORKER_DEAD_SECONDS)
    limit = timedelta(seconds=django_settings.EVALSITE_GENERATION_TIME_LIMIT) + _CLOCK_MARGIN
    holder_gone = Q(claimed_by__in=selectors.workers_gone(now).values("worker_id")) | (
        ~Q(claimed_by__in=WorkerHeartbeat.objects.values("worker_id")) & Q(claimed_at__lt=now - dead_after)
    )
    running = Output.objects.filter(status=Output.Status.RUNNING).filter(
        Q(claimed_at__lt=now - limit) | (~Q(claimed_by="") & holder_gone)
    )
    queued = Output.objects.filter(status=Output.Status.QUEUED).exclude(claimed_by="").filter(holder_gone)
    return running, queued


def _release_held(stale: Sequence, now: datetime) -> set[int]:
    """Put stale held outputs back to pending; returns the ids of their candidates.

    Conditional UPDATEs over the rows read, so an output that its task finished or claimed in
    the meantime is left alone.  A running output already claimed
    ``EVALSITE_GENERATION_MAX_ATTEMPTS`` times fails instead: a batch that kills its worker
    must not loop forever.
    """
    max_attempts = django_settings.EVALSITE_GENERATION_MAX_ATTEMPTS
    candidate_ids: set[int] = set()
    spent_total = released_total = 0
    for qs in stale:
        rows = list(qs.values_list("pk", "candidate_id", "status", "attempts"))
        spent = {pk for pk, _, status, n in rows if status == Output.Status.RUNNING and n >= max_attempts}
        again = {pk: cid for pk, cid, *_ in rows if pk not in spent}
        if spent:
            spent_total += qs.filter(pk__in=spent).update(
                status=Output.Status.FAILED, claim="", claimed_by="", finished_at=now, error=_gave_up(max_attempts)
            )
        if again:
            released = qs.filter(pk__in=again).update(status=Output.Status.PENDING, claim="", claimed_by="")
            if released:
                released_total += released
                candidate_ids |= set(again.values())
    if released_total or spent_total:
        log.warning("released %d outputs held by stopped workers or past the time limit "
                    "(%d failed after %d attempts)", released_total, spent_total, max_attempts)
    return candidate_ids


def generation_release_stale(*, now: datetime | None = None) -> int:
    """Queue again the outputs whose worker died (the workers' own sweep; see ``annotation.heartbeat``).

    Each live worker calls this when it starts and at every heartbeat.  Safe from several
    workers at once: outputs are released by conditional UPDATE and queued by ``_queue_pending``,
    which moves each pending output to queued once.  Returns the number of outputs queued.
    """
    now = now or timezone.now()
    candidate_ids = _release_held(_stale_held(now), now)
    return sum(_queue_pending(c) for c in Candidate.objects.filter(pk__in=candidate_ids).order_by("pk"))


def generation_received(*, candidate_id: int, output_ids: Sequence[int], worker: str) -> int:
    """Note that a worker has received a batch's message, before a pool process claims it.

    A worker killed in between would otherwise leave the batch queued with its message gone
    (filesystem broker) or hidden until the visibility timeout (Redis).
    """
    if not worker:
        return 0
    return Output.objects.filter(pk__in=output_ids, candidate_id=candidate_id, status=Output.Status.QUEUED).update(
        claimed_by=worker
    )


def worker_register(*, worker_id: str, nodename: str, pid: int) -> int:
    """Record a worker's start.  Earlier starts under the same node name are gone (Celery node
    names are unique among live workers), so their outputs are freed at once rather than after
    ``EVALSITE_WORKER_DEAD_SECONDS``; returns how many were replaced."""
    now = timezone.now()
    replaced = WorkerHeartbeat.objects.filter(nodename=nodename, stopped_at__isnull=True).exclude(
        worker_id=worker_id).update(stopped_at=now)
    if replaced:
        log.warning("worker %s replaces %d earlier start(s) under that node name; their outputs are "
                    "queued again (give each worker a unique --hostname)", nodename, replaced)
    _heartbeat_write(worker_id=worker_id, nodename=nodename, pid=pid, now=now)
    return replaced


def _heartbeat_write(*, worker_id: str, nodename: str, pid: int, now: datetime) -> None:
    """The worker's row says it is alive now (created if missing, revived if taken for gone)."""
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id, defaults={"beat_at": now, "stopped_at": None},
        create_defaults={"nodename": nodename, "pid": pid, "started_at": now, "beat_at": now},
    )


def worker_beat(*, worker_id: str, nodename: str, pid: int) -> None:
    """Say that a worker is alive.  Re-creates its row if it was cleaned up while the worker
    could not reach the database, and revives it if it was taken for gone."""
    now = timezone.now()
    revived = WorkerHeartbeat.objects.filter(worker_id=worker_id, stopped_at__isnull=False).exists()
    if revived:
        log.warning("worker %s (%s) was taken for gone (silent too long, or another start used its node "
                    "name); its outputs were queued again", nodename, worker_id)
    _heartbeat_write(worker_id=worker_id, nodename=nodename, pid=pid, now=now)


def worker_stop(*, worker_id: str) -> None:
    """Record a clean stop: whatever the worker still holds is freed by the next sweep."""
    WorkerHeartbeat.objects.filter(worker_id=worker_id).update(stopped_at=timezone.now())


def workers_forget(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete the rows of workers gone for long and holding nothing."""
    cutoff = timezone.now() - older_than
    held = Output.objects.filter(status=Output.Status.RUNNING).values("claimed_by")
    return WorkerHeartbeat.objects.filter(beat_at__lt=cutoff).exclude(worker_id__in=held).delete()[0]


def _enqueue_generation(candidate_id: int, output_ids: list[int]) -> None:
    from .tasks import generate_outputs

    generate_outputs.delay_on_commit(candidate_id, output_ids)


def output_retry(*, output: Output, actor=None) -> None:
    """Put a failed output, or one stuck running (see ``selectors.stuck_q``), back in the queue."""
    with transaction.atomic():
        updated = Output.objects.filter(pk=output.pk).filter(
            Q(status=Output.Status.FAILED) | selectors.stuck_q(timezone.now())
        ).update(status=Output.Status.PENDING, error="", claim="", claimed_by="", attempts=0)
        if not updated:
            raise ServiceError(
                "only a failed output can be retried, or one stuck running longer than the task time limit "
                f"(EVALSITE_GENERATION_TIME_LIMIT={django_settings.EVALSITE_GENERATION_TIME_LIMIT} s) "
                "or held by a worker that stopped"
            )
        _queue_pending(output.candidate)
        audit.record(output.study, actor, audit.Action.OUTPUTS_RETRIED, str(output),
                     {"outputs": 1, "candidates": [output.candidate.name]})


def outputs_retry_failed(*, study: Study, actor=None) -> int:
    """Queue every failed output again, in batches per candidate (not one task per output)."""
    with transaction.atomic():
        failed = Output.objects.filter(study=study, status=Output.Status.FAILED)
        candidate_ids = set(failed.values_list("candidate_id", flat=True).distinct())
        retried = failed.update(status=Output.Status.PENDING, error="", claim="", claimed_by="", attempts=0)
        candidates = list(Candidate.objects.filter(pk__in=candidate_ids).order_by("name"))
        queued = sum(_queue_pending(c) for c in candidates)
        if retried:
            audit.record(study, actor, audit.Action.OUTPUTS_RETRIED, study.name,
                         {"outputs": retried, "candidates": [c.name for c in candidates]})
    return queued


def _gave_up(attempts: int) -> str:
    return (f"gave up after {attempts} attempts: the worker generating this output stopped each time "
            "(killed, out of memory, or past the task time limit). Retry once the cause is fixed; "
            f"EVALSITE_GENERATION_MAX_ATTEMPTS={attempts} sets how many tries.")


def generation_claim(*, output_ids: Sequence[int], claim: str, worker: str = "",
                     candidate_id: int | None = None) -> list[int]:
    """Claim outputs for one task run with a conditional UPDATE; returns the claimed ids.

    A redelivered task (same id after a worker died) reclaims its own running outputs;
    outputs that are done, or held by another run, are left alone.  ``worker`` names the
    worker process (``annotation.heartbeat``) so its claims are freed if it dies; an output
    already claimed ``EVALSITE_GENERATION_MAX_ATTEMPTS`` times by this task fails instead (a
    batch that kills its worker is redelivered again and again otherwise).
    """
    now = timezone.now()
    max_attempts = django_settings.EVALSITE_GENERATION_MAX_ATTEMPTS
    mine = Output.objects.filter(pk__in=output_ids)
    if candidate_id is not None:  # a stale message never claims another candidate's outputs
        mine = mine.filter(candidate_id=candidate_id)
    with transaction.atomic():
        mine.filter(status=Output.Status.RUNNING, claim=claim, attempts__gte=max_attempts).update(
            status=Output.Status.FAILED, claim="", claimed_by="", finished_at=now, error=_gave_up(max_attempts)
        )
        mine.filter(
            Q(status__in=[Output.Status.QUEUED, Output.Status.PENDING]) | Q(status=Output.Status.RUNNING, claim=claim)
        ).update(
            status=Output.Status.RUNNING, claim=claim, claimed_by=worker, claimed_at=now,
            attempts=F("attempts") + 1,
        )
    return list(
        Output.objects.filter(pk__in=output_ids, status=Output.Status.RUNNING, claim=claim)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def generation_record(*, output_id: int, claim: str, result) -> bool:
    """Write one generation result onto the output this run claimed.

    An image result's file and its thumbnail (made here, once) are saved through Django's
    storage under opaque names, then the row is updated by the same conditional UPDATE as a
    text; if the claim was lost meanwhile, the files just written are deleted again.
    """
    fields = {
        "latency_ms": result.latency_ms,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost": result.cost,
        "finished_at": timezone.now(),
    }
    if getattr(result, "settings", None) is not None:
        fields["settings"] = result.settings
    held = Output.objects.filter(pk=output_id, claim=claim, status=Output.Status.RUNNING)
    written: list = []
    if result.error:
        fields.update(status=Output.Status.FAILED, error=result.error, claim="")
    elif getattr(result, "image", None) is not None:
        study_id = held.values_list("study_id", flat=True).first()
        if study_id is None:  # the claim is gone: write nothing
            return False
        try:
            data, suffix, _size = generation_images.normalise(result.image)
            thumb = generation_images.thumbnail(data)
        except generation_images.ImageError as exc:
            fields.update(status=Output.Status.FAILED, error=f"the backend's image: {exc}", claim="")
        else:
            stub = Output(pk=output_id, study_id=study_id)
            try:
                stub.image.save(f"image{suffix}", ContentFile(data), save=False)
                written.append(stub.image)
                stub.thumbnail.save("thumbnail.png", ContentFile(thumb), save=False)
                written.append(stub.thumbnail)
            except Exception:
                for file in written:
                    file.delete(save=False)
                raise
            fields.update(status=Output.Status.DONE, text="", html="", error="",
                          image=stub.image.name, thumbnail=stub.thumbnail.name)
    else:
        text = result.text or ""
        # rendered here, in the worker, once: the annotate page prints the stored HTML
        fields.update(status=Output.Status.DONE, text=text, html=markdown.render(text), error="")
    updated = False
    try:
        updated = bool(held.update(**fields))
    finally:
        if not updated:  # a lost claim (or a failed UPDATE) leaves no file behind
            for file in written:
                file.delete(save=False)
    return updated


def generation_fail(*, output_ids: Sequence[int], claim: str, error: str) -> int:
    return Output.objects.filter(
        pk__in=output_ids, claim=claim, status=Output.Status.RUNNING
    ).update(status=Output.Status.FAILED, error=error, claim="", finished_at=timezone.now())


def generation_run(*, candidate_id: int, output_ids: Sequence[int], claim: str, worker: str = "") -> int:
    """Generate the claimed outputs of one batch; the body of the Celery task."""
    candidate = Candidate.objects.select_related("study").filter(pk=candidate_id).first()
    if candidate is None:
        return 0
    claimed = generation_claim(output_ids=output_ids, claim=claim, worker=worker, candidate_id=candidate_id)
    if not claimed:
        return 0
    outputs = list(Output.objects.filter(pk__in=claimed).select_related("prompt").order_by("pk"))
    # Every error text below came from an endpoint or a backend: scrubbed before it is
    # stored or logged. The spec is checked again under this worker's own policy.
    scrub = error_scrubber(candidate.spec)
    try:
        settings_obj = generation_base.GenerationSettings.from_dict(candidate.study.generation_settings)
        backend = generation_base.get_backend(candidate.backend, candidate.spec, spec_policy())
        requests = [
            generation_base.GenerationRequest(key=o.pk, prompt=o.prompt.text, seed=o.seed or 0)
            for o in outputs
        ]
        results = backend.generate(requests, settings_obj)
    except Exception as exc:  # a broken spec or model fails the batch, visibly
        log.error("generation failed for candidate %s:\n%s", candidate_id, scrub(traceback.format_exc(), limit=4000))
        generation_fail(output_ids=claimed, claim=claim, error=scrub(f"{type(exc).__name__}: {exc}"))
        return 0
    results = [dataclasses.replace(r, error=scrub(r.error)) if r.error else r for r in results]
    written = sum(
        generation_record(output_id=r.key, claim=claim, result=r) for r in results
    )
    units_build(study=candidate.study, prompt_ids={o.prompt_id for o in outputs})
    _request_ratings(candidate.study_id)  # the summary's latency, tokens and cost columns
    return written


# --- rating units, assignments, judgments -------------------------------------------


def _pair_texts(new: Sequence) -> tuple[dict[int, str], set[int]]:
    """The first characters of the outputs of new pairs (what the near-identical rule compares,
    bounded by EVALSITE_NEAR_IDENTICAL_CHARS; image outputs are left out), and those the identity
    guard excluded."""
    ids = {o for _, (oa, _ca), (ob, _cb) in new for o in (oa, ob)}
    limit = django_settings.EVALSITE_NEAR_IDENTICAL_CHARS * 2  # room for whitespace that normalising drops
    texts, excluded = {}, set()
    ids_list = sorted(ids)
    for i in range(0, len(ids_list), 2000):
        for pk, text, identity_state, image in Output.objects.filter(pk__in=ids_list[i:i + 2000]).values_list(
                "pk", Substr("text", 1, limit), "identity", "image"):
            if not image:  # images (empty texts) are never a tie by the text rule
                texts[pk] = text or ""
            if identity_state == Output.Identity.EXCLUDED:
                excluded.add(pk)
    return texts, excluded


def units_build(*, study: Study, prompt_ids: Iterable[int] | None = None) -> int:
    """Create a blind pairwise unit for every pair of finished outputs of a prompt.

    Pairs use the same sample index; idempotent (unique pair constraint).  Image outputs of a
    study with several samples per prompt pair once per prompt, on sample 0: the task shows
    each side's grid of all its samples, so the pair is built only once every sample of the
    prompt is done for both candidates (samples split across generation batches, or one that
    failed and waits for a retry, hold it back: an annotator never sees 1 image against 3).
    A Likert task still rates every image as soon as it is done.  ``prompt_ids``
    limits the work to those prompts (a generation batch touches only its own), so a
    large study is not rescanned after every batch.  Each new unit gets its candidate
    pair, a random serving key and its position among its pair's units (whose parity
    balances left and right).  Returns the number of units the study has afterwards.
    """
    done = Output.objects.filter(study=study, status=Output.Status.DONE)
    existing_units = Unit.objects.filter(study=study)
    if prompt_ids is not None:
        prompt_ids = list(prompt_ids)
    outputs_identity_scan(study=study, prompt_ids=prompt_ids, unchecked_only=True)
    if prompt_ids is not None:
        done = done.filter(prompt_id__in=prompt_ids)
        existing_units = existing_units.filter(prompt_id__in=prompt_ids)
    rows = done.values_list("pk", "prompt_id", "sample_index", "candidate_id", "image").order_by(
        "prompt_id", "sample_index", "pk")
    grids = study.samples_per_prompt > 1
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    grid_done: dict[tuple[int, int], set[int]] = {}  # (prompt, candidate) -> its done image samples
    grid_first: dict[tuple[int, int], int] = {}  # (prompt, candidate) -> its sample 0
    for pk, prompt_id, sample, cand, image in rows:
        if image and grids:
            grid_done.setdefault((prompt_id, cand), set()).add(sample)
            if sample == 0:
                grid_first[(prompt_id, cand)] = pk
            continue
        groups.setdefault((prompt_id, sample), []).append((pk, cand))
    # image pairs show the two grids of all samples: one pair per prompt, on sample 0, once the
    # candidate's whole grid is done
    every_sample = set(range(study.samples_per_prompt))
    for (prompt_id, cand), samples in grid_done.items():
        if (prompt_id, cand) in grid_first and samples >= every_sample:
            groups.setdefault((prompt_id, 0), []).append((grid_first[(prompt_id, cand)], cand))
    existing = set(existing_units.values_list("output_a_id", "output_b_id"))
    new = [
        (prompt_id, a, b)
        for (prompt_id, _), outs in groups.items()
        for a, b in combinations(sorted(outs), 2)
        if (a[0], b[0]) not in existing and a[1] != b[1]
    ]
    if study.task_kinds == "likert":  # single outputs rated on criteria, no pairs
        new = []
    if new:
        seq = dict(
            ((lo, hi), n) for lo, hi, n in Unit.objects.filter(study=study)
            .values("cand_lo", "cand_hi").annotate(n=Count("id")).values_list("cand_lo", "cand_hi", "n")
        )
        hidden = set(Candidate.objects.filter(study=study, hidden=True).values_list("pk", flat=True))
        texts, identity_excluded = _pair_texts(new)
        units = []
        for prompt_id, (oa, ca), (ob, cb) in new:
            lo, hi = min(ca, cb), max(ca, cb)
            n = seq.get((lo, hi), 0)
            seq[(lo, hi)] = n + 1
            # identical or near-identical outputs are a tie by rule, never served
            rule_tie = oa in texts and ob in texts and neardup.similarity_at_least(
                texts[oa], texts[ob], django_settings.EVALSITE_NEAR_IDENTICAL,
                django_settings.EVALSITE_NEAR_IDENTICAL_CHARS)
            # a hidden candidate's pairs, an output excluded by the identity guard and a rule tie stay closed
            closed = lo in hidden or hi in hidden or oa in identity_excluded or ob in identity_excluded or rule_tie
            units.append(Unit(study=study, prompt_id=prompt_id, output_a_id=oa, output_b_id=ob,
                              needed=0 if closed else study.overlap, rule_tie=rule_tie,
                              cand_lo_id=lo, cand_hi_id=hi, a_is_lo=ca == lo, pair_seq=n,
                              shuffle=random.randrange(2**31)))
        Unit.objects.bulk_create(units, ignore_conflicts=True, batch_size=2000)
    if study.task_kinds in ("likert", "both"):
        likert_units_build(study=study, prompt_ids=prompt_ids)
    total = Unit.objects.filter(study=study, is_gold=False).count()  # checks are not tasks to finish
    Study.objects.filter(pk=study.pk).update(units_total=total)
    study.units_total = total
    return total


def likert_units_build(*, study: Study, prompt_ids: Iterable[int] | None = None) -> int:
    """Create a Likert unit (one output, rated on the study's criteria) for every finished output.

    Idempotent (one Likert unit per output, a unique constraint); the same ``needed`` =
    overlap, ``taken`` and ``shuffle`` as pairs, so the lease serves both kinds from one
    index, interleaved by their random keys.  Returns the number of units created.
    """
    done = Output.objects.filter(study=study, status=Output.Status.DONE).exclude(identity=Output.Identity.EXCLUDED)
    if prompt_ids is not None:
        done = done.filter(prompt_id__in=list(prompt_ids))
    # an attention check shows an output under another prompt: that output still needs its own unit
    have = Unit.objects.filter(study=study, kind=Unit.Kind.LIKERT).exclude(is_gold=True, expected__kind="attention")
    if prompt_ids is not None:
        have = have.filter(prompt_id__in=list(prompt_ids))
    existing = set(have.values_list("output_a_id", flat=True))
    hidden = set(Candidate.objects.filter(study=study, hidden=True).values_list("pk", flat=True))
    units = [
        Unit(study=study, kind=Unit.Kind.LIKERT, prompt_id=prompt_id, output_a_id=pk, output_b_id=None,
             cand_lo_id=cand, cand_hi_id=None, a_is_lo=True, needed=0 if cand in hidden else study.overlap,
             shuffle=random.randrange(2**31))
        for pk, prompt_id, cand in done.values_list("pk", "prompt_id", "candidate_id").order_by("pk")
        if pk not in existing
    ]
    Unit.objects.bulk_create(units, ignore_conflicts=True, batch_size=2000)
    return len(units)


def _lease_seconds() -> int:
    return django_settings.EVALSITE_LEASE_MINUTES * 60


def leases_release_expired(*, study_id: int, now: datetime | None = None) -> int:
    """Give back the places of expired, unsubmitted leases (their annotators walked away).

    Rows another transaction holds (a submit in flight) are skipped; each released
    lease frees exactly one place on its unit.  Returns how many were released.
    """
    now = now or timezone.now()
    with transaction.atomic():
        expired = list(
            Assignment.objects.select_for_update(skip_locked=True)
            .filter(study_id=study_id, submitted_at__isnull=True, released=False, expires_at__lte=now)
            .values_list("pk", "unit_id")[:10_000]
        )
        if not expired:
            return 0
        Assignment.objects.filter(pk__in=[pk for pk, _ in expired]).update(released=True)
        # a unit may lose several leases at once: one UPDATE per number lost
        by_count: dict[int, list[int]] = {}
        for unit_id, lost in Counter(unit_id for _, unit_id in expired).items():
            by_count.setdefault(lost, []).append(unit_id)
        for lost, unit_ids in by_count.items():
            Unit.objects.filter(pk__in=unit_ids).update(taken=F("taken") - lost)
    return len(expired)


def _sweep_if_due(study: Study, now: datetime) -> None:
    """Release expired leases at most once a minute per study; a conditional UPDATE picks who sweeps."""
    if study.lease_sweep_at is not None and study.lease_sweep_at > now:
        return
    nxt = now + timedelta(seconds=min(60, _lease_seconds()))
    won = Study.objects.filter(pk=study.pk).filter(
        Q(lease_sweep_at__isnull=True) | Q(lease_sweep_at__lte=now)
    ).update(lease_sweep_at=nxt)
    study.lease_sweep_at = nxt
    if won:
        leases_release_expired(study_id=study.pk, now=now)


def lease_held(*, study: Study, annotator, slot: int = 0) -> Assignment | None:
    """The annotator's open lease in this study in ``slot`` (0: the task on screen, 1: the next
    task, fetched ahead), with its texts (at most one exists per slot)."""
    return (
        Assignment.objects.select_related("unit__prompt", "unit__output_a", "unit__output_b")
        .filter(study=study, annotator=annotator, submitted_at__isnull=True, released=False, slot=slot)
        .first()
    )


def assignment_next(*, study: Study, annotator, now: datetime | None = None,
                    check_held: bool = True, promote: bool = True) -> Assignment | None:
    """Lease the next unit for an annotator, or return the lease they already hold.

    The cost does not depend on the study's size: one scan of the open-units index
    (fewest places taken first, in a random order among equals) that skips units the
    annotator already holds or judged (an index probe on (unit, annotator)) and units
    another transaction is leasing (``SKIP LOCKED``); then a conditional
    ``UPDATE ... taken = taken + 1 WHERE taken < needed`` whose row count is the
    decision, and the lease row.  When nothing was found it releases expired leases
    and looks once more, waiting for locked units instead of skipping them, before
    saying there is nothing left.  ``check_held=False`` skips the look-up of a held
    lease (the caller just closed it); the database's one-open-lease constraint
    still holds, and a clash returns the lease held.

    With no task on screen, the task fetched ahead (:func:`assignment_ahead`) comes next: it
    is moved to the screen's slot and served from now (``promote``; the REST API, which never
    fetches ahead, passes False and saves that statement).
    """
    now = now or timezone.now()
    if check_held:
        held = lease_held(study=study, annotator=annotator)
        if held is not None:
            return _renew(held, now)
    if promote:
        promoted = _promote_ahead(study, annotator, now)
        if promoted is not None:
            return promoted
    return _lease_new(study, annotator, now, slot=0)


def assignment_ahead(*, study: Study, annotator, now: datetime | None = None,
                     check_held: bool = True) -> Assignment | None:
    """The annotator's next task, leased ahead of the one on screen (slot 1), or None.

    The page holds it hidden and shows it the moment a vote is cast, while the vote travels;
    the vote's answer brings the task after it.  It is an ordinary lease (it holds a place,
    is never the unit on screen, expires and is swept like any), taken at twice the lease
    time, because it waits for the task before it; its time on task starts when it is shown
    (:func:`_promote_ahead`).
    """
    now = now or timezone.now()
    if check_held:  # False: the caller just moved the task ahead to the screen (``Assignment.promoted``)
        held = lease_held(study=study, annotator=annotator, slot=AHEAD)
        if held is not None:
            return held
    return _lease_new(study, annotator, now, slot=AHEAD)


AHEAD = 1  # the slot of the task fetched ahead (0: the task on screen)


def _lease_new(study: Study, annotator, now: datetime, *, slot: int) -> Assignment | None:
    """Lease a unit the annotator has not met, into ``slot``: a check at the study's rate, else
    the next open unit (see :func:`assignment_next`)."""
    _sweep_if_due(study, now)
    if study.adjudications_open:  # a field of the row already read: no query for studies without adjudication
        try:
            reserved = _lease_reserved(study, annotator, now, slot=slot)
        except IntegrityError:  # another request of this annotator leased first
            reserved = lease_held(study=study, annotator=annotator, slot=slot)
        if reserved is not None:
            return reserved
    if study.check_rate and random.random() * 100 < study.check_rate:
        try:
            check = _lease_check(study, annotator, now, slot=slot)
        except IntegrityError:  # another request of this annotator leased first
            check = lease_held(study=study, annotator=annotator, slot=slot)
        if check is not None:
            return check
    for attempt in range(2):
        for pair in _adaptive_pairs(study) if study.adaptive_sampling else [None]:
            try:
                assignment = _lease_one(study, annotator, now, pair=pair, skip_locked=attempt == 0, slot=slot)
            except IntegrityError:  # another request of this annotator leased first
                held = lease_held(study=study, annotator=annotator, slot=slot)
                if held is not None:
                    return held
                continue
            if assignment is not None:
                return assignment
        if attempt == 0:
            leases_release_expired(study_id=study.pk, now=now)
    # Nothing left to lease; a concurrent request of this annotator may have leased the last pair.
    return lease_held(study=study, annotator=annotator, slot=slot)


def _promote_ahead(study: Study, annotator, now: datetime) -> Assignment | None:
    """Move the task fetched ahead to the screen's slot, served from now; None when there is none.

    One conditional UPDATE (its row count decides against a sweep or another request); its
    served and expiry times restart, so time on task counts from the moment it is shown.  On
    PostgreSQL the texts come back in the same statement.  A transaction of its own only inside
    another one (a savepoint, so a clash leaves the outer one usable): alone it is one statement.
    """
    expires = now + timedelta(seconds=_lease_seconds())
    stamps = [connection.ops.adapt_datetimefield_value(now), connection.ops.adapt_datetimefield_value(expires)]
    guard = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with guard, connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute(_PROMOTE_CTE_SQL, [*stamps, study.pk, annotator.pk])
                row = cur.fetchone()
            else:
                cur.execute(_PROMOTE_SQL, [*stamps, study.pk, annotator.pk])
                row = cur.fetchone()
                if row is not None:
                    cur.execute(_PROMOTED_SQL.format(promoted=_ASSIGNMENT), [row[0]])
                    row = cur.fetchone()
    except IntegrityError:  # a request of theirs put a task on screen meanwhile: that one stands
        return lease_held(study=study, annotator=annotator)
    if row is None:
        return None
    assignment_id, token, left_is_a, *unit_row = row
    promoted = _leased(study, annotator, tuple(unit_row), assignment_id=assignment_id, token=token,
                       left_is_a=bool(left_is_a), now=now, expires=expires, counted=True)
    promoted.promoted = True  # the slot ahead is free now: no need to look for a lease there
    return promoted


def _renew(held: Assignment, now: datetime) -> Assignment:
    """An annotator back on the lease they hold gets it for another full period."""
    if held.expires_at - now < timedelta(seconds=_lease_seconds() / 2):
        held.expires_at = now + timedelta(seconds=_lease_seconds())
        Assignment.objects.filter(pk=held.pk, submitted_at__isnull=True).update(expires_at=held.expires_at)
    return held


# The vote path's statements, written once in SQL that PostgreSQL and SQLite both run:
# building and compiling the equivalent ORM queries cost more than running them.
# The (unit, annotator) probe lets through only a lease that expired unsubmitted (released,
# never submitted), which is taken over in place; a skipped task (released and closed) and
# a judged one are never served to the same annotator again.
_UNIT, _ASSIGNMENT, _JUDGMENT, _MEMBER, _PROMPT, _OUTPUT = (
    m._meta.db_table for m in (Unit, Assignment, Judgment, StudyMember, Prompt, Output)
)
# A unit with its texts, and whether this annotator may be given it (see above).
_PICK_FROM = f"""
SELECT u.id, u.taken, u.pair_seq, u.a_is_lo, u.prompt_id, u.output_a_id, u.output_b_id, p.text, oa.text, ob.text,
       oa.candidate_id, ob.candidate_id, u.kind, p.html, oa.html, ob.html
FROM {_UNIT} u
JOIN {_PROMPT} p ON p.id = u.prompt_id
JOIN {_OUTPUT} oa ON oa.id = u.output_a_id
LEFT JOIN {_OUTPUT} ob ON ob.id = u.output_b_id"""
_NOT_MET = f"""NOT EXISTS (SELECT 1 FROM {_ASSIGNMENT} a WHERE a.unit_id = u.id AND a.annotator_id = %s
                  AND NOT (a.released AND a.submitted_at IS NULL))"""
_PICK_SQL = f"""{_PICK_FROM}
WHERE u.study_id = %s AND u.taken < u.needed {{pair}}
  AND {_NOT_MET}
ORDER BY u.taken, u.shuffle
LIMIT 1 {{lock}}"""
_TAKE_SQL = f"UPDATE {_UNIT} SET taken = taken + 1 WHERE id = %s AND taken < needed"
_LEASE_SQL = f"""
INSERT INTO {_ASSIGNMENT} (study_id, unit_id, annotator_id, token, left_is_a, leased_at, expires_at, released, slot)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (unit_id, annotator_id) DO UPDATE SET token = excluded.token, left_is_a = excluded.left_is_a,
  leased_at = excluded.leased_at, expires_at = excluded.expires_at, released = excluded.released, slot = excluded.slot
  WHERE {_ASSIGNMENT}.released AND {_ASSIGNMENT}.submitted_at IS NULL
RETURNING id"""
_CLOSE_SQL = f"UPDATE {_ASSIGNMENT} SET submitted_at = %s WHERE id = %s AND submitted_at IS NULL AND NOT released"
_JUDGMENT_SQL = f"""
INSERT INTO {_JUDGMENT} (assignment_id, study_id, unit_id, annotator_id, outcome, left_is_a, rationale, served_at,
                         submitted_at, active_ms, ratings, tags)
SELECT id, study_id, unit_id, annotator_id, %s, left_is_a, %s, leased_at, %s, %s, {{json}}, {{json}}
FROM {_ASSIGNMENT} WHERE id = %s
RETURNING id"""
_DONE_SQL_BY_ASSIGNMENT = f"""
UPDATE {_MEMBER} SET done = done + 1
WHERE (study_id, user_id) = (SELECT study_id, annotator_id FROM {_ASSIGNMENT} WHERE id = %s)"""
# PostgreSQL runs each half of the round trip as one statement: data-modifying CTEs save
# two round trips per half.  The portable statements above stay the reference (SQLite).
_LEASE_CTE_SQL = f"""
WITH picked AS (
  SELECT u.id, u.taken FROM {_UNIT} u
  WHERE u.study_id = %s AND u.taken < u.needed {{pair}}
    AND NOT EXISTS (SELECT 1 FROM {_ASSIGNMENT} a WHERE a.unit_id = u.id AND a.annotator_id = %s
                    AND NOT (a.released AND a.submitted_at IS NULL))
  ORDER BY u.taken, u.shuffle
  LIMIT 1 {{lock}}
), took AS (
  UPDATE {_UNIT} u SET taken = u.taken + 1 FROM picked WHERE u.id = picked.id AND u.taken < u.needed
  RETURNING u.id, picked.taken AS before, u.pair_seq, u.a_is_lo, u.prompt_id, u.output_a_id, u.output_b_id, u.kind
), lease AS (
  INSERT INTO {_ASSIGNMENT} (study_id, unit_id, annotator_id, token, left_is_a, leased_at, expires_at, released, slot)
  SELECT %s, took.id, %s, %s, ((took.pair_seq + took.before) %% 2 = 0) = took.a_is_lo, %s, %s, false, %s FROM took
  ON CONFLICT (unit_id, annotator_id) DO UPDATE SET token = excluded.token, left_is_a = excluded.left_is_a,
    leased_at = excluded.leased_at, expires_at = excluded.expires_at, released = excluded.released,
    slot = excluded.slot
    WHERE {_ASSIGNMENT}.released AND {_ASSIGNMENT}.submitted_at IS NULL
  RETURNING id, unit_id, left_is_a
)
SELECT lease.id, lease.left_is_a, took.id, took.before, took.pair_seq, took.a_is_lo, took.prompt_id,
       took.output_a_id, took.output_b_id, p.text, oa.text, ob.text, oa.candidate_id, ob.candidate_id, took.kind,
       p.html, oa.html, ob.html
FROM took LEFT JOIN lease ON lease.unit_id = took.id
JOIN {_PROMPT} p ON p.id = took.prompt_id
JOIN {_OUTPUT} oa ON oa.id = took.output_a_id
LEFT JOIN {_OUTPUT} ob ON ob.id = took.output_b_id"""
_SUBMIT_CTE_SQL = f"""
WITH closed AS (
  UPDATE {_ASSIGNMENT} SET submitted_at = %s WHERE id = %s AND submitted_at IS NULL AND NOT released
  RETURNING id, study_id, unit_id, annotator_id, left_is_a, leased_at
), judged AS (
  INSERT INTO {_JUDGMENT} (assignment_id, study_id, unit_id, annotator_id, outcome, left_is_a, rationale, served_at,
                           submitted_at, active_ms, ratings, tags)
  SELECT id, study_id, unit_id, annotator_id, %s, left_is_a, %s, leased_at, %s, %s, %s::jsonb, %s::jsonb FROM closed
  RETURNING id, study_id, annotator_id
), counted AS (
  UPDATE {_MEMBER} m SET done = m.done + 1 FROM judged WHERE m.study_id = judged.study_id AND m.user_id = judged.annotator_id
)
SELECT id FROM judged"""


_PROMOTE_SQL = f"""
UPDATE {_ASSIGNMENT} SET slot = 0, leased_at = %s, expires_at = %s
WHERE study_id = %s AND annotator_id = %s AND slot = 1 AND submitted_at IS NULL AND NOT released
RETURNING id, unit_id, token, left_is_a"""
# The promoted lease with its unit and texts, in the columns of _PICK_FROM.
_PROMOTED_SQL = f"""
SELECT a.id, a.token, a.left_is_a, u.id, u.taken, u.pair_seq, u.a_is_lo, u.prompt_id, u.output_a_id, u.output_b_id,
       p.text, oa.text, ob.text, oa.candidate_id, ob.candidate_id, u.kind, p.html, oa.html, ob.html, u.is_gold
FROM {{promoted}} a
JOIN {_UNIT} u ON u.id = a.unit_id
JOIN {_PROMPT} p ON p.id = u.prompt_id
JOIN {_OUTPUT} oa ON oa.id = u.output_a_id
LEFT JOIN {_OUTPUT} ob ON ob.id = u.output_b_id
WHERE a.id = %s"""
_PROMOTE_CTE_SQL = f"WITH promoted AS ({_PROMOTE_SQL})" + _PROMOTED_SQL.format(promoted="promoted").replace(
    "WHERE a.id = %s", "")


def _json_sql(sql: str) -> str:
    """A JSON parameter: PostgreSQL's jsonb needs the cast; SQLite stores the text as it is."""
    return sql.format(json="%s::jsonb" if connection.vendor == "postgresql" else "%s")


def _json_param(value) -> str | None:
    return None if value is None else json.dumps(value)


class _LeaseClash(IntegrityError):
    """The annotator already holds an open lease on the unit just taken (a concurrent request of
    theirs won it: PostgreSQL rechecks a row it waited for, but not the NOT EXISTS beside it).
    Raised inside the lease's transaction, so the place taken is given back."""


def _lease_one(study: Study, annotator, now: datetime, *, pair: tuple[int, int] | None,
               skip_locked: bool, slot: int = 0) -> Assignment | None:
    params: list = [study.pk]
    pair_sql = ""
    if pair is not None:
        pair_sql = "AND u.cand_lo_id = %s AND u.cand_hi_id = %s"
        params += list(pair)
    params.append(annotator.pk)
    lock = ""
    if connection.features.has_select_for_update:  # SQLite serialises writers instead
        lock = "FOR UPDATE OF u SKIP LOCKED" if skip_locked else "FOR UPDATE OF u"
    expires = now + timedelta(seconds=_lease_seconds() * (2 if slot else 1))  # a task ahead waits for the one before
    token = secrets.token_urlsafe(32)
    stamps = [connection.ops.adapt_datetimefield_value(now), connection.ops.adapt_datetimefield_value(expires)]
    with transaction.atomic(), connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(_LEASE_CTE_SQL.format(pair=pair_sql, lock=lock),
                        [*params, study.pk, annotator.pk, token, *stamps, slot])
            row = cur.fetchone()
            if row is None:
                return None
            (assignment_id, left_is_a, unit_id, taken, pair_seq, a_is_lo, prompt_id, out_a, out_b, prompt_text,
             text_a, text_b, cand_a, cand_b, kind, prompt_html, html_a, html_b) = row
            if assignment_id is None:
                raise _LeaseClash()
        else:
            cur.execute(_PICK_SQL.format(pair=pair_sql, lock=lock), params)
            row = cur.fetchone()
            if row is None:
                return None
            (unit_id, taken, pair_seq, a_is_lo, prompt_id, out_a, out_b, prompt_text, text_a, text_b, cand_a, cand_b,
             kind, prompt_html, html_a, html_b) = row
            cur.execute(_TAKE_SQL, [unit_id])
            if cur.rowcount != 1:
                return None
            # Sides alternate over the units of a candidate pair and over each unit's takers,
            # so every candidate pair is shown each way round equally often.
            left_is_a = ((pair_seq + taken) % 2 == 0) == bool(a_is_lo)
            # A lease of this unit released earlier (it expired) is taken over in place; an open one never is.
            cur.execute(_LEASE_SQL, [study.pk, unit_id, annotator.pk, token, left_is_a, *stamps, False, slot])
            inserted = cur.fetchone()
            if inserted is None:
                raise _LeaseClash()
            (assignment_id,) = inserted
    return _leased(study, annotator, (unit_id, taken, pair_seq, a_is_lo, prompt_id, out_a, out_b, prompt_text,
                                      text_a, text_b, cand_a, cand_b, kind, prompt_html, html_a, html_b),
                   assignment_id=assignment_id, token=token, left_is_a=bool(left_is_a), now=now, expires=expires,
                   slot=slot)


def _leased(study: Study, annotator, row: tuple, *, assignment_id: int, token: str, left_is_a: bool,
            now: datetime, expires: datetime, is_gold: bool = False, slot: int = 0,
            counted: bool = False) -> Assignment:
    """The lease just written, with its unit and texts from the row its statement read (no query).

    ``taken`` in the row is the count before this lease, unless ``counted`` (a lease promoted
    from ahead, whose place was counted when it was taken; its row ends with ``is_gold``)."""
    if counted:
        *row, is_gold = row
        row[1] -= 1
    (unit_id, taken, pair_seq, a_is_lo, prompt_id, out_a, out_b, prompt_text, text_a, text_b, cand_a, cand_b, kind,
     prompt_html, html_a, html_b) = row
    lo, hi = (cand_a, cand_b) if a_is_lo else (cand_b, cand_a)
    unit = Unit(id=unit_id, study_id=study.pk, kind=kind, prompt_id=prompt_id, output_a_id=out_a, output_b_id=out_b,
                cand_lo_id=lo, cand_hi_id=hi, taken=taken + 1, pair_seq=pair_seq, a_is_lo=bool(a_is_lo),
                is_gold=is_gold, needed=0 if is_gold else 1)
    unit.prompt = Prompt(id=prompt_id, study_id=study.pk, text=prompt_text, html=prompt_html or "")
    unit.output_a = Output(id=out_a, study_id=study.pk, prompt_id=prompt_id, candidate_id=cand_a, text=text_a,
                           html=html_a or "")
    unit.output_b = None if out_b is None else Output(id=out_b, study_id=study.pk, prompt_id=prompt_id,
                                                      candidate_id=cand_b, text=text_b, html=html_b or "")
    assignment = Assignment(id=assignment_id, study_id=study.pk, unit_id=unit_id, annotator_id=annotator.pk,
                            token=token, left_is_a=left_is_a, leased_at=now, expires_at=expires, released=False,
                            slot=slot)
    assignment.unit = unit
    return assignment


# A check (annotation.checks) is open to every annotator once: no place to take, so no
# ``taken < needed``; ``taken`` still counts its leases and judgments, like any unit's.  Each
# annotator meets the study's checks in their own rotation of the shuffled order.
_CHECK_PICK_SQL = f"""{_PICK_FROM}
WHERE u.study_id = %s AND u.is_gold
  AND {_NOT_MET}
ORDER BY (CAST(u.shuffle AS BIGINT) + %s) %% 2147483647
LIMIT 1"""
_CHECK_TAKE_SQL = f"UPDATE {_UNIT} SET taken = taken + 1 WHERE id = %s"


def _lease_check(study: Study, annotator, now: datetime, *, slot: int = 0) -> Assignment | None:
    """Lease a check this annotator has not met yet (see :mod:`annotation.checks`), or None."""
    expires = now + timedelta(seconds=_lease_seconds() * (2 if slot else 1))
    token = secrets.token_urlsafe(32)
    stamps = [connection.ops.adapt_datetimefield_value(now), connection.ops.adapt_datetimefield_value(expires)]
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(_CHECK_PICK_SQL, [study.pk, annotator.pk, annotator.pk * 7919])
        row = cur.fetchone()
        if row is None:
            return None
        assignment_id, left_is_a = _take_picked(cur, study, annotator, row, token=token, stamps=stamps, slot=slot)
    return _leased(study, annotator, row, assignment_id=assignment_id, token=token, left_is_a=left_is_a, now=now,
                   expires=expires, is_gold=True, slot=slot)


def _take_picked(cur, study: Study, annotator, row, *, token: str, stamps: list, slot: int) -> tuple[int, bool]:
    """Lease a picked unit the way checks and an expert's reserved units are leased: ``taken``
    counts the lease without the ``taken < needed`` test, and the screen side is a fair coin
    (nothing to balance: such a task measures or decides, it is not one of the pair's votes).
    Returns (assignment id, left_is_a); raises ``_LeaseClash`` when another lease won the row."""
    cur.execute(_CHECK_TAKE_SQL, [row[0]])
    left_is_a = secrets.randbelow(2) == 0
    cur.execute(_LEASE_SQL, [study.pk, row[0], annotator.pk, token, left_is_a, *stamps, False, slot])
    inserted = cur.fetchone()
    if inserted is None:
        raise _LeaseClash()
    return inserted[0], left_is_a


# Units reserved for this annotator as an expert (annotation.adjudication), oldest request first;
# ``met`` sorts last the ones they hold, answered or skipped already.
_RESERVED_PICK_SQL = f"""{_PICK_FROM}
JOIN {Adjudication._meta.db_table} d ON d.unit_id = u.id
WHERE d.study_id = %s AND d.expert_id = %s AND d.closed_at IS NULL
ORDER BY CASE WHEN {_NOT_MET} THEN 0 ELSE 1 END, d.id
LIMIT 1"""
_RESERVED_MET_SQL = f"""SELECT CASE WHEN {_NOT_MET} THEN 0 ELSE 1 END FROM {_UNIT} u WHERE u.id = %s"""
_RESERVED_CLOSE_SQL = f"""
UPDATE {Adjudication._meta.db_table} SET closed_at = %s
WHERE study_id = %s AND expert_id = %s AND closed_at IS NULL
  AND EXISTS (SELECT 1 FROM {_ASSIGNMENT} a WHERE a.unit_id = {Adjudication._meta.db_table}.unit_id
              AND a.annotator_id = %s AND a.submitted_at IS NOT NULL)"""


def _lease_reserved(study: Study, annotator, now: datetime, *, slot: int = 0) -> Assignment | None:
    """Lease a unit reserved for this annotator as an expert (see :mod:`annotation.adjudication`).

    Only called while the study has open reservations: for an annotator with none it is one
    indexed statement.  ``taken`` counts the lease (so sweeps and exclusions stay exact) without
    ``taken < needed``, as for a check: on a unit that has all its judgments (the usual case: its
    annotators disagreed) the expert's verdict comes on top of them; on a unit still open it fills
    one of the places left.  Reservations the expert has answered or skipped are closed here,
    and the study's count of open ones moves down with them.
    """
    expires = now + timedelta(seconds=_lease_seconds() * (2 if slot else 1))
    token = secrets.token_urlsafe(32)
    stamps = [connection.ops.adapt_datetimefield_value(now), connection.ops.adapt_datetimefield_value(expires)]
    with connection.cursor() as cur:  # no transaction for the look that finds nothing (most annotators)
        cur.execute(_RESERVED_PICK_SQL, [study.pk, annotator.pk, annotator.pk])
        row = cur.fetchone()
    if row is None:
        return None
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(_RESERVED_MET_SQL, [annotator.pk, row[0]])
        if cur.fetchone()[0]:  # every reservation left is held, answered or skipped: close the finished ones
            cur.execute(_RESERVED_CLOSE_SQL, [connection.ops.adapt_datetimefield_value(now), study.pk,
                                              annotator.pk, annotator.pk])
            if cur.rowcount:
                Study.objects.filter(pk=study.pk, adjudications_open__gte=cur.rowcount).update(
                    adjudications_open=F("adjudications_open") - cur.rowcount)
            return None
        assignment_id, left_is_a = _take_picked(cur, study, annotator, row, token=token, stamps=stamps, slot=slot)
    return _leased(study, annotator, row, assignment_id=assignment_id, token=token, left_is_a=left_is_a, now=now,
                   expires=expires, slot=slot)


def _adaptive_pairs(study: Study) -> list[tuple[int, int] | None]:
    """Candidate pairs to try first, the most informative first, then any open unit.

    Scores candidate pairs (not units) from the last leaderboard snapshot with
    :func:`arena.sampling.pair_scores`, so the cost depends on the number of candidates,
    never on the number of units.  Pairs with a candidate not yet rated go first.
    Without a snapshot the order stays uniform.
    """
    from arena.services import adaptive_pair_order

    return [*adaptive_pair_order(study.pk)[:3], None]


@dataclass(frozen=True)
class TaskView:
    """What an annotator's page may show: no candidate name, id or backend.

    A Likert task shows one output (``left``; ``right`` is empty) and the criteria.  Each text
    comes with its stored HTML (``*_html``, sanitised when written; empty for a row written
    before it was stored or by a path that missed it, and then the page renders the text)."""

    token: str
    prompt: str
    left: str
    right: str
    done: int
    remaining: int
    prompt_html: str = ""
    left_html: str = ""
    right_html: str = ""
    kind: str = "pairwise"
    criteria: tuple = ()
    tags: tuple = ()  # each {key, label, letter}: the letter toggles it
    ask_rationale: str = "optional"
    # Image outputs: each side's images ({url, thumb, alt}), the grid of the prompt's samples of that
    # side's candidate in sample order (one image when the study has one sample per prompt).
    left_images: tuple = ()
    right_images: tuple = ()


def task_view(*, assignment: Assignment, done: int, units_total: int, study: Study | None = None) -> TaskView:
    """The page of one lease; ``done`` and ``units_total`` come from counters, not counts.

    ``remaining`` is an upper bound: the units this annotator has not judged yet, less
    the one on screen; others may fill some of them first.  ``study`` (loaded already
    by the caller) gives the criteria, tags and whether a reason is asked.
    """
    unit = assignment.unit
    study = study or assignment.study
    common = dict(token=assignment.token, prompt=unit.prompt.text, prompt_html=unit.prompt.html, done=done,
                  remaining=max(0, units_total - done - 1), tags=tuple(taskconfig.tag_letters(study.failure_tags)),
                  ask_rationale=study.ask_rationale)
    if unit.kind == Unit.Kind.LIKERT:
        images = task_images(unit.output_a, None) if not unit.output_a.text else ((), ())
        return TaskView(left=unit.output_a.text, left_html=unit.output_a.html, right="", kind=Unit.Kind.LIKERT,
                        criteria=tuple(study.likert_criteria), left_images=images[0], **common)
    first, second = (unit.output_a, unit.output_b) if assignment.left_is_a else (unit.output_b, unit.output_a)
    left_images, right_images = task_images(first, second) if not (first.text or second.text) else ((), ())
    return TaskView(left=first.text, right=second.text, left_html=first.html, right_html=second.html,
                    left_images=left_images, right_images=right_images, **common)


def task_images(first: Output, second: Output | None) -> tuple[tuple, tuple]:
    """The images of a task without text, in one query: a Likert task's one image; for a pair, each
    side's grid (the finished samples of the prompt by that side's candidate, in sample order).
    URLs carry only the opaque file names, alt texts only the side ("Image A", "Sample 2 of B")."""
    shown = [o for o in (first, second) if o is not None]
    if second is None:
        match = Q(pk=first.pk)
    else:
        match = Q(pk__in=[o.pk for o in shown]) | Q(prompt_id=first.prompt_id,
                                                     candidate_id__in=[o.candidate_id for o in shown])
    rows = list(Output.objects.filter(match, study_id=first.study_id, status=Output.Status.DONE)
                .exclude(image="").order_by("sample_index", "pk")
                .values_list("pk", "prompt_id", "candidate_id", "image", "thumbnail"))
    by_pk = {row[0]: row for row in rows}
    sides = []
    for label, out in zip("AB", shown):
        own = by_pk.get(out.pk)
        if own is None:
            sides.append(())
            continue
        grid = [r for r in rows if r[1] == own[1] and r[2] == own[2]] if second is not None else [own]
        sides.append(tuple(
            output_image_item(first.study_id, image, thumb,
                              f"Image {label}" if len(grid) == 1 else f"Sample {n} of {label}")
            for n, (_pk, _prompt, _cand, image, thumb) in enumerate(grid, 1)))
    while len(sides) < 2:
        sides.append(())
    return sides[0], sides[1]


def output_image_item(study_id: int, image: str, thumbnail: str, alt: str) -> dict:
    """One image as a page shows it: {url, thumb, alt}; the URLs name only the opaque file names."""
    from django.urls import reverse

    url = reverse("annotation:output_image", kwargs={"study_id": study_id, "name": PurePosixPath(image).name})
    thumb = (reverse("annotation:output_thumbnail", kwargs={"study_id": study_id,
                                                           "name": PurePosixPath(thumbnail).name})
             if thumbnail else url)
    return {"url": url, "thumb": thumb, "alt": alt}


class AlreadySubmitted(ServiceError):
    pass


class LeaseExpired(ServiceError):
    pass


class AnswerInvalid(ServiceError):
    """The answer does not fit the task (a bad choice, rating or tag, a missing reason): a 400."""


def judgment_submit(
    *,
    assignment: Assignment,
    choice: str | None = None,
    rationale: str = "",
    active_ms: int | None = None,
    ratings: dict | None = None,
    tags: Sequence[str] | None = None,
    now: datetime | None = None,
) -> tuple[Judgment, bool]:
    """Record an annotator's verdict on their assignment, in terms of outputs.

    Returns ``(judgment, created)``.  Repeating the same verdict (a double click, a
    retried request) returns the first judgment with ``created`` false; a different
    verdict on a submitted task is refused.  A lease past its
    time still holds its place until it is released; a released one is accepted when
    its unit still has a free place.  The annotator's ``done`` counter moves with the
    judgment, in the same transaction, and one leaderboard refresh is requested.

    A pairwise task takes ``choice``; a Likert task takes ``ratings`` ({criterion key:
    point or None for not applicable}); either takes ``tags`` (keys of the study's failure
    tags).  Both are checked against the study's settings (:mod:`annotation.taskconfig`),
    and a required rationale must be there; ``ServiceError`` names what is wrong.
    """
    study = assignment.study
    kind = getattr(assignment, "unit_kind", None) or assignment.unit.kind
    try:
        rationale = taskconfig.rationale_check(study.ask_rationale, rationale)
        tags = taskconfig.tags_check(study.failure_tags, tags)
        if kind == Unit.Kind.LIKERT:
            if choice:
                raise taskconfig.ConfigError("choice: this is a Likert task; send ratings, not a choice")
            ratings = taskconfig.ratings_validate(study.likert_criteria, ratings)
            outcome = ""
        else:
            if ratings is not None:
                raise taskconfig.ConfigError("ratings: this is a pairwise task; send a choice, not ratings")
            if not choice:
                raise taskconfig.ConfigError("choice: say which output is better (left, right, tie or both_bad)")
            outcome = outcomes.STORED[outcomes.from_choice(choice, assignment.left_is_a)]
    except ValueError as exc:
        raise AnswerInvalid(str(exc)) from None
    answer = (outcome, ratings, tags)
    now = now or timezone.now()
    stamp = connection.ops.adapt_datetimefield_value(now)
    try:
        with transaction.atomic(), connection.cursor() as cur:
            judgment_id = _close_and_judge(cur, assignment.pk, answer, rationale, stamp, active_ms)
            if judgment_id is None:  # the lease was not open: already judged, or released
                state = Assignment.objects.filter(pk=assignment.pk).values("submitted_at", "released").first()
                if state is None:  # its candidate was removed meanwhile (candidate_remove)
                    raise LeaseExpired("This task is no longer offered: its pair was taken out of the study.")
                if state["submitted_at"] is not None:
                    existing = Judgment.objects.filter(assignment_id=assignment.pk).first()
                    if existing is None:
                        raise AlreadySubmitted("You skipped this task, so it takes no answer now.")
                    return _same_or_refuse(existing, answer), False
                if not Unit.objects.filter(Q(taken__lt=F("needed")) | Q(is_gold=True), pk=assignment.unit_id).update(
                        taken=F("taken") + 1):
                    raise LeaseExpired("This task's lease expired and someone else has taken it.")
                # closed in the same UPDATE, so it never counts as a second open lease
                Assignment.objects.filter(pk=assignment.pk).update(released=False, submitted_at=now)
                judgment_id = _judge(cur, assignment.pk, answer, rationale, stamp, active_ms)
    except IntegrityError:
        return _same_or_refuse(Judgment.objects.get(assignment_id=assignment.pk), answer), False
    _request_ratings(assignment.study_id, vote=True)
    judgment = Judgment(id=judgment_id, assignment_id=assignment.pk, study_id=assignment.study_id,
                        unit_id=assignment.unit_id, annotator_id=assignment.annotator_id, outcome=outcome,
                        left_is_a=assignment.left_is_a, rationale=rationale.strip()[:5000], submitted_at=now,
                        active_ms=active_ms, ratings=ratings, tags=tags)
    return judgment, True


def _close_and_judge(cur, assignment_id: int, answer: tuple, rationale: str, stamp, active_ms) -> int | None:
    """Close an open lease, write its judgment and count it; None when the lease was not open."""
    rationale = rationale.strip()[:5000]
    outcome, ratings, tags = answer
    if connection.vendor == "postgresql":
        cur.execute(_SUBMIT_CTE_SQL, [stamp, assignment_id, outcome, rationale, stamp, active_ms,
                                      _json_param(ratings), _json_param(tags)])
        row = cur.fetchone()
        return row[0] if row else None
    cur.execute(_CLOSE_SQL, [stamp, assignment_id])
    if cur.rowcount != 1:
        return None
    return _judge(cur, assignment_id, answer, rationale, stamp, active_ms)


def _judge(cur, assignment_id: int, answer: tuple, rationale: str, stamp, active_ms) -> int:
    """Write the judgment of a just-closed lease and count it for its annotator."""
    outcome, ratings, tags = answer
    cur.execute(_json_sql(_JUDGMENT_SQL), [outcome, rationale.strip()[:5000], stamp, active_ms,
                                           _json_param(ratings), _json_param(tags), assignment_id])
    (judgment_id,) = cur.fetchone()
    cur.execute(_DONE_SQL_BY_ASSIGNMENT, [assignment_id])
    return judgment_id


def _same_or_refuse(existing: Judgment, answer: tuple) -> Judgment:
    outcome, ratings, tags = answer
    if existing.outcome == outcome and existing.ratings == ratings and (existing.tags or []) == (tags or []):
        return existing
    raise AlreadySubmitted("This task was already submitted with another answer.")


def task_skip(*, assignment: Assignment, reason: str, note: str = "", now: datetime | None = None) -> bool:
    """The annotator passes on their task with a reason; returns whether this call recorded it.

    The lease is closed and released in one conditional UPDATE (its row count decides
    against a vote or a sweep in flight), and its place goes back to the unit for someone
    else; the lease statements never serve that unit to this annotator again.  A lease
    that already expired is recorded too (its place was given back by the sweep).  The
    same skip again changes nothing; a skip of a judged task is refused.
    """
    if reason not in Skip.Reason.values:
        raise AnswerInvalid(f"reason: choose one of {', '.join(Skip.Reason.values)}")
    note = note.strip()[:2000]
    if reason == Skip.Reason.OTHER and not note:
        raise AnswerInvalid("note: say in a few words why you skip (asked for with “other”)")
    now = now or timezone.now()
    with transaction.atomic():
        open_ = Assignment.objects.filter(pk=assignment.pk, submitted_at__isnull=True)
        if open_.filter(released=False).update(released=True, submitted_at=now):
            Unit.objects.filter(pk=assignment.unit_id).update(taken=F("taken") - 1)
        elif not open_.filter(released=True).update(submitted_at=now):
            if Skip.objects.filter(assignment_id=assignment.pk).exists():
                return False
            raise AlreadySubmitted("This task was already judged; it cannot be skipped now.")
        Skip.objects.create(assignment_id=assignment.pk, study_id=assignment.study_id, unit_id=assignment.unit_id,
                            annotator_id=assignment.annotator_id, reason=reason, note=note, skipped_at=now)
    return True


class UndoRefused(ServiceError):
    """An undo that is not allowed (not the latest judgment, too late, nothing to undo): a 409."""


def judgment_undo(*, assignment: Assignment, now: datetime | None = None) -> Assignment:
    """Take back the annotator's latest judgment, within ``EVALSITE_UNDO_SECONDS`` of it.

    The judgment is deleted and the annotator's ``done`` counter goes back; their lease on
    that unit opens again (it kept its place on the unit), and the lease they were given
    next is released so its place goes to someone else (the task fetched ahead, if any, stays
    ahead).  The study's version moves so
    incremental counts are redone, and one leaderboard refresh is requested.  Returns the
    reopened lease.
    """
    from arena.services import online_elo_reset

    now = now or timezone.now()
    window = django_settings.EVALSITE_UNDO_SECONDS
    with transaction.atomic():
        judgment = Judgment.objects.select_for_update().filter(assignment_id=assignment.pk).first()
        if judgment is None:
            raise UndoRefused("There is no judgment on this task to undo (it was undone already, or never made).")
        latest = (Judgment.objects.filter(study_id=assignment.study_id, annotator_id=assignment.annotator_id)
                  .order_by("-submitted_at", "-id").values_list("pk", flat=True).first())
        if latest != judgment.pk:
            raise UndoRefused("Only your latest judgment can be undone.")
        if now - judgment.submitted_at > timedelta(seconds=window):
            raise UndoRefused(f"Too late to undo: a judgment can be undone within {window} seconds "
                              "(EVALSITE_UNDO_SECONDS).")
        nxt = list(Assignment.objects.select_for_update().filter(  # the task on screen; the one ahead stays
            study_id=assignment.study_id, annotator_id=assignment.annotator_id, submitted_at__isnull=True,
            released=False, slot=0).values_list("pk", "unit_id"))
        if nxt:
            Assignment.objects.filter(pk__in=[pk for pk, _ in nxt]).update(released=True)
            Unit.objects.filter(pk__in=[u for _, u in nxt]).update(taken=F("taken") - 1)
        judgment.delete()
        expires = now + timedelta(seconds=_lease_seconds())
        try:
            with transaction.atomic():
                Assignment.objects.filter(pk=assignment.pk).update(submitted_at=None, released=False,
                                                                   expires_at=expires, slot=0)
        except IntegrityError:  # the one-open-lease constraint: a request of theirs leased meanwhile
            raise UndoRefused("Another of your requests took a new task at the same moment; press Undo again.") \
                from None
        StudyMember.objects.filter(study_id=assignment.study_id, user_id=assignment.annotator_id,
                                   done__gt=0).update(done=F("done") - 1)
        Study.objects.filter(pk=assignment.study_id).update(version=F("version") + 1)
    online_elo_reset(study_id=assignment.study_id)  # the sequential preview cannot un-count a vote; replay it
    _request_ratings(assignment.study_id)
    return (Assignment.objects.select_related("unit__prompt", "unit__output_a", "unit__output_b")
            .get(pk=assignment.pk))


def _request_ratings(study_id: int, *, vote: bool = False) -> None:
    from arena.services import ratings_request

    ratings_request(study_id=study_id, vote=vote)


# --- demo users ---------------------------------------------------------------------


def user_ensure(*, username: str, password: str, is_staff: bool = False):
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": is_staff})
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    return user


# --- battles from outside -----------------------------------------------------------

IMPORT_USERNAME = "battle-import"


def battles_import(*, study: Study, model_a: Sequence[str], model_b: Sequence[str], winner: Sequence[str],
                   source: str, batch_size: int = 5000, actor=None) -> int:
    """Load pairwise battles judged elsewhere (e.g. Chatbot Arena) into a study as judgments.

    Each battle becomes its own prompt (``<source>#<n>``), one output per side, a unit,
    and a submitted assignment by the inactive user ``battle-import``, so every
    aggregate treats it like a vote cast here.  Models become ``imported`` candidates.
    Importing the same source twice is refused; everything is written in one transaction.
    """
    n = len(winner)
    if not (len(model_a) == len(model_b) == n):
        raise ServiceError("model_a, model_b and winner differ in length")
    bad = next((i for i, w in enumerate(winner) if w not in outcomes.ARENA_CODE), None)
    if bad is not None:
        raise ServiceError(f"battle {bad}: unknown winner {winner[bad]!r}")
    same = next((i for i in range(n) if model_a[i] == model_b[i]), None)
    if same is not None:
        raise ServiceError(f"battle {same}: {model_a[same]!r} against itself")
    prefix = f"{source}#"
    if study.prompts.filter(external_id__startswith=prefix).exists():
        raise ServiceError(f"battles from {source!r} are already in this study")
    now = timezone.now()
    with transaction.atomic():
        user, _ = User.objects.get_or_create(username=IMPORT_USERNAME, defaults={"is_active": False})
        names = sorted(set(model_a) | set(model_b))
        existing = {c.name: c for c in study.candidates.filter(name__in=names)}
        for name in names:
            if name not in existing:
                existing[name] = Candidate.objects.create(study=study, name=name, backend=Candidate.Backend.IMPORTED,
                                                          spec={"source": source})
        start = study.prompts.count()
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            prompts = Prompt.objects.bulk_create([
                Prompt(study=study, external_id=f"{prefix}{i + 1}", text=text, html=markdown.render(text),
                       position=start + i)
                for i, text in ((i, f"Battle {i + 1} imported from {source}") for i in range(lo, hi))
            ])
            outputs = Output.objects.bulk_create([
                Output(study=study, prompt=p, candidate=existing[m], status=Output.Status.DONE, finished_at=now,
                       settings={"imported_from": source})
                for p, i in zip(prompts, range(lo, hi)) for m in (model_a[i], model_b[i])
            ])
            units, flipped = [], []
            for k, (p, i) in enumerate(zip(prompts, range(lo, hi))):
                oa, ob = outputs[2 * k], outputs[2 * k + 1]
                flip = oa.pk > ob.pk
                if flip:
                    oa, ob = ob, oa
                c_lo, c_hi = sorted((oa.candidate_id, ob.candidate_id))
                units.append(Unit(study=study, prompt=p, output_a=oa, output_b=ob, needed=1, taken=1,
                                  cand_lo_id=c_lo, cand_hi_id=c_hi, a_is_lo=oa.candidate_id == c_lo))
                flipped.append(flip)
            units = Unit.objects.bulk_create(units)
            assignments = Assignment.objects.bulk_create([
                Assignment(study=study, unit=u, annotator=user, token=secrets.token_urlsafe(32), left_is_a=not flip,
                           leased_at=now, expires_at=now, submitted_at=now)
                for u, flip in zip(units, flipped)
            ])
            judgments = []
            for a, u, flip, i in zip(assignments, units, flipped, range(lo, hi)):
                code = outcomes.ARENA_CODE[winner[i]]
                outcome = outcomes.STORED[outcomes.swapped(code) if flip else code]
                judgments.append(Judgment(assignment=a, study=study, unit=u, annotator=user, outcome=outcome,
                                          left_is_a=not flip, served_at=now))
            Judgment.objects.bulk_create(judgments)
        # One long transaction whose ids interleave with votes cast meanwhile: recount in full.
        Study.objects.filter(pk=study.pk).update(units_total=Unit.objects.filter(study=study, is_gold=False).count(),
                                                 version=F("version") + 1)
        audit.record(study, actor, audit.Action.OUTPUTS_IMPORTED, source, {"battles": n, "candidates": names})
    _request_ratings(study.pk)
    return n


# --- judgments from outside -----------------------------------------------------------


def judgments_import(*, study: Study, data: uploads.UploadData, filename: str, actor=None) -> int:
    """Load judgments collected elsewhere (or exported from another study) as if cast here.

    The file is in the export's columns (:mod:`annotation.exchange`).  It is validated whole,
    against the file and then against the study: each row must name a prompt, two candidates
    whose outputs for that prompt and sample form a unit of the study, and an annotator member
    of the study who has not judged that unit yet (an expired lease of theirs on it is taken
    over).  Any error raises ``uploads.UploadError`` naming the line and field, and nothing is
    written.  Then, in one transaction, each row becomes a submitted assignment and its
    judgment (stored in terms of the unit's outputs, whatever the file's orientation), and the
    counters move as on the vote path: ``Unit.taken`` by one per judgment of an annotator who
    is not excluded (whose judgments hold no place, as after ``member_exclude``), and each
    annotator's ``StudyMember.done``.  The study's version moves (the new ids interleave with
    votes cast meanwhile, and their times are the file's), so the leaderboard is counted anew,
    and one refresh is requested.  Returns the number of judgments written.
    """
    from . import exchange

    parsed = exchange.parse_judgments(data, filename, max_bytes=django_settings.EVALSITE_UPLOAD_MAX_BYTES,
                                      keep_errors=True)
    plan = _judgments_plan(study, parsed)
    now = timezone.now()
    assignments = [
        Assignment(id=p.taken_over, study=study, unit_id=p.unit_id, annotator_id=p.annotator_id,
                   token=secrets.token_urlsafe(32), left_is_a=p.left_is_a,
                   leased_at=p.row.served_at or p.row.submitted_at or now, expires_at=p.row.submitted_at or now,
                   submitted_at=p.row.submitted_at or now, released=p.excluded)
        for p in plan
    ]
    taken_over = [a for a in assignments if a.pk is not None]
    try:
        with transaction.atomic():
            if taken_over:  # leases that expired unsubmitted: checked again under the transaction
                still = Assignment.objects.filter(pk__in=[a.pk for a in taken_over], released=True,
                                                  submitted_at__isnull=True).count()
                if still != len(taken_over):
                    raise IntegrityError("a lease to take over changed meanwhile")
                Assignment.objects.bulk_update(taken_over, ["token", "left_is_a", "leased_at", "expires_at",
                                                            "submitted_at", "released"], batch_size=500)
            Assignment.objects.bulk_create([a for a in assignments if a.pk is None], batch_size=2000)
            # Raw INSERT: the model's submitted_at is auto_now_add, which would overwrite the file's times.
            stamp = connection.ops.adapt_datetimefield_value
            with connection.cursor() as cur:
                cur.executemany(_json_sql(_IMPORT_JUDGMENT_SQL), [
                    (a.pk, study.pk, p.unit_id, p.annotator_id, p.outcome, p.left_is_a, p.row.rationale,
                     stamp(a.leased_at), stamp(a.submitted_at), p.row.active_ms, _json_param(p.ratings),
                     _json_param(p.tags))
                    for p, a in zip(plan, assignments)
                ])
            # (unit, annotator) is unique, so a unit gains one place per row that holds one.
            by_count: dict[int, list[int]] = {}
            for unit_id, n in Counter(p.unit_id for p in plan if not p.excluded).items():
                by_count.setdefault(n, []).append(unit_id)
            for n, unit_ids in by_count.items():
                for lo in range(0, len(unit_ids), 500):
                    Unit.objects.filter(pk__in=unit_ids[lo:lo + 500]).update(taken=F("taken") + n)
            for annotator_id, n in Counter(p.annotator_id for p in plan).items():
                StudyMember.objects.filter(study=study, user_id=annotator_id).update(done=F("done") + n)
            Study.objects.filter(pk=study.pk).update(version=F("version") + 1)
            action = audit.Action.JUDGMENTS_IMPORTED
            audit.record(study, actor, action, filename, {
                "judgments": len(plan), "file": filename, "annotators": sorted({p.row.annotator for p in plan}),
            })
    except IntegrityError:
        raise ServiceError("the study changed while the file was being imported (an annotator took one of its "
                           "pairs meanwhile); nothing was imported: import the file again") from None
    _request_ratings(study.pk)
    return len(plan)


_IMPORT_JUDGMENT_SQL = f"""
INSERT INTO {_JUDGMENT} (assignment_id, study_id, unit_id, annotator_id, outcome, left_is_a, rationale, served_at,
                         submitted_at, active_ms, ratings, tags)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {{json}}, {{json}})"""


@dataclass(frozen=True)
class _PlannedJudgment:
    row: object  # exchange.JudgmentRow
    unit_id: int
    annotator_id: int
    left_is_a: bool
    outcome: str  # stored vocabulary, in terms of the unit's outputs; empty for Likert ratings
    excluded: bool
    taken_over: int | None  # the id of an expired, unsubmitted lease of this annotator on the unit
    ratings: dict | None = None  # Likert: checked against the study's criteria
    tags: list | None = None  # checked against the study's failure tags


def _chunked(items: Sequence, size: int = 500):
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]


def _judgments_plan(study: Study, parsed) -> list[_PlannedJudgment]:
    """Check the good rows of a judgments file against the study; raise ``UploadError`` listing every
    problem, the file's own (``parsed.errors``) and the study's, by line.  A Likert row names one
    candidate's output, which must have a Likert unit here; its ratings are checked against the
    study's criteria and every row's tags against its failure tags (:mod:`annotation.taskconfig`)."""
    rows = parsed.rows
    prompts = dict(Prompt.objects.filter(study=study).values_list("external_id", "pk"))
    candidates = dict(Candidate.objects.filter(study=study).values_list("name", "pk"))
    names = sorted({row.annotator for row in rows})
    users: dict[str, int] = {}
    for chunk in _chunked(names):
        users.update(User.objects.filter(**{f"{User.USERNAME_FIELD}__in": chunk}).values_list(
            User.USERNAME_FIELD, "pk"))
    members = {user_id: (role, excluded) for user_id, role, excluded in StudyMember.objects.filter(
        study=study, user_id__in=list(users.values())).values_list("user_id", "role", "excluded")}
    # The units of the prompts named: (prompt, sample, candidate low, candidate high) -> (unit, output_a's candidate);
    # a Likert unit's key has None for the high candidate.
    units: dict[tuple[int, int, int, int | None], tuple[int, int]] = {}
    prompt_ids = sorted({prompts[row.prompt_id] for row in rows if row.prompt_id in prompts})
    for chunk in _chunked(prompt_ids):
        # a check (is_gold) is not a task of the study: imported judgments go to its own units
        for unit_id, prompt_id, sample, lo, hi, a_is_lo in Unit.objects.filter(
                study=study, prompt_id__in=chunk, is_gold=False).values_list(
                "pk", "prompt_id", "output_a__sample_index", "cand_lo_id", "cand_hi_id", "a_is_lo"):
            units[(prompt_id, sample, lo, hi)] = (unit_id, lo if a_is_lo else hi)
    errors: list[uploads.RowError] = []

    def error(row, field: str | None, message: str) -> None:
        errors.append(uploads.RowError(row.line, field, message, row.index))

    found = []
    for row in rows:
        bad = len(errors)
        prompt_pk = prompts.get(row.prompt_id)
        if prompt_pk is None:
            error(row, "prompt_id", f"there is no prompt {row.prompt_id!r} in this study")
        likert = row.kind == Unit.Kind.LIKERT
        for field in ("model_a",) if likert else ("model_a", "model_b"):
            name = getattr(row, field)
            if name not in candidates:
                error(row, field, f"there is no candidate named {name!r} in this study")
        try:
            tags = taskconfig.tags_check(study.failure_tags, list(row.tags))
            ratings = taskconfig.ratings_validate(study.likert_criteria, row.ratings) if likert else None
        except taskconfig.ConfigError as exc:
            field, _, _ = str(exc).partition(":")
            error(row, field if field in ("tags", "ratings") else "ratings", str(exc))
        user_id = users.get(row.annotator)
        if user_id is None:
            error(row, "annotator", f"there is no account named {row.annotator!r}; the annotator column holds "
                                    "user names (a pseudonymised export cannot be imported)")
        else:
            role, excluded = members.get(user_id, (None, False))
            if role != StudyMember.Role.ANNOTATOR:
                where = f"is {role} in this study" if role else "is not a member of this study"
                error(row, "annotator", f"{row.annotator!r} {where}; only annotators' judgments can be imported "
                                        "(add them as an annotator under People first)")
            elif row.excluded is not None and row.excluded != excluded:
                error(row, "excluded", f"says {str(row.excluded).lower()} but {row.annotator!r} is "
                                       f"{'' if excluded else 'not '}excluded in this study; exclude or re-admit "
                                       "them first, or leave the column out")
        if len(errors) > bad:
            continue
        if likert:
            unit = units.get((prompt_pk, row.sample_index, candidates[row.model_a], None))
            if unit is None:
                error(row, None, f"{row.model_a!r} has no finished output for prompt {row.prompt_id!r} (sample "
                                 f"{row.sample_index}) that this study rates on its criteria (a Likert task)")
                continue
            found.append((row, unit[0], user_id, True, "", members[user_id][1], ratings, tags))
            continue
        a, b = candidates[row.model_a], candidates[row.model_b]
        unit = units.get((prompt_pk, row.sample_index, min(a, b), max(a, b)))
        if unit is None:
            error(row, None, f"{row.model_a!r} and {row.model_b!r} have no pair of finished outputs for prompt "
                             f"{row.prompt_id!r} (sample {row.sample_index}) in this study to judge")
            continue
        unit_id, cand_a = unit
        code = row.code if cand_a == a else outcomes.swapped(row.code)
        left_is_a = candidates[row.shown_left] == cand_a
        found.append((row, unit_id, user_id, left_is_a, outcomes.STORED[code], members[user_id][1], None, tags))
    # What the annotators already hold or judged on these units.
    held: dict[tuple[int, int], tuple[int, bool, bool]] = {}
    unit_ids = sorted({f[1] for f in found})
    for chunk in _chunked(unit_ids):
        for pk, unit_id, annotator_id, submitted, released in Assignment.objects.filter(
                study=study, unit_id__in=chunk, annotator_id__in={f[2] for f in found}).values_list(
                "pk", "unit_id", "annotator_id", "submitted_at", "released"):
            held[(unit_id, annotator_id)] = (pk, submitted is not None, released)
    plan = []
    for row, unit_id, user_id, left_is_a, outcome, excluded, ratings, tags in found:
        taken_over = None
        if (unit_id, user_id) in held:
            pk, submitted, released = held[(unit_id, user_id)]
            what = f"the output of {row.model_a!r} for" if row.kind == Unit.Kind.LIKERT else "this pair of"
            if submitted:
                error(row, "annotator", f"{row.annotator!r} has already judged {what} {row.prompt_id!r} "
                                        "in this study")
                continue
            if not released:
                error(row, "annotator", f"{row.annotator!r} holds {what} {row.prompt_id!r} as an open task "
                                        "right now; import once it is submitted or has expired")
                continue
            taken_over = pk
        plan.append(_PlannedJudgment(row, unit_id, user_id, left_is_a, outcome, excluded, taken_over, ratings, tags))
    if errors or parsed.total:
        total = parsed.total + len(errors)
        errors = sorted([*parsed.errors, *errors], key=lambda e: (e.line or 0, e.field or ""))
        raise uploads.UploadError(errors[:uploads.MAX_REPORTED_ERRORS], total)
    return plan


# --- identity-leak guard -------------------------------------------------------------


def identity_pattern(study: Study):
    """The identity guard's pattern for a study: the word list plus its candidates' names and the
    model names their specs give."""
    extra = []
    for name, backend, spec in Candidate.objects.filter(study=study).values_list("name", "backend", "spec"):
        extra.append(name)
        extra.extend(identity.spec_model_names(backend, spec))
    return identity.matcher(extra)


def outputs_identity_scan(*, study: Study, prompt_ids: Iterable[int] | None = None,
                          unchecked_only: bool = False) -> int:
    """Mark the finished outputs that name a model or maker as awaiting the evaluator's decision.

    ``unchecked_only`` (what :func:`units_build` asks, per generation batch) looks only at
    outputs never checked; a full scan (the "Check again" button, after a candidate was added or
    renamed) looks again at every output with no decision yet.  Kept and excluded outputs keep
    their decision.  Returns how many outputs await a decision afterwards among those looked at.
    """
    outputs = Output.objects.filter(study=study, status=Output.Status.DONE)
    if prompt_ids is not None:
        outputs = outputs.filter(prompt_id__in=list(prompt_ids))
    states = [Output.Identity.UNCHECKED] if unchecked_only else [
        Output.Identity.UNCHECKED, Output.Identity.CLEAN, Output.Identity.FLAGGED]
    outputs = outputs.filter(identity__in=states)
    pattern = None
    flagged, clean = [], []
    for pk, text in outputs.values_list("pk", "text").iterator(chunk_size=2000):
        pattern = pattern or identity_pattern(study)
        (flagged if pattern.search(text or "") else clean).append(pk)
    for state, ids in ((Output.Identity.FLAGGED, flagged), (Output.Identity.CLEAN, clean)):
        for i in range(0, len(ids), 2000):
            Output.objects.filter(pk__in=ids[i:i + 2000], identity__in=states).update(identity=state)
    return len(flagged)


IDENTITY_DECISIONS = (Output.Identity.KEPT, Output.Identity.EXCLUDED)


def output_identity_decide(*, output: Output, decision: str, actor=None) -> bool:
    """Keep an output that names a model, or exclude it from pairs; returns whether anything changed.

    Excluding closes its pairs as hiding a candidate does (``needed`` = 0, so no lease picks
    them); judgments already given stay.  Keeping an output that was excluded opens its pairs
    again with the study's overlap, unless they stay closed for another reason (a hidden
    candidate, the other output excluded, a tie by rule).  Each decision is audit-logged.
    """
    if decision not in IDENTITY_DECISIONS:
        raise ServiceError(f"decision must be one of: {', '.join(IDENTITY_DECISIONS)}; got {decision!r}")
    study = output.study
    with transaction.atomic():
        overlap = Study.objects.select_for_update().values_list("overlap", flat=True).get(pk=study.pk)
        before = Output.objects.filter(pk=output.pk).values_list("identity", flat=True).get()
        if before == decision:
            return False
        Output.objects.filter(pk=output.pk).update(identity=decision)
        units = Unit.objects.filter(study=study).filter(Q(output_a=output) | Q(output_b=output))
        if decision == Output.Identity.EXCLUDED:
            changed = units.filter(taken__lt=F("needed")).count()
            units.update(needed=0)
            action = audit.Action.OUTPUT_IDENTITY_EXCLUDED
        else:
            hidden = list(Candidate.objects.filter(study=study, hidden=True).values_list("pk", flat=True))
            opening = _reopenable(units.exclude(cand_lo__in=hidden).exclude(cand_hi__in=hidden))
            changed = opening.filter(taken__lt=overlap).count() if before == Output.Identity.EXCLUDED else 0
            if before == Output.Identity.EXCLUDED:
                opening.update(needed=F("extra") + overlap)
            action = audit.Action.OUTPUT_IDENTITY_KEPT
        target = f"{output.candidate.name} on prompt {output.prompt.external_id}"
        audit.record(study, actor, action, target,
                     {"decision": audit.change(Output.Identity(before).label, Output.Identity(decision).label),
                      "output": output.pk, "sample": output.sample_index,
                      ("pairs_closed" if decision == Output.Identity.EXCLUDED else "pairs_reopened"): changed})
    output.identity = decision
    return True
