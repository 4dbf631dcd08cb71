"""Celery tasks for metric runs: ids in, rows re-read, one service called."""
from celery import shared_task
from django.conf import settings

from . import services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=settings.EVALSITE_GENERATION_SOFT_TIME_LIMIT,
             time_limit=settings.EVALSITE_GENERATION_TIME_LIMIT)
def compute_metric_run(self, run_id: int) -> str:
    """Compute one metric run; sent to the aggregation or the generation queue by
    ``services.metric_run_start`` as the metric's weight requires.

    The task id is the claim: a second delivery of a run already taken does nothing, a
    redelivery of the same task after its worker died takes it up again, and either way
    only the outputs without a score are scored.
    """
    return services.metric_run_execute(run_id=run_id, claim=self.request.id or "eager")
