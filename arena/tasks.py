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
