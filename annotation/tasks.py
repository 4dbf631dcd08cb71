"""Celery tasks for generation: ids in, rows re-read, one service called."""
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from . import heartbeat, services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=settings.EVALSITE_GENERATION_SOFT_TIME_LIMIT,
             time_limit=settings.EVALSITE_GENERATION_TIME_LIMIT)
def generate_outputs(self, candidate_id: int, output_ids: list[int]) -> int:
    """Generate one batch of a candidate's outputs.

    The task id is the claim: if a worker dies halfway the message is redelivered with
    the same id, which reclaims its own running outputs; finished ones are skipped, so
    a re-run writes no duplicate.  The claim also names this worker start, so that if the
    whole worker dies the others queue its outputs again (``annotation.heartbeat``).
    """
    claim = self.request.id or "eager"
    try:
        return services.generation_run(candidate_id=candidate_id, output_ids=output_ids, claim=claim,
                                       worker=heartbeat.current_worker_id())
    except SoftTimeLimitExceeded:
        services.generation_fail(output_ids=output_ids, claim=claim, error="timed out (task time limit)")
        raise


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, soft_time_limit=60, time_limit=90)
def check_candidate(self, candidate_id: int) -> str:
    """Look, on a generation worker, for the model a pending candidate names.

    Runs on the generation queue because only those machines may see the model roots (a
    GPU-only mount) or the Hugging Face cache. It only reads directory entries, so it is
    fast; it records ``ok`` or ``failed`` with the reason, and a re-run changes nothing.
    """
    return services.candidate_check_run(candidate_id=candidate_id, worker=self.request.hostname or "")
