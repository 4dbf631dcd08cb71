"""Adaptive choice of the next pair of models to compare.

Pure Python and numpy; no Django import. The caller passes the current bootstrap ratings
(:func:`arena.ratings.bootstrap_ratings`) or a mean and covariance, the battle counts per
pair, and the pairs it may schedule (e.g. pairs with outputs for the next prompt).

Each candidate pair ``(i, j)`` is scored by how much one more vote is expected to shrink
the uncertainty about the difference of their strengths. Under a Gaussian (Laplace)
approximation with variance ``v`` of ``d = theta_i - theta_j`` in natural-log units, a vote
adds Fisher information ``p (1 - p)``, ``p`` being the predicted chance that ``i`` wins, so
the variance becomes ``1 / (1 / v + p (1 - p))`` and the expected reduction is::

    score = v**2 * p * (1 - p) / (1 + v * p * (1 - p))

Pairs that are close (``p`` near 1/2), uncertain (large bootstrap variance, which is
what few battles between them produce) or both come first. Chatbot Arena's active
sampling rule [Chi24]_ likewise favours the pairs whose interval would
shrink most; this score adds the closeness term, which targets the ordering of nearby
models. [Mae17]_ compare such adaptive strategies for Bradley-Terry ranking.

References
----------
.. [Chi24] W.-L. Chiang et al., "Chatbot Arena: An open platform for evaluating LLMs by
   human preference", ICML 2024 (arXiv:2403.04132).
.. [Mae17] L. Maystre and M. Grossglauser, "Just sort it! A simple and effective approach
   to active preference learning", ICML 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SamplingError", "pair_scores", "choose_pairs", "choose_pair"]


class SamplingError(ValueError):
    """The inputs cannot be used to choose a pair; the message says which and why."""


# A pair whose strength difference is unknown (a model without battles, or no finite
# variance) is scored as if the difference had a standard deviation of 2 natural-log
# units (about 350 Elo) and p = 1/2: far above any measured pair, so it goes first.
_UNKNOWN_VARIANCE = 4.0


def _moments(samples: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    draws = np.asarray(samples, dtype=np.float64)
    if cov is not None:
        covariance = np.asarray(cov, dtype=np.float64)
        if draws.ndim != 1 or covariance.shape != (draws.size, draws.size):
            raise SamplingError(
                "with cov, samples must be the (n,) ratings and cov (n, n); "
                f"got {draws.shape} and {covariance.shape}"
            )
        return draws, covariance
    if draws.ndim != 2 or draws.shape[0] < 2:
        raise SamplingError(f"samples must have shape (rounds >= 2, n_models), got {draws.shape}")
    return draws.mean(axis=0), np.cov(draws, rowvar=False).reshape(draws.shape[1], draws.shape[1])


def _candidates(candidate_pairs: Sequence[tuple[int, int]], n: int) -> np.ndarray:
    pairs = np.asarray(candidate_pairs, dtype=np.intp).reshape(-1, 2)
    if pairs.shape[0] == 0:
        raise SamplingError("there are no candidate pairs")
    if np.any(pairs < 0) or np.any(pairs >= n):
        raise SamplingError(f"candidate pairs must index models 0..{n - 1}")
    if np.any(pairs[:, 0] == pairs[:, 1]):
        raise SamplingError("a candidate pair compares a model with itself")
    return pairs


def _state(
    samples: np.ndarray,
    pair_battles: np.ndarray | None,
    candidate_pairs: Sequence[tuple[int, int]],
    cov: np.ndarray | None,
    scale: float,
    base: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs, their variance of the difference, information per vote, battles."""
    mean, covariance = _moments(samples, cov)
    n = mean.size
    pairs = _candidates(candidate_pairs, n)
    i, j = pairs[:, 0], pairs[:, 1]
    factor = math.log(base) / scale
    with np.errstate(invalid="ignore", over="ignore"):
        prob = 1.0 / (1.0 + np.exp(-(mean[i] - mean[j]) * factor))
        variance = np.maximum(covariance[i, i] + covariance[j, j] - 2 * covariance[i, j], 0.0) * factor**2
    information = prob * (1.0 - prob)
    unknown = ~np.isfinite(variance) | ~np.isfinite(information)
    if pair_battles is None:
        counts = np.zeros(len(pairs))
    else:
        matrix = np.asarray(pair_battles, dtype=np.float64)
        if matrix.shape != (n, n):
            raise SamplingError(f"pair_battles must have shape ({n}, {n}), got {matrix.shape}")
        if not np.array_equal(matrix, matrix.T):
            raise SamplingError("pair_battles must be symmetric (BattleCounts.pair_battles)")
        counts = matrix[i, j]
        per_model = matrix.sum(axis=1)
        unknown |= (per_model[i] == 0) | (per_model[j] == 0)
    variance[unknown] = _UNKNOWN_VARIANCE
    information[unknown] = 0.25
    return pairs, variance, information, counts


def _score(variance: np.ndarray, information: np.ndarray) -> np.ndarray:
    return variance**2 * information / (1.0 + variance * information)


def pair_scores(
    samples: np.ndarray,
    pair_battles: np.ndarray | None,
    candidate_pairs: Sequence[tuple[int, int]],
    *,
    cov: np.ndarray | None = None,
    scale: float = 400.0,
    base: float = 10.0,
) -> np.ndarray:
    """Expected reduction in the variance of ``theta_i - theta_j`` from one more vote.

    Parameters
    ----------
    samples : array (rounds, n)
        Bootstrap ratings on the Elo scale (columns are models); or, with ``cov``, the
        (n,) ratings themselves.
    pair_battles : array (n, n) or None
        Symmetric battles between each pair (``BattleCounts.pair_battles``). A pair with
        a model that has no battles is scored with a wide prior (sd of about 350 Elo), so
        it comes first.
    candidate_pairs : sequence of (int, int)
        Model positions, as in the columns of ``samples``.
    cov : array (n, n), optional
        Covariance of the ratings (Elo scale), when ``samples`` holds ratings.
    scale, base : float
        The Elo scale of the ratings.

    Returns
    -------
    numpy.ndarray
        One score per candidate pair, in natural-log units squared.
    """
    _pairs, variance, information, _counts = _state(samples, pair_battles, candidate_pairs, cov, scale, base)
    return _score(variance, information)


def choose_pairs(
    samples: np.ndarray,
    pair_battles: np.ndarray | None,
    candidate_pairs: Sequence[tuple[int, int]],
    rng: np.random.Generator,
    *,
    k: int = 1,
    cov: np.ndarray | None = None,
    scale: float = 400.0,
    base: float = 10.0,
) -> list[tuple[int, int]]:
    """Choose ``k`` votes to collect next, greedily by :func:`pair_scores`.

    After each choice the chosen pair's variance is updated as if the vote had been
    collected (``v <- v / (1 + v p (1 - p))``), so a batch spreads over several close,
    uncertain pairs instead of repeating one; a pair may still be chosen more than once.
    Equal scores go to the pair with fewer battles, then at random through ``rng``.
    Arguments as in :func:`pair_scores`.

    Returns
    -------
    list of (int, int)
        Pairs as given in ``candidate_pairs`` (the order within a pair kept).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if k < 1:
        raise SamplingError(f"k must be at least 1, got {k!r}")
    pairs, variance, information, counts = _state(samples, pair_battles, candidate_pairs, cov, scale, base)
    jitter = rng.random(len(pairs))
    chosen: list[tuple[int, int]] = []
    for _ in range(k):
        best = int(np.lexsort((jitter, counts, -_score(variance, information)))[0])
        chosen.append((int(pairs[best, 0]), int(pairs[best, 1])))
        counts[best] += 1
        variance[best] = variance[best] / (1.0 + variance[best] * information[best])
    return chosen


def choose_pair(
    samples: np.ndarray,
    pair_battles: np.ndarray | None,
    candidate_pairs: Sequence[tuple[int, int]],
    rng: np.random.Generator,
    **kwargs,
) -> tuple[int, int]:
    """The single best pair to compare next; arguments as in :func:`choose_pairs`."""
    return choose_pairs(samples, pair_battles, candidate_pairs, rng, k=1, **kwargs)[0]
