"""Every state change of a study, in one place.

Views, the REST API, Celery tasks and management commands all call these functions;
none of them writes study rows on its own.
"""
from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import combinations

from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from . import uploads
from .generation import base as generation_base
from .models import (
    Assignment,
    Candidate,
    Judgment,
    Output,
    Prompt,
    PromptTag,
    Study,
    StudyMember,
    Unit,
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
    prompts_data: bytes,
    prompts_filename: str,
    description: str = "",
    overlap: int = 1,
    samples_per_prompt: int = 1,
    generation_settings: dict | None = None,
    annotators: Iterable = (),
    managers: Iterable = (),
    adaptive_sampling: bool = False,
) -> Study:
    """Create a study with its prompt set; the upload is validated whole first.

    Raises ``uploads.UploadError`` (nothing written) when any prompt row is bad.
    """
    rows = uploads.parse_prompts(prompts_data, prompts_filename).rows
    gen = generation_settings_validate(generation_settings or {})
    if overlap < 1:
        raise ServiceError("overlap must be at least 1")
    with transaction.atomic():
        study = Study.objects.create(
            name=name,
            description=description,
            created_by=created_by,
            overlap=overlap,
            samples_per_prompt=samples_per_prompt,
            generation_settings=gen,
            adaptive_sampling=adaptive_sampling,
        )
        StudyMember.objects.create(study=study, user=created_by, role=StudyMember.Role.EVALUATOR)
        _prompts_write(study, rows, start=0)
        for user in annotators:
            member_set(study=study, user=user, role=StudyMember.Role.ANNOTATOR)
        for user in managers:
            member_set(study=study, user=user, role=StudyMember.Role.MANAGER)
    return study


def study_update_settings(*, study: Study, overlap: int, adaptive_sampling: bool) -> Study:
    """Change overlap (applied to every unit, judged ones included) and adaptive sampling."""
    if overlap < 1:
        raise ServiceError("overlap must be at least 1")
    with transaction.atomic():
        Study.objects.filter(pk=study.pk).update(overlap=overlap, adaptive_sampling=adaptive_sampling)
        Unit.objects.filter(study=study).update(needed=overlap)
    study.refresh_from_db()
    return study


def generation_settings_validate(raw: dict) -> dict:
    try:
        return generation_base.GenerationSettings.from_dict(raw).to_dict()
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"generation settings: {exc}") from None


def member_set(*, study: Study, user, role: str, group: str = "") -> StudyMember:
    """Give ``user`` a role in the study (one role per user and study)."""
    if role not in StudyMember.Role.values:
        raise ServiceError(f"unknown role {role!r}")
    member, _ = StudyMember.objects.update_or_create(
        study=study, user=user, defaults={"role": role, "group": group}
    )
    return member


def member_exclude(*, study: Study, user, excluded: bool = True) -> None:
    """Exclude an annotator: the judgments stay, aggregates leave them out."""
    from arena.services import online_elo_reset

    updated = StudyMember.objects.filter(study=study, user=user).update(excluded=excluded)
    if not updated:
        raise ServiceError(f"{user} is not a member of this study")
    online_elo_reset(study_id=study.pk)  # the sequential preview cannot un-count votes; replay it
    _enqueue_ratings(study.pk, force=True)


# --- prompts -------------------------------------------------------------------------


def prompts_import(*, study: Study, data: bytes, filename: str) -> int:
    """Add prompts from an upload; an id that the study already has is an error."""
    rows = uploads.parse_prompts(data, filename).rows
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
    return len(rows)


def _prompts_write(study: Study, rows: Sequence, *, start: int) -> None:
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                study=study,
                external_id=row.external_id,
                text=row.text,
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


def candidate_create(*, study: Study, name: str, backend: str, spec: dict) -> Candidate:
    """Add a candidate model; its spec is checked now, without loading any model."""
    name = name.strip()
    if not name:
        raise ServiceError("a candidate needs a name")
    if backend not in Candidate.Backend.values:
        raise ServiceError(f"unknown backend {backend!r}; use one of {', '.join(Candidate.Backend.values)}")
    if backend != Candidate.Backend.IMPORTED:
        try:
            spec = generation_base.validate_spec(backend, spec)
        except generation_base.BackendError as exc:
            raise ServiceError(f"candidate {name!r}: {exc}") from None
    if study.candidates.filter(name=name).exists():
        raise ServiceError(f"this study already has a candidate named {name!r}")
    try:
        with transaction.atomic():
            return Candidate.objects.create(study=study, name=name, backend=backend, spec=spec)
    except IntegrityError:
        raise ServiceError(f"this study already has a candidate named {name!r}") from None


def outputs_import(*, candidate: Candidate, data: bytes, filename: str) -> int:
    """Load an imported candidate's outputs; validated whole, written in one transaction.

    Re-importing replaces the text of outputs with the same (prompt, sample index).
    """
    if candidate.backend != Candidate.Backend.IMPORTED:
        raise ServiceError(f"{candidate.name!r} generates its outputs; only imported candidates take uploads")
    study = candidate.study
    prompts = dict(study.prompts.values_list("external_id", "pk"))
    rows = uploads.parse_imported_outputs(data, filename, known_prompt_ids=set(prompts)).rows
    now = timezone.now()
    with transaction.atomic():
        for row in rows:
            Output.objects.update_or_create(
                study=study,
                prompt_id=prompts[row.prompt_id],
                candidate=candidate,
                sample_index=row.sample_index,
                defaults={
                    "status": Output.Status.DONE,
                    "text": row.text,
                    "error": "",
                    "latency_ms": row.latency_ms,
                    "cost": row.cost,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "finished_at": now,
                    "settings": {"imported_from": filename},
                },
            )
    units_build(study=study)
    return len(rows)


def _output_seed(study: Study, sample_index: int) -> int:
    return int(study.generation_settings.get("seed", 0)) + sample_index


def generation_start(*, study: Study, candidates: Sequence[Candidate] | None = None) -> int:
    """Create the pending outputs of every generating candidate and enqueue their batches.

    Safe to press twice: outputs are unique per (prompt, candidate, sample), and only
    pending outputs that no task holds are enqueued.  Returns the number of outputs queued.
    """
    candidates = list(candidates if candidates is not None else study.candidates.all())
    generating = [c for c in candidates if c.backend != Candidate.Backend.IMPORTED]
    prompt_ids = list(study.prompts.order_by("position").values_list("pk", flat=True))
    if not prompt_ids:
        raise ServiceError("the study has no prompts")
    Output.objects.bulk_create(
        [
            Output(
                study=study,
                prompt_id=pid,
                candidate=cand,
                sample_index=s,
                seed=_output_seed(study, s),
                settings=study.generation_settings,
            )
            for cand in generating
            for pid in prompt_ids
            for s in range(study.samples_per_prompt)
        ],
        ignore_conflicts=True,
    )
    _release_stale_claims(study)
    queued = 0
    for cand in generating:
        pending = list(
            Output.objects.filter(candidate=cand, status=Output.Status.PENDING, claim="")
            .order_by("prompt__position", "sample_index")
            .values_list("pk", flat=True)
        )
        batch = int(cand.spec.get("batch_size") or django_settings.EVALSITE_GENERATION_BATCH)
        for i in range(0, len(pending), batch):
            _enqueue_generation(cand.pk, pending[i : i + batch])
        queued += len(pending)
    return queued


def _release_stale_claims(study: Study) -> int:
    """Free outputs whose task died without a redelivery (e.g. a killed worker whose broker
    cannot redeliver): running for longer than the hard task time limit means nobody holds them."""
    limit = timedelta(seconds=django_settings.CELERY_TASK_TIME_LIMIT + 60)
    return Output.objects.filter(
        study=study, status=Output.Status.RUNNING, claimed_at__lt=timezone.now() - limit
    ).update(status=Output.Status.PENDING, claim="")


def _enqueue_generation(candidate_id: int, output_ids: list[int]) -> None:
    from .tasks import generate_outputs

    generate_outputs.delay_on_commit(candidate_id, output_ids)


def output_retry(*, output: Output) -> None:
    """Put a failed output back in the queue."""
    updated = Output.objects.filter(pk=output.pk, status=Output.Status.FAILED).update(
        status=Output.Status.PENDING, error="", claim=""
    )
    if not updated:
        raise ServiceError("only a failed output can be retried")
    _enqueue_generation(output.candidate_id, [output.pk])


def outputs_retry_failed(*, study: Study) -> int:
    failed = list(study.outputs.filter(status=Output.Status.FAILED).select_related("candidate"))
    for output in failed:
        output_retry(output=output)
    return len(failed)


def generation_claim(*, output_ids: Sequence[int], claim: str) -> list[int]:
    """Claim outputs for one task run with a conditional UPDATE; returns the claimed ids.

    A redelivered task (same id after a worker died) reclaims its own running outputs;
    outputs that are done, or held by another run, are left alone.
    """
    with transaction.atomic():
        Output.objects.filter(pk__in=output_ids).filter(
            Q(status=Output.Status.PENDING) | Q(status=Output.Status.RUNNING, claim=claim)
        ).update(
            status=Output.Status.RUNNING, claim=claim, claimed_at=timezone.now(), attempts=F("attempts") + 1
        )
    return list(
        Output.objects.filter(pk__in=output_ids, status=Output.Status.RUNNING, claim=claim)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def generation_record(*, output_id: int, claim: str, result) -> bool:
    """Write one generation result onto the output this run claimed."""
    fields = {
        "latency_ms": result.latency_ms,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost": result.cost,
        "finished_at": timezone.now(),
    }
    if result.error:
        fields.update(status=Output.Status.FAILED, error=result.error, claim="")
    else:
        fields.update(status=Output.Status.DONE, text=result.text or "", error="")
    return bool(
        Output.objects.filter(pk=output_id, claim=claim, status=Output.Status.RUNNING).update(**fields)
    )


def generation_fail(*, output_ids: Sequence[int], claim: str, error: str) -> int:
    return Output.objects.filter(
        pk__in=output_ids, claim=claim, status=Output.Status.RUNNING
    ).update(status=Output.Status.FAILED, error=error, claim="", finished_at=timezone.now())


def generation_run(*, candidate_id: int, output_ids: Sequence[int], claim: str) -> int:
    """Generate the claimed outputs of one batch; the body of the Celery task."""
    candidate = Candidate.objects.select_related("study").filter(pk=candidate_id).first()
    if candidate is None:
        return 0
    claimed = generation_claim(output_ids=output_ids, claim=claim)
    if not claimed:
        return 0
    outputs = list(Output.objects.filter(pk__in=claimed).select_related("prompt").order_by("pk"))
    try:
        settings_obj = generation_base.GenerationSettings.from_dict(candidate.study.generation_settings)
        backend = generation_base.get_backend(candidate.backend, candidate.spec)
        requests = [
            generation_base.GenerationRequest(key=o.pk, prompt=o.prompt.text, seed=o.seed or 0)
            for o in outputs
        ]
        results = backend.generate(requests, settings_obj)
    except Exception as exc:  # a broken spec or model fails the batch, visibly
        log.exception("generation failed for candidate %s", candidate_id)
        generation_fail(output_ids=claimed, claim=claim, error=f"{type(exc).__name__}: {exc}")
        return 0
    written = sum(
        generation_record(output_id=r.key, claim=claim, result=r) for r in results
    )
    units_build(study=candidate.study, prompt_ids={o.prompt_id for o in outputs})
    return written


# --- rating units, assignments, judgments -------------------------------------------


def units_build(*, study: Study, prompt_ids: Iterable[int] | None = None) -> int:
    """Create a blind pairwise unit for every pair of finished outputs of a prompt.

    Pairs use the same sample index; idempotent (unique pair constraint).  ``prompt_ids``
    limits the work to those prompts (a generation batch touches only its own), so a
    large study is not rescanned after every batch.  Returns the number of units the
    study has afterwards.
    """
    done = Output.objects.filter(study=study, status=Output.Status.DONE)
    if prompt_ids is not None:
        done = done.filter(prompt_id__in=list(prompt_ids))
    done = (
        done
        .values_list("pk", "prompt_id", "sample_index")
        .order_by("prompt_id", "sample_index", "pk")
    )
    groups: dict[tuple[int, int], list[int]] = {}
    for pk, prompt_id, sample in done:
        groups.setdefault((prompt_id, sample), []).append(pk)
    units = [
        Unit(study=study, prompt_id=prompt_id, output_a_id=a, output_b_id=b, needed=study.overlap)
        for (prompt_id, _), ids in groups.items()
        for a, b in combinations(sorted(ids), 2)
    ]
    Unit.objects.bulk_create(units, ignore_conflicts=True, batch_size=500)
    return study.units.count()


def _live_filter(now: datetime, study_id: int, prefix: str = "assignments__") -> Q:
    """Assignments that hold a place on their unit: judged or leased, by someone not excluded.

    An excluded annotator's judgments stay in the database but free their places, so the
    pairs they judged are served to others.
    """
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    live = Q(**{f"{prefix}submitted_at__isnull": False}) | Q(**{f"{prefix}expires_at__gt": now})
    return live & ~Q(**{f"{prefix}annotator__in": excluded})


def assignment_next(*, study: Study, annotator, now: datetime | None = None) -> Assignment | None:
    """Lease the next unit for an annotator, or return the lease they already hold.

    Units with the fewest live leases and judgments come first, so overlap fills evenly;
    a unit is never leased beyond ``needed`` (live leases plus judgments).  The unit
    row is locked (``SKIP LOCKED`` on PostgreSQL; SQLite serialises writers) and its
    count rechecked before the lease is written.
    """
    now = now or timezone.now()
    lease = timedelta(minutes=django_settings.EVALSITE_LEASE_MINUTES)
    held = (
        Assignment.objects.filter(
            unit__study=study, annotator=annotator, submitted_at__isnull=True, expires_at__gt=now
        )
        .order_by("leased_at")
        .first()
    )
    if held:
        return held
    done_by_me = Assignment.objects.filter(annotator=annotator, submitted_at__isnull=False).values("unit")
    open_units = (
        Unit.objects.filter(study=study)
        .exclude(pk__in=done_by_me)
        .annotate(live=Count("assignments", filter=_live_filter(now, study.pk)))
        .filter(live__lt=F("needed"))
        .order_by("live", "pk")
        .values_list("pk", flat=True)[: 512 if study.adaptive_sampling else 64]
    )
    choices = list(open_units)
    random.shuffle(choices)
    if study.adaptive_sampling and len(choices) > 1:
        choices = _adaptive_order(study, choices)
    for unit_id in choices:
        with transaction.atomic():
            unit = Unit.objects.select_for_update(skip_locked=True).filter(pk=unit_id).first()
            if unit is None:
                continue
            taken = unit.assignments.filter(_live_filter(now, study.pk, prefix="")).exclude(annotator=annotator)
            if taken.count() >= unit.needed:
                continue
            left_a = unit.assignments.filter(left_is_a=True).count()
            left_b = unit.assignments.filter(left_is_a=False).count()
            left_is_a = secrets.randbelow(2) == 0 if left_a == left_b else left_a < left_b
            assignment, _ = Assignment.objects.update_or_create(
                unit=unit,
                annotator=annotator,
                defaults={
                    "token": secrets.token_urlsafe(32),
                    "left_is_a": left_is_a,
                    "leased_at": now,
                    "expires_at": now + lease,
                },
            )
            return assignment
    return None


def _adaptive_order(study: Study, unit_ids: list[int]) -> list[int]:
    """Order open units so the pair whose next vote most shrinks rating uncertainty comes first.

    Uses the last leaderboard snapshot (ratings, bootstrap covariance, battles per pair)
    and :func:`arena.sampling.pair_scores`; pairs with a model not yet rated go first.
    Without a snapshot the order stays random (uniform sampling).
    """
    import numpy as np

    from arena import sampling
    from arena.services import adaptive_state

    state = adaptive_state(study.pk)
    if state is None:
        return unit_ids
    models, rating, cov, pair_battles = state
    names = dict(Candidate.objects.filter(study=study).values_list("pk", "name"))
    index = {name: i for i, name in enumerate(models)}
    rows = Unit.objects.filter(pk__in=unit_ids).values_list(
        "pk", "output_a__candidate_id", "output_b__candidate_id")
    known, unknown = [], []
    for pk, ca, cb in rows:
        i, j = index.get(names[ca]), index.get(names[cb])
        (known if i is not None and j is not None else unknown).append((pk, i, j))
    if not known:
        return unit_ids
    scores = sampling.pair_scores(rating, pair_battles, [(i, j) for _, i, j in known], cov=cov)
    jitter = np.random.default_rng().random(len(known)) * 1e-9  # random among equal scores
    ranked = [known[k][0] for k in np.argsort(-(scores + jitter))]
    random.shuffle(unknown)
    return [pk for pk, _, _ in unknown] + ranked


@dataclass(frozen=True)
class TaskView:
    """What an annotator's page may show: no candidate name, id or backend."""

    token: str
    prompt: str
    left: str
    right: str
    done: int
    remaining: int


SIDE_CHOICES = ("left", "right", "tie", "both_bad")


def task_view(*, assignment: Assignment) -> TaskView:
    unit = Unit.objects.select_related("prompt", "output_a", "output_b").get(pk=assignment.unit_id)
    first, second = (unit.output_a, unit.output_b) if assignment.left_is_a else (unit.output_b, unit.output_a)
    done = Judgment.objects.filter(study_id=unit.study_id, annotator_id=assignment.annotator_id).count()
    return TaskView(
        token=assignment.token,
        prompt=unit.prompt.text,
        left=first.text,
        right=second.text,
        done=done,
        remaining=annotator_remaining(study_id=unit.study_id, annotator=assignment.annotator),
    )


def annotator_remaining(*, study_id: int, annotator, now: datetime | None = None) -> int:
    now = now or timezone.now()
    done_by_me = Assignment.objects.filter(annotator=annotator, submitted_at__isnull=False).values("unit")
    return (
        Unit.objects.filter(study_id=study_id)
        .exclude(pk__in=done_by_me)
        .annotate(live=Count("assignments", filter=_live_filter(now, study_id) & ~Q(assignments__annotator=annotator)))
        .filter(live__lt=F("needed"))
        .count()
    )


class AlreadySubmitted(ServiceError):
    pass


class LeaseExpired(ServiceError):
    pass


def judgment_submit(
    *,
    assignment: Assignment,
    choice: str,
    rationale: str = "",
    active_ms: int | None = None,
    now: datetime | None = None,
) -> Judgment:
    """Record an annotator's verdict on their assignment, in terms of outputs.

    Repeating the same verdict (a double click, a retried request) returns the first
    judgment; a different verdict on a submitted task is refused.  A lease that expired
    is still accepted while the unit has a free place.
    """
    if choice not in SIDE_CHOICES:
        raise ServiceError(f"unknown choice {choice!r}; use one of {', '.join(SIDE_CHOICES)}")
    now = now or timezone.now()
    if choice == "left":
        outcome = Judgment.Outcome.A if assignment.left_is_a else Judgment.Outcome.B
    elif choice == "right":
        outcome = Judgment.Outcome.B if assignment.left_is_a else Judgment.Outcome.A
    else:
        outcome = Judgment.Outcome.TIE if choice == "tie" else Judgment.Outcome.BOTH_BAD
    try:
        with transaction.atomic():
            locked = Assignment.objects.select_for_update().select_related("unit").get(pk=assignment.pk)
            existing = Judgment.objects.filter(assignment=locked).first()
            if existing is not None:
                return _same_or_refuse(existing, outcome)
            if locked.expires_at <= now:
                taken = locked.unit.assignments.filter(
                    _live_filter(now, locked.unit.study_id, prefix="")
                ).exclude(pk=locked.pk)
                if taken.count() >= locked.unit.needed:
                    raise LeaseExpired("This task's lease expired and someone else has taken it.")
            judgment = Judgment.objects.create(
                assignment=locked,
                study_id=locked.unit.study_id,
                unit=locked.unit,
                annotator_id=locked.annotator_id,
                outcome=outcome,
                left_is_a=locked.left_is_a,
                rationale=rationale.strip()[:5000],
                served_at=locked.leased_at,
                active_ms=active_ms,
            )
            Assignment.objects.filter(pk=locked.pk).update(submitted_at=now)
    except IntegrityError:
        existing = Judgment.objects.get(assignment_id=assignment.pk)
        return _same_or_refuse(existing, outcome)
    _enqueue_ratings(judgment.study_id)
    return judgment


def _same_or_refuse(existing: Judgment, outcome: str) -> Judgment:
    if existing.outcome == outcome:
        return existing
    raise AlreadySubmitted("This task was already submitted with another answer.")


def _enqueue_ratings(study_id: int, force: bool = False) -> None:
    from arena.tasks import recompute_ratings

    recompute_ratings.delay_on_commit(study_id, force=force)


# --- demo users ---------------------------------------------------------------------


def user_ensure(*, username: str, password: str, is_staff: bool = False):
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": is_staff})
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    return user


# --- battles from outside -----------------------------------------------------------

BATTLE_OUTCOMES = {"model_a": Judgment.Outcome.A, "model_b": Judgment.Outcome.B,
                   "tie": Judgment.Outcome.TIE, "tie (bothbad)": Judgment.Outcome.BOTH_BAD}
IMPORT_USERNAME = "battle-import"


def battles_import(*, study: Study, model_a: Sequence[str], model_b: Sequence[str], winner: Sequence[str],
                   source: str, batch_size: int = 5000) -> int:
    """Load pairwise battles judged elsewhere (e.g. Chatbot Arena) into a study as judgments.

    Each battle becomes its own prompt (``<source>#<n>``), one output per side, a unit,
    and a submitted assignment by the inactive user ``battle-import``, so every
    aggregate treats it like a vote cast here.  Models become ``imported`` candidates.
    Importing the same source twice is refused; everything is written in one transaction.
    """
    n = len(winner)
    if not (len(model_a) == len(model_b) == n):
        raise ServiceError("model_a, model_b and winner differ in length")
    bad = next((i for i, w in enumerate(winner) if w not in BATTLE_OUTCOMES), None)
    if bad is not None:
        raise ServiceError(f"battle {bad}: unknown winner {winner[bad]!r}")
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
                Prompt(study=study, external_id=f"{prefix}{i + 1}", text=f"Battle {i + 1} imported from {source}",
                       position=start + i)
                for i in range(lo, hi)
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
                units.append(Unit(study=study, prompt=p, output_a=oa, output_b=ob, needed=1))
                flipped.append(flip)
            units = Unit.objects.bulk_create(units)
            assignments = Assignment.objects.bulk_create([
                Assignment(unit=u, annotator=user, token=secrets.token_urlsafe(32), left_is_a=not flip,
                           leased_at=now, expires_at=now, submitted_at=now)
                for u, flip in zip(units, flipped)
            ])
            judgments = []
            for a, u, flip, i in zip(assignments, units, flipped, range(lo, hi)):
                outcome = BATTLE_OUTCOMES[winner[i]]
                if flip and outcome in (Judgment.Outcome.A, Judgment.Outcome.B):
                    outcome = Judgment.Outcome.B if outcome == Judgment.Outcome.A else Judgment.Outcome.A
                judgments.append(Judgment(assignment=a, study=study, unit=u, annotator=user, outcome=outcome,
                                          left_is_a=not flip, served_at=now))
            Judgment.objects.bulk_create(judgments)
    _enqueue_ratings(study.pk)
    return n
