"""Celery tasks for aggregation (queue ``aggregation``): ids in, rows re-read, one service called."""
from celery import shared_task
from django.conf import settings

from . import selectors, services


@shared_task(acks_late=True, soft_time_limit=settings.EVALSITE_AGGREGATION_SOFT_TIME_LIMIT,
             time_limit=settings.EVALSITE_AGGREGATION_TIME_LIMIT)
def recompute_ratings(study_id: int, slice_key: str = selectors.ALL) -> int | None:
    """Claim a slice's pending refresh request and recompute its leaderboard snapshot.

    Enqueued only by :func:`arena.services.ratings_request`; a no-op when another run
    already claimed the request, so a duplicate delivery costs one UPDATE.
    """
    snapshot = services.ratings_refresh(study_id=study_id, slice_key=slice_key)
    return snapshot.n_judgments if snapshot else None


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=settings.EVALSITE_GENERATION_SOFT_TIME_LIMIT,
             time_limit=settings.EVALSITE_GENERATION_TIME_LIMIT)
def run_judge(self, judge_id: int) -> str:
    """Ask an LLM judge about the study's units it has not answered; sent to the generation
    queue by :func:`arena.judging.judge_run_start` (a judge is a model, like a candidate).

    The task id is the claim: a second delivery does nothing, a redelivery after a dead
    worker takes the run up again, and either way only units without a verdict are asked.
    """
    from . import judging

    return judging.judge_run_execute(judge_id=judge_id, claim=self.request.id or "eager")
