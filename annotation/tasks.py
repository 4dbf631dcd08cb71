"""Celery tasks for generation: ids in, rows re-read, one service called."""
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from . import services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=settings.EVALSITE_GENERATION_SOFT_TIME_LIMIT,
             time_limit=settings.EVALSITE_GENERATION_TIME_LIMIT)
def generate_outputs(self, candidate_id: int, output_ids: list[int]) -> int:
    """Generate one batch of a candidate's outputs.

    The task id is the claim: if a worker dies halfway the message is redelivered with
    the same id, which reclaims its own running outputs; finished ones are skipped, so
    a re-run writes no duplicate.
    """
    claim = self.request.id or "eager"
    try:
        return services.generation_run(candidate_id=candidate_id, output_ids=output_ids, claim=claim)
    except SoftTimeLimitExceeded:
        services.generation_fail(output_ids=output_ids, claim=claim, error="timed out (task time limit)")
        raise
