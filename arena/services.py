"""Recompute and store a study's leaderboard snapshot (run in a worker, never on a request)."""
from __future__ import annotations

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import ratings, selectors
from .models import RatingSnapshot

# Used only when the plain maximum-likelihood fit does not exist (a model that never
# loses, or a comparison graph in pieces); the page states it when it is used.
FALLBACK_REGULARIZATION = 0.01


def ratings_recompute(*, study_id: int, force: bool = False, rounds: int | None = None) -> RatingSnapshot | None:
    """Fit Bradley-Terry with bootstrap intervals on the study's judgments and store it.

    Skips the work when the snapshot already covers the latest judgment (several
    queued recomputes after a burst of votes collapse into one), unless ``force``.
    The bootstrap seed is derived from the data, so the same judgments always give the
    same intervals.
    """
    latest = selectors.latest_judgment_id(study_id)
    current = RatingSnapshot.objects.filter(study_id=study_id, slice_key="all", method="bt").first()
    if current and current.last_judgment_id >= latest and not force:
        return current
    cells = selectors.battle_cells(study_id)
    payload = leaderboard_payload(cells, rounds=rounds or settings.EVALSITE_BOOTSTRAP_ROUNDS,
                                  seed=study_id * 1_000_003 + cells.last_judgment_id)
    with transaction.atomic():
        snapshot, _ = RatingSnapshot.objects.update_or_create(
            study_id=study_id,
            slice_key="all",
            method="bt",
            defaults={
                "payload": payload,
                "n_judgments": cells.n_judgments,
                "last_judgment_id": cells.last_judgment_id,
                "computed_at": timezone.now(),
            },
        )
    return snapshot


def leaderboard_payload(cells: selectors.BattleCells, *, rounds: int, seed: int) -> dict:
    """Plain-JSON leaderboard from aggregated battle cells."""
    payload: dict = {"rounds": rounds, "seed": seed, "n_battles": int(sum(cells.count)),
                     "regularization": 0.0, "note": "", "rows": []}
    if not cells.count:
        payload["note"] = "No judgments yet."
        return payload
    used = sorted(set(cells.a) | set(cells.b))
    if len(used) < 2:
        payload["note"] = "Ratings need judgments between at least two candidates."
        return payload
    position = {old: new for new, old in enumerate(used)}
    counts = ratings.counts_from_cells(
        [cells.models[i] for i in used], [position[i] for i in cells.a], [position[j] for j in cells.b],
        cells.outcome, cells.count,
    )
    try:
        result = ratings.leaderboard(counts, rounds=rounds, rng=np.random.default_rng(seed))
    except ratings.RatingError as exc:
        result = ratings.leaderboard(counts, rounds=rounds, rng=np.random.default_rng(seed),
                                     regularization=FALLBACK_REGULARIZATION)
        payload["regularization"] = FALLBACK_REGULARIZATION
        payload["note"] = (
            f"The plain maximum-likelihood fit does not exist ({exc}); ratings use a weak "
            f"Gaussian prior (L2 penalty {FALLBACK_REGULARIZATION} on log-strengths), which pulls "
            "undefeated or unconnected models towards the mean."
        )
    else:
        if result.fallback_rounds:
            payload["note"] = (
                f"{result.fallback_rounds} of {rounds} bootstrap resamples left a model undefeated; those "
                f"rounds were fitted with a weak prior (L2 penalty {result.fallback_regularization}), "
                "so the intervals are slightly narrower than a plain fit would give."
            )
    payload["rows"] = [
        {
            "model": r.model, "rating": r.rating, "lower": r.lower, "upper": r.upper,
            "median": r.median, "rank": r.rank, "battles": r.battles, "wins": r.wins,
            "losses": r.losses, "ties": r.ties, "both_bad": r.both_bad,
            "win_rate": r.win_rate, "both_bad_rate": r.both_bad_rate,
        }
        for r in result.ratings
    ]
    order = [counts.models.index(r.model) for r in result.ratings]
    rating_by_model = np.array([r.rating for r in result.ratings])
    observed = ratings.observed_win_matrix(counts)[np.ix_(order, order)]
    payload["models"] = [r.model for r in result.ratings]
    payload["predicted"] = ratings.predicted_win_matrix(rating_by_model).round(4).tolist()
    payload["observed"] = [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in observed]
    return payload
