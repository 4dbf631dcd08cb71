"""Recompute and store leaderboard snapshots (run in a worker, never on a request)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from annotation.models import Study
from annotation.services import ServiceError

from . import outcomes, ratings, selectors
from .board import Board, BoardRow, LikertBoard
from .models import RatingRequest, RatingSnapshot

log = logging.getLogger(__name__)

# Used only when the plain maximum-likelihood fit does not exist (a model that never
# loses, or a comparison graph in pieces); the page states it when it is used.
FALLBACK_REGULARIZATION = 0.01
BT = "bt"
ONLINE_ELO = "elo_online"
QUALITY = "quality"  # the annotator quality table (slice "all" only)
SUMMARY = "summary"  # the managers' summary: a request key beside the slices, and its snapshot's method
AGREEMENT = "agreement"  # the agreement page's figures: requested and claimed like the summary


def ratings_recompute(*, study_id: int, slice_key: str = selectors.ALL, force: bool = False,
                      rounds: int | None = None) -> RatingSnapshot:
    """Fit Bradley-Terry with bootstrap intervals on one slice of a study and store it, with
    the slice's Likert summaries and tag rates.

    Skips the work when every judgment of the slice has settled into the snapshot, unless
    ``force``.  Counting is incremental: the snapshot keeps the counted cells of every
    judgment up to its settled id, and a refresh counts only the judgments after it
    (:func:`arena.selectors.settled_judgment_id` says why "settled" lags the newest by
    ``EVALSITE_SETTLE_SECONDS``).  A new study version (an exclusion, re-imported outputs)
    or ``force`` counts everything again.  The bootstrap seed is derived from the data,
    so the same judgments give the same intervals.  The Likert part
    (:func:`metrics.selectors.likert_summary`, one ``GROUP BY``) is redone whenever the
    slice's Likert judgments (their count or newest id) or the study's criteria and tags
    differ from what the snapshot summarised; only Likert votes leave the pairwise board as it was.
    """
    from metrics.selectors import likert_config, likert_marker, likert_summary

    from .modes import mode_info

    study = Study.objects.only("version", "likert_criteria", "failure_tags", "ratings_mode").get(pk=study_id)
    version = study.version
    mode = mode_info(study)
    left_out = mode["left_out"]
    current = RatingSnapshot.objects.filter(study_id=study_id, slice_key=slice_key, method=BT).first()
    # A different mode, or a different set of flagged annotators, counts everything again.
    same = (current is not None and not force and current.study_version == version
            and current.payload.get("ratings_mode", {"mode": "all", "left_out": []}).get("left_out") == left_out
            and current.payload.get("ratings_mode", {"mode": "all"}).get("mode") == mode["mode"]
            and current.payload.get("ratings_mode", {}).get("weights", {}) == mode["weights"])
    old = current.board if same else None
    # Nothing to do only when every judgment up to the newest has settled into the cells:
    # a young one may still be joined by an older id committing late.
    pairwise_fresh = (same and old is not None and current.cells is not None
                      and current.settled_judgment_id >= selectors.latest_judgment_id(study_id, slice_key, left_out))
    criteria, tags = likert_config(study)
    wants_likert = bool(criteria or tags)
    if wants_likert:
        marker = likert_marker(study_id, slice_key, left_out)
        likert_fresh = (old is not None and old.likert is not None and list(old.likert.criteria) == criteria
                        and list(old.likert.tags) == tags
                        and (old.likert.n_judgments, old.likert.last_judgment_id) == marker)
    else:
        likert_fresh = old is not None and old.likert is None
    if pairwise_fresh and likert_fresh:
        return current
    weights = {int(k): float(v) for k, v in mode.get("weights", {}).items()}
    likert = (LikertBoard.from_json(likert_summary(study, slice_key, left_out, weights=weights or None))
              if wants_likert else None)
    if pairwise_fresh:  # only the Likert part moved
        with transaction.atomic():
            RatingSnapshot.objects.filter(pk=current.pk).update(
                payload={**replace(old, likert=likert).to_json(), "ratings_mode": mode}, computed_at=timezone.now())
        current.refresh_from_db()
        return current
    if weights:  # competence-weighted: a full pass, float counts, nothing kept to add to
        cells, n_counted, last = selectors.weighted_cells(study_id, slice_key, weights)
        table = replace(selectors.battle_table(study_id, slice_key, cells=cells, last_judgment_id=last),
                        n_judgments=n_counted)
        payload = leaderboard_payload(table, rounds=rounds or settings.EVALSITE_BOOTSTRAP_ROUNDS,
                                      seed=study_id * 1_000_003 + table.last_judgment_id)
        payload["likert"] = likert.to_json() if likert else None
        payload["ratings_mode"] = mode
        with transaction.atomic():
            snapshot, _ = RatingSnapshot.objects.update_or_create(
                study_id=study_id, slice_key=slice_key, method=BT,
                defaults={"payload": payload, "n_judgments": table.n_judgments, "study_version": version,
                          "last_judgment_id": table.last_judgment_id, "computed_at": timezone.now(),
                          "cells": None, "settled_judgment_id": 0},
            )
        return snapshot
    incremental = (same and current.cells is not None)
    base = selectors.Cells.from_bytes(bytes(current.cells)) if incremental else selectors.Cells.empty()
    settled_from = current.settled_judgment_id if incremental else 0
    cutoff = timezone.now() - timedelta(seconds=settings.EVALSITE_SETTLE_SECONDS)
    settled_to = selectors.settled_judgment_id(study_id, slice_key, after_id=settled_from, cutoff=cutoff,
                                               left_out=left_out)
    newly_settled, _ = selectors.judgment_cells(study_id, slice_key, after_id=settled_from, upto_id=settled_to,
                                                left_out=left_out)
    recent, last = selectors.judgment_cells(study_id, slice_key, after_id=settled_to, left_out=left_out)
    settled = base + newly_settled
    table = selectors.battle_table(study_id, slice_key, cells=settled + recent, last_judgment_id=max(last, settled_to))
    payload = leaderboard_payload(table, rounds=rounds or settings.EVALSITE_BOOTSTRAP_ROUNDS,
                                  seed=study_id * 1_000_003 + table.last_judgment_id)
    payload["likert"] = likert.to_json() if likert else None
    payload["ratings_mode"] = mode
    with transaction.atomic():
        snapshot, _ = RatingSnapshot.objects.update_or_create(
            study_id=study_id, slice_key=slice_key, method=BT,
            defaults={"payload": payload, "n_judgments": table.n_judgments, "study_version": version,
                      "last_judgment_id": table.last_judgment_id, "computed_at": timezone.now(),
                      "cells": settled.to_bytes(), "settled_judgment_id": settled_to},
        )
    return snapshot


def ratings_mode_set(*, study: Study, mode: str, actor=None) -> bool:
    """Choose whose judgments count in the study's ratings and Likert means (:mod:`arena.modes`)
    and request a recompute of every slice.  Returns whether the mode changed."""
    from annotation import audit

    allowed = tuple(Study.RatingsMode.values)
    if mode not in allowed:
        raise ServiceError(f"mode must be one of {', '.join(allowed)}, not {mode[:40]!r}")
    with transaction.atomic():
        before = Study.objects.select_for_update().values_list("ratings_mode", flat=True).get(pk=study.pk)
        if before == mode:
            return False
        Study.objects.filter(pk=study.pk).update(ratings_mode=mode)
        audit.record(study, actor, audit.Action.RATINGS_MODE_CHANGED, study.name,
                     {"ratings_mode": audit.change(before, mode)})
        for s in selectors.study_slices(study.pk):
            ratings_request(study_id=study.pk, slice_key=s.key)
    study.ratings_mode = mode
    return True


# Raw SQL: on the vote path this one statement ran slower through the ORM's compiler than in the database.
_FLIP_SQL = (f"UPDATE {RatingRequest._meta.db_table} SET pending = true, requested_at = %s "
             "WHERE study_id = %s AND slice_key = %s AND NOT pending")


def ratings_request(*, study_id: int, slice_key: str = selectors.ALL, vote: bool = False) -> bool:
    """Ask for a refresh of one slice's leaderboard: the one place that requests a recompute.

    Votes, exclusions, imports and the Recompute button all call this.  The request is
    a marker row per (study, slice): the call that flips it from idle to pending (a
    conditional UPDATE; its row count decides) enqueues one task on the ``aggregation``
    queue, delayed so that the "all" slice is refreshed at most once per
    ``EVALSITE_RATINGS_MIN_INTERVAL`` seconds, any other slice once per
    ``EVALSITE_SLICE_MIN_INTERVAL`` and the summary once per
    ``EVALSITE_SUMMARY_MIN_INTERVAL``; calls that find it pending do nothing,
    because the queued task has not yet claimed it and will count their votes.
    ``vote=True`` (the vote path) trusts that the "all" marker exists, as
    :func:`annotation.services.study_create` makes it, and so costs one UPDATE that
    locks nothing while the marker is pending.  Returns whether a task was enqueued.
    """
    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute(_FLIP_SQL, [connection.ops.adapt_datetimefield_value(now), study_id, slice_key])
        flipped = cur.rowcount
    if flipped:
        started = RatingRequest.objects.values_list("started_at", flat=True).get(
            study_id=study_id, slice_key=slice_key)
    else:
        if vote:
            return False
        _, created = RatingRequest.objects.get_or_create(
            study_id=study_id, slice_key=slice_key, defaults={"pending": True, "requested_at": now}
        )
        if not created:
            return False
        started = None
    interval = timedelta(seconds=settings.EVALSITE_RATINGS_MIN_INTERVAL if slice_key == selectors.ALL
                         else settings.EVALSITE_SUMMARY_MIN_INTERVAL if slice_key in (SUMMARY, AGREEMENT)
                         else settings.EVALSITE_SLICE_MIN_INTERVAL)
    countdown = 0.0 if started is None else max(0.0, (started + interval - now).total_seconds())
    from .tasks import recompute_ratings

    transaction.on_commit(lambda: recompute_ratings.apply_async((study_id, slice_key), countdown=countdown))
    return True


def ratings_refresh(*, study_id: int, slice_key: str = selectors.ALL) -> RatingSnapshot | None:
    """The worker's side of :func:`ratings_request`: claim the pending marker, then recompute.

    The claim is a conditional UPDATE, so a task delivered twice or two workers racing
    recompute once; judgments committed before the claim are all counted, and any vote
    after it flips the marker again.  The "all" slice also advances the online-Elo
    preview, refreshes the quality table and requests the study summary, the agreement figures
    and every other slice (each its own task).  The summary (:data:`SUMMARY`, not a slice of judgments but
    requested and claimed the same way) is :func:`metrics.summary.summary_recompute`; the agreement
    figures (:data:`AGREEMENT`, the same) are :func:`agreement_recompute`, a task of their own because
    crowd-kit's models take seconds; when they change whom the study's ratings mode leaves out or how
    it weighs annotators, every slice is requested again.  Returns None when there was nothing to claim.
    """
    claimed = RatingRequest.objects.filter(study_id=study_id, slice_key=slice_key, pending=True).update(
        pending=False, started_at=timezone.now()
    )
    if not claimed:
        return None
    started = time.perf_counter()
    if slice_key == SUMMARY:
        from metrics.summary import summary_recompute

        snapshot = summary_recompute(study_id=study_id)
        log.info("summary of study %s refreshed in %.2f s", study_id, time.perf_counter() - started)
        return snapshot
    if slice_key == AGREEMENT:
        from .modes import mode_info

        study = Study.objects.only("ratings_mode").get(pk=study_id)
        before = mode_info(study)
        snapshot = agreement_recompute(study_id=study_id)
        if mode_info(study) != before:  # the ratings leave out whom it flags, or weigh by its competence
            for s in selectors.study_slices(study_id):
                ratings_request(study_id=study_id, slice_key=s.key)
        log.info("agreement of study %s refreshed in %.2f s", study_id, time.perf_counter() - started)
        return snapshot
    snapshot = ratings_recompute(study_id=study_id, slice_key=slice_key)
    if slice_key == selectors.ALL:
        online_elo_update(study_id=study_id)
        quality_recompute(study_id=study_id)
        ratings_request(study_id=study_id, slice_key=SUMMARY)
        ratings_request(study_id=study_id, slice_key=AGREEMENT)
        for s in selectors.study_slices(study_id)[1:]:
            ratings_request(study_id=study_id, slice_key=s.key)
    log.info("ratings of study %s slice %s refreshed from %s judgments in %.2f s", study_id, slice_key,
             snapshot.n_judgments, time.perf_counter() - started)
    return snapshot


def agreement_recompute(*, study_id: int, force: bool = False) -> RatingSnapshot:
    """The agreement snapshot (:func:`metrics.agreement_service.agreement_recompute`), after the quality table."""
    from metrics.agreement_service import agreement_recompute as recompute

    return recompute(study_id=study_id, force=force)


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _proportion(p: ratings.Proportion) -> dict:
    return {"successes": p.successes, "trials": p.trials, "share": _finite(p.share),
            "lower": _finite(p.lower), "upper": _finite(p.upper)}


def leaderboard_payload(table: selectors.BattleTable, *, rounds: int, seed: int) -> dict:
    """Plain-JSON leaderboard of one slice (a :class:`arena.board.Board`): ratings, matrices, bias checks."""
    empty = Board(rounds=rounds, seed=seed, n_battles=int(table.count.sum()))
    used = np.union1d(table.a, table.b)
    if used.size < 2:
        note = ("No judgments yet." if not table.count.size
                else "Ratings need judgments between at least two candidates.")
        return replace(empty, note=note).to_json()
    models = [table.models[i] for i in used]
    remap = np.full(len(table.models), -1, dtype=np.intp)
    remap[used] = np.arange(used.size)
    a, b = remap[table.a], remap[table.b]
    counts = ratings.counts_from_cells(models, a, b, table.outcome, table.count,
                                       fractional=table.count.dtype.kind == "f")  # weighted by competence
    regularization, note = 0.0, ""
    try:
        board = ratings.leaderboard(counts, rounds=rounds, rng=np.random.default_rng(seed))
    except ratings.RatingError:
        board = ratings.leaderboard(counts, rounds=rounds, rng=np.random.default_rng(seed),
                                    regularization=FALLBACK_REGULARIZATION)
        regularization = FALLBACK_REGULARIZATION
        note = (
            f"{_why_no_plain_fit(counts)}, so the votes alone cannot say how far apart the ratings are. "
            "Until more votes come in, every rating is pulled slightly towards the average (a weak prior)."
        )
    else:
        if board.fallback_rounds:
            note = (
                f"In {board.fallback_rounds} of the {rounds} resamples behind the intervals a model won or lost "
                "every battle; those resamples pull ratings slightly towards the average (a weak prior), so "
                "the intervals are a little narrower than they would otherwise be."
            )
    order = [counts.index(r.model) for r in board]
    best_first = [r.model for r in board]
    observed = ratings.observed_win_matrix(counts)[np.ix_(order, order)]
    return replace(
        empty,
        regularization=regularization,
        note=note,
        models=tuple(best_first),
        rows=tuple(
            BoardRow(model=r.model, rating=r.rating, lower=r.lower, upper=r.upper, median=r.median, rank=r.rank,
                     battles=r.battles, wins=r.wins, losses=r.losses, ties=r.ties, both_bad=r.both_bad,
                     win_rate=_finite(r.win_rate), both_bad_rate=_finite(r.both_bad_rate))
            for r in board
        ),
        observed=tuple(tuple(_finite(v) for v in row) for row in observed),
        predicted=tuple(map(tuple, ratings.predicted_win_matrix(np.array([r.rating for r in board])).round(4).tolist())),
        covariance=tuple(map(tuple, board.covariance[np.ix_(order, order)].round(4).tolist())),
        pair_battles=tuple(map(tuple, counts.pair_battles[np.ix_(order, order)].astype(int).tolist())),
        style=_style_control(counts, models, a, b, table, best_first),
        position_bias=_position_bias(table),
        length_bias=_length_bias(table),
    ).to_json()


def _plain_list(names: list[str], limit: int = 5) -> str:
    shown = names[:limit]
    more = len(names) - len(shown)
    if more:
        return f"{', '.join(shown)} and {more} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def _why_no_plain_fit(counts: ratings.BattleCounts) -> str:
    """Why the plain Bradley-Terry fit has no answer, in words a manager reads."""
    effective = counts.effective_wins
    models = list(counts.models)
    never_lost = [m for k, m in enumerate(models) if effective[k].sum() > 0 and effective[:, k].sum() == 0]
    never_won = [m for k, m in enumerate(models) if effective[:, k].sum() > 0 and effective[k].sum() == 0]
    parts = []
    if never_lost:
        parts.append(f"{_plain_list(never_lost)} won every battle so far")
    if never_won:
        parts.append(f"{_plain_list(never_won)} lost every battle so far")
    if parts:
        return ", and ".join(parts)
    return ("Some models have only won, or only lost, against the rest, or were never compared with them "
            "(directly or through other models)")


def _style_control(counts, models, a, b, table, best_first) -> dict:
    """Length-controlled ratings: Bradley-Terry with the length difference as a covariate."""
    score = np.array(outcomes.SCORE)[table.outcome]
    features = (table.length_bin * selectors.LENGTH_BIN).astype(float).reshape(-1, 1)
    if not np.any(features):
        return {"available": False, "reason": "all compared outputs have the same length"}
    try:
        fit = ratings.fit_contextual_bradley_terry(
            a, b, score, features, models=models, feature_names=["length"], weights=table.count,
        )
        regularization = 0.0
    except ratings.RatingError:
        try:
            fit = ratings.fit_contextual_bradley_terry(
                a, b, score, features, models=models, feature_names=["length"], weights=table.count,
                regularization=FALLBACK_REGULARIZATION,
            )
            regularization = FALLBACK_REGULARIZATION
        except ratings.RatingError:
            return {"available": False, "reason": "the votes so far cannot separate length from quality; "
                                                  "more votes between outputs of different lengths will"}
    by_model = dict(zip(fit.models, fit.ratings))
    return {
        "available": True,
        "regularization": regularization,
        "ratings": {m: round(float(by_model[m]), 3) for m in best_first},
        # Elo points gained by an answer of the maximal length difference ((a-b)/(a+b) = 1)
        "length_coefficient_elo": round(float(fit.elo_coefficients[0]), 3),
    }


def _position_bias(table) -> dict:
    decisive = table.outcome <= 1
    left_won = ((table.outcome == 0) & table.left_is_a) | ((table.outcome == 1) & ~table.left_is_a)
    p = ratings.wilson_interval(float(table.count[left_won & decisive].sum()), float(table.count[decisive].sum()))
    return _proportion(p)


def _length_bias(table) -> dict:
    if not table.count.size:
        return {"bins": [], "longer_wins": None}
    diff = np.clip(table.length_bin * selectors.LENGTH_BIN, -1.0, 1.0)
    # lengths 1 + d and 1 - d reproduce the normalised difference d of each bin's centre
    result = ratings.length_bias(1.0 + diff, 1.0 - diff, table.outcome, weights=table.count)
    return {
        "bins": [{"low": b.low, "high": b.high, **_proportion(b.a_win)} for b in result.bins],
        "longer_wins": _proportion(result.longer_wins),
    }


def online_elo_update(*, study_id: int) -> RatingSnapshot:
    """Advance the online-Elo preview (K=4) with the judgments cast since its last update."""
    snapshot = RatingSnapshot.objects.filter(study_id=study_id, slice_key=selectors.ALL, method=ONLINE_ELO).first()
    state = dict(snapshot.payload.get("ratings", {})) if snapshot else {}
    last = snapshot.last_judgment_id if snapshot else 0
    count = snapshot.n_judgments if snapshot else 0
    while True:
        ids, model_a, model_b, outcome = selectors.battles_since(study_id, last)
        if not ids:
            break
        state = ratings.online_elo(model_a, model_b, outcome, k=4.0, initial=state)
        last, count = ids[-1], count + len(ids)
    snapshot, _ = RatingSnapshot.objects.update_or_create(
        study_id=study_id, slice_key=selectors.ALL, method=ONLINE_ELO,
        defaults={"payload": {"ratings": state, "k": 4.0}, "n_judgments": count, "last_judgment_id": last,
                  "computed_at": timezone.now()},
    )
    return snapshot


def quality_recompute(*, study_id: int, force: bool = False) -> RatingSnapshot:
    """Compute the annotator quality table (:func:`annotation.selectors.quality_stats`) and
    store it as the study's ``quality`` snapshot, for the page to read without a judgment.

    Redone only when the study's pairwise judgments (their count or newest id), its version
    (an exclusion or re-admission, an undone vote) or the flag thresholds differ from what
    the snapshot was computed from, unless ``force``; otherwise only ``computed_at`` moves,
    which tells the page the table is current.
    """
    from annotation.selectors import quality_marker, quality_stats, quality_thresholds

    study = Study.objects.only("version").get(pk=study_id)
    current = RatingSnapshot.objects.filter(study_id=study_id, slice_key=selectors.ALL, method=QUALITY).first()
    n, last = quality_marker(study_id)
    thresholds = quality_thresholds()
    now = timezone.now()
    if (current is not None and not force and current.study_version == study.version
            and (current.n_judgments, current.last_judgment_id) == (n, last)
            and current.payload.get("thresholds") == thresholds):
        RatingSnapshot.objects.filter(pk=current.pk).update(computed_at=now)
        current.computed_at = now
        return current
    stats = quality_stats(study)
    payload = {"computed_at": now.isoformat(), "thresholds": thresholds,
               "annotators": {str(user_id): row for user_id, row in stats.items()}}
    snapshot, _ = RatingSnapshot.objects.update_or_create(
        study_id=study_id, slice_key=selectors.ALL, method=QUALITY,
        defaults={"payload": payload, "n_judgments": n, "last_judgment_id": last, "study_version": study.version,
                  "computed_at": now},
    )
    return snapshot


def online_elo_reset(*, study_id: int) -> None:
    """Forget the preview (e.g. after an annotator is excluded); the next update replays all votes."""
    RatingSnapshot.objects.filter(study_id=study_id, method=ONLINE_ELO).delete()


def adaptive_state(study_id: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None:
    """Ratings, their bootstrap covariance and battles per pair, for adaptive pair sampling."""
    snap = RatingSnapshot.objects.filter(study_id=study_id, slice_key=selectors.ALL, method=BT).first()
    board = snap.board if snap else None
    if board is None or not board.covariance:
        return None
    return (list(board.models), np.array([r.rating for r in board.rows]), np.array(board.covariance),
            np.array(board.pair_battles, dtype=float))


_PAIR_ORDER_CACHE: dict[int, tuple[float, list[tuple[int, int]]]] = {}


def adaptive_pair_order(study_id: int, *, max_age: float = 5.0) -> list[tuple[int, int]]:
    """Candidate-id pairs (lo, hi), the most informative next vote first, for adaptive sampling.

    Scores every candidate pair (O(candidates^2), never O(units)) from the last "all"
    snapshot with :func:`arena.sampling.pair_scores`; pairs with a candidate not rated
    yet come first, in random order.  Kept per process for ``max_age`` seconds, so a
    lease does not re-read the snapshot.  Empty without a snapshot (uniform order).
    """
    now = time.monotonic()
    hit = _PAIR_ORDER_CACHE.get(study_id)
    if hit and now - hit[0] < max_age:
        return hit[1]
    from annotation.models import Candidate

    from . import sampling

    order: list[tuple[int, int]] = []
    state = adaptive_state(study_id)
    if state is not None:
        models, rating, cov, pair_battles = state
        ids = dict(Candidate.objects.filter(study_id=study_id).values_list("name", "pk"))
        index = {name: i for i, name in enumerate(models)}
        rng = np.random.default_rng()
        known, new = [], []
        names = sorted(ids)
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                i, j = index.get(names[x]), index.get(names[y])
                pair = tuple(sorted((ids[names[x]], ids[names[y]])))
                (known if i is not None and j is not None else new).append((pair, i, j))
        if known:
            scores = sampling.pair_scores(rating, pair_battles, [(i, j) for _, i, j in known], cov=cov)
            jitter = rng.random(len(known)) * 1e-9  # random among equal scores
            order = [known[k][0] for k in np.argsort(-(scores + jitter))]
        rng.shuffle(new)
        order = [p for p, _, _ in new] + order
    _PAIR_ORDER_CACHE[study_id] = (now, order)
    return order
