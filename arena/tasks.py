from celery import shared_task

from . import services


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def recompute_ratings(study_id: int, force: bool = False) -> int:
    """Refresh the study's leaderboard snapshot; a no-op when it is already current."""
    snapshot = services.ratings_recompute(study_id=study_id, force=force)
    return snapshot.n_judgments if snapshot else 0
