"""Reads that span relations, turned into plain data for templates and the API."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Avg, Count, Q, Sum

from .models import Candidate, Output, Study


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


def generation_progress(study: Study) -> list[CandidateProgress]:
    rows = (
        Candidate.objects.filter(study=study)
        .annotate(
            total=Count("outputs"),
            done=Count("outputs", filter=Q(outputs__status=Output.Status.DONE)),
            failed=Count("outputs", filter=Q(outputs__status=Output.Status.FAILED)),
            running=Count("outputs", filter=Q(outputs__status=Output.Status.RUNNING)),
            pending=Count("outputs", filter=Q(outputs__status__in=[Output.Status.PENDING, Output.Status.QUEUED])),
            mean_latency=Avg("outputs__latency_ms", filter=Q(outputs__status=Output.Status.DONE)),
            tokens=Sum("outputs__completion_tokens"),
            cost=Sum("outputs__cost"),
        )
        .order_by("name")
    )
    return [
        CandidateProgress(
            candidate_id=c.pk, name=c.name, backend=c.backend, total=c.total, done=c.done,
            failed=c.failed, running=c.running, pending=c.pending,
            mean_latency_ms=c.mean_latency, tokens=c.tokens or 0, cost=c.cost,
        )
        for c in rows
    ]


def failed_outputs(study: Study, limit: int = 50):
    return list(
        Output.objects.filter(study=study, status=Output.Status.FAILED)
        .select_related("candidate", "prompt")
        .order_by("candidate__name", "prompt__position")[:limit]
    )


def generation_finished(progress: list[CandidateProgress]) -> bool:
    return bool(progress) and all(p.pending == 0 and p.running == 0 for p in progress)


def generation_pending(study_id: int) -> bool:
    """Whether any output of the study is still to be generated (one indexed EXISTS)."""
    return Output.objects.filter(
        study_id=study_id, status__in=[Output.Status.PENDING, Output.Status.QUEUED, Output.Status.RUNNING]
    ).exists()
