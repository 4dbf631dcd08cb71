"""Reads that span relations, turned into plain data for templates and the API."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Avg, Count, Q, Sum
from django.utils import timezone

from .models import Candidate, Invitation, Output, Prompt, Study, WorkerHeartbeat


@dataclass(frozen=True)
class CandidateProgress:
    candidate_id: int
    name: str
    backend: str
    total: int
    done: int
    failed: int
    running: int
    pending: int
    mean_latency_ms: float | None
    tokens: int
    cost: float | None
    stuck: int = 0  # running longer than the task time limit, or held by a worker that is gone
    expected: int = 0  # outputs the study asks of every candidate: prompts x samples per prompt
    prompts: int = 0  # the study's prompts
    prompts_covered: int = 0  # prompts with at least one finished output of this candidate
    missing_prompts: tuple[str, ...] = ()  # the first few prompts without one, when nothing is in flight
    hidden: bool = False  # hidden from new pairs

    @property
    def missing(self) -> int:
        return self.prompts - self.prompts_covered

    @property
    def missing_more(self) -> int:
        """Missing prompts beyond those named."""
        return max(0, self.missing - len(self.missing_prompts))


def workers_gone(now: datetime):
    """Worker starts that are over: stopped, replaced under their node name, or silent too long."""
    dead_after = timedelta(seconds=settings.EVALSITE_WORKER_DEAD_SECONDS)
    return WorkerHeartbeat.objects.filter(Q(stopped_at__isnull=False) | Q(beat_at__lt=now - dead_after))


def workers_alive(now: datetime | None = None) -> int:
    """How many worker processes have beaten within ``EVALSITE_WORKER_DEAD_SECONDS``."""
    dead_after = timedelta(seconds=settings.EVALSITE_WORKER_DEAD_SECONDS)
    now = now or timezone.now()
    return WorkerHeartbeat.objects.filter(stopped_at__isnull=True, beat_at__gte=now - dead_after).count()


def stuck_q(now: datetime, prefix: str = "") -> Q:
    """Outputs that are stuck: running for longer than the hard task time limit (the task was
    killed), or held (received or running) by a worker that is gone.  A live worker's sweep
    queues them again within a heartbeat or so (a minute past the limit, for clock skew); the
    page offers Retry meanwhile."""
    limit = timedelta(seconds=settings.EVALSITE_GENERATION_TIME_LIMIT)
    status, claimed_at, claimed_by = (f"{prefix}status", f"{prefix}claimed_at", f"{prefix}claimed_by")
    return (Q(**{status: Output.Status.RUNNING, f"{claimed_at}__lt": now - limit})) | (
        Q(**{f"{status}__in": [Output.Status.RUNNING, Output.Status.QUEUED]})
        & ~Q(**{claimed_by: ""})
        & Q(**{f"{claimed_by}__in": workers_gone(now).values("worker_id")})
    )


MISSING_SHOWN = 5


def generation_progress(study: Study) -> list[CandidateProgress]:
    """Per candidate: outputs by state, and coverage of the study's prompts.

    ``done / expected`` counts against every prompt of the study (times samples per
    prompt), so an imported file that covers 50 of 166 prompts reads 50 / 166; once
    nothing is queued or running for a candidate, the first few prompts it lacks are named.
    """
    now = timezone.now()
    n_prompts = study.prompts.count()
    stuck = stuck_q(now, prefix="outputs__")
    rows = (
        Candidate.objects.filter(study=study)
        .annotate(
            total=Count("outputs"),
            done=Count("outputs", filter=Q(outputs__status=Output.Status.DONE)),
            failed=Count("outputs", filter=Q(outputs__status=Output.Status.FAILED)),
            running=Count("outputs", filter=Q(outputs__status=Output.Status.RUNNING) & ~stuck),
            stuck=Count("outputs", filter=stuck),
            pending=Count("outputs", filter=Q(outputs__status__in=[Output.Status.PENDING, Output.Status.QUEUED])
                          & ~stuck),
            mean_latency=Avg("outputs__latency_ms", filter=Q(outputs__status=Output.Status.DONE)),
            tokens=Sum("outputs__completion_tokens"),
            cost=Sum("outputs__cost"),
            covered=Count("outputs__prompt", filter=Q(outputs__status=Output.Status.DONE), distinct=True),
        )
        .order_by("name")
    )
    result = []
    for c in rows:
        missing: tuple[str, ...] = ()
        idle = not (c.pending or c.running or c.stuck)
        if c.covered < n_prompts and idle and (c.total or c.backend == Candidate.Backend.IMPORTED):
            missing = _missing_prompts(study, c.pk)
        result.append(CandidateProgress(
            candidate_id=c.pk, name=c.name, backend=c.backend, total=c.total, done=c.done,
            failed=c.failed, running=c.running, pending=c.pending,
            mean_latency_ms=c.mean_latency, tokens=c.tokens or 0, cost=c.cost, stuck=c.stuck,
            expected=n_prompts * study.samples_per_prompt, prompts=n_prompts, prompts_covered=c.covered,
            missing_prompts=missing, hidden=c.hidden,
        ))
    return result


def _missing_prompts(study: Study, candidate_id: int) -> tuple[str, ...]:
    """The ids of the first prompts (in upload order) with no finished output of the candidate."""
    covered = Output.objects.filter(candidate_id=candidate_id, status=Output.Status.DONE).values("prompt_id")
    return tuple(
        Prompt.objects.filter(study=study).exclude(pk__in=covered).order_by("position")
        .values_list("external_id", flat=True)[:MISSING_SHOWN]
    )


def failed_outputs(study: Study, limit: int = 50):
    return list(
        Output.objects.filter(study=study, status=Output.Status.FAILED)
        .select_related("candidate", "prompt")
        .order_by("candidate__name", "prompt__position")[:limit]
    )


def stuck_outputs(study: Study, limit: int = 50):
    return list(
        Output.objects.filter(Q(study=study) & stuck_q(timezone.now()))
        .select_related("candidate", "prompt")
        .order_by("candidate__name", "prompt__position")[:limit]
    )


def generation_finished(progress: list[CandidateProgress]) -> bool:
    return bool(progress) and all(p.pending == 0 and p.running == 0 and p.stuck == 0 for p in progress)


def generation_pending(study_id: int) -> bool:
    """Whether any output of the study is still to be generated (one indexed EXISTS)."""
    return Output.objects.filter(
        study_id=study_id, status__in=[Output.Status.PENDING, Output.Status.QUEUED, Output.Status.RUNNING]
    ).exists()



def invitation_for_token(token: str) -> Invitation | None:
    """The invitation a link's token opens (with its study), or ``None``."""
    return Invitation.objects.select_related("study").filter(token_hash=Invitation.hash_token(token)).first()


def study_invitations(study: Study, limit: int = 50) -> list[Invitation]:
    """The study's newest invitations, each with ``state`` set ("open", or why it is not)."""
    now = timezone.now()
    invitations = list(Invitation.objects.filter(study=study).select_related("created_by")[:limit])
    for inv in invitations:
        inv.current_state = inv.state(now)
    return invitations
