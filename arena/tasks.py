from celery import shared_task

from . import selectors, services


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def recompute_ratings(study_id: int, slice_key: str = selectors.ALL, force: bool = False) -> int:
    """Refresh a slice's leaderboard snapshot; a no-op when it is already current.

    The "all" slice also advances the online-Elo preview and queues the other slices
    that someone has opened before, each as its own task (they can run in parallel).
    """
    snapshot = services.ratings_recompute(study_id=study_id, slice_key=slice_key, force=force)
    if slice_key == selectors.ALL:
        services.online_elo_update(study_id=study_id)
        for key in services.stale_slices(study_id):
            recompute_ratings.delay(study_id, key)
    return snapshot.n_judgments
