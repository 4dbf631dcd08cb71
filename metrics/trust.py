"""Which metric to trust: rank correlation between a metric and the human results (no Django import).

Kendall's tau-b and Spearman's rho (scipy.stats.kendalltau / spearmanr), each as a
:class:`metrics.result.MetricResult` with a percentile bootstrap interval.

* System level (:func:`system_agreement`): per-candidate metric means against the
  candidates' human ratings (Bradley-Terry).  With a handful of candidates a bootstrap over
  candidates says little, so the interval resamples *prompts*: each round draws the prompts
  with replacement, recomputes every candidate's metric mean over the drawn prompts'
  outputs and correlates those means with the (fixed) human ratings.  The interval is
  therefore the metric's sampling uncertainty over prompts, not the ratings'.
* Output level (:func:`output_agreement`): per-output metric value against the output's
  Likert mean on one criterion; the interval resamples outputs.
* One value per candidate (:func:`candidate_agreement`): corpus metrics (BLEU, chrF) and set
  metrics (FID, KID, Inception Score) store no per-output score, so there is nothing to
  resample: the point only, with the reason in the config.

Orientation: every function takes ``better`` ("higher" or "lower", as
``metrics.services.better`` says).  For a metric where lower is better the metric's values are
negated before correlating, so a positive tau or rho always means "agrees with the humans";
the config's ``orientation`` says which was done.

References: Kendall (1945), "The treatment of ties in ranking problems" (tau-b);
Deutsch, Dror & Roth (2021), "A statistical analysis of summarization evaluation metrics
using resampling methods" (bootstrap over inputs for system-level correlations).
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from .result import MetricResult, bootstrap_interval

ROUNDS = 1000


def _scipy_version() -> str:
    import scipy

    return scipy.__version__


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Kendall tau-b, Spearman rho) of two equal-length sequences; nan where undefined
    (fewer than two items, or a constant side)."""
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"x and y differ in length: {a.shape} vs {b.shape}")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return (math.nan, math.nan)
    tau = stats.kendalltau(a, b, variant="b").statistic
    rho = stats.spearmanr(a, b).statistic
    return (float(tau), float(rho))


def _orient(values: np.ndarray, better: str) -> np.ndarray:
    """``values`` as they are ("higher" is better) or negated ("lower" is better), so that a
    positive correlation means agreement with the humans."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    return -values if better == "lower" else values


def orientation(better: str) -> str:
    """The config's words for what :func:`_orient` did with a metric whose ``better`` side is given."""
    return ("metric negated (lower is better): positive means agrees with the humans" if better == "lower"
            else "as is (higher is better): positive means agrees with the humans")


def _interval(values: list[float], level: float) -> tuple[float, float]:
    """Percentile interval of the bootstrap replicates, undefined ones left out (nan when the
    bootstrap did not run, n < 2, or no replicate was defined)."""
    arr = np.array(values, dtype=float)
    if not np.any(~np.isnan(arr)):
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(arr, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _results(point: tuple[float, float], taus: list[float], rhos: list[float], n: int, config: dict,
             lo_hi) -> dict[str, MetricResult]:
    return {
        "kendall_tau": MetricResult("kendall_tau", point[0], *lo_hi(taus), n, {**config, "statistic": "kendall tau-b"}),
        "spearman_rho": MetricResult("spearman_rho", point[1], *lo_hi(rhos), n, {**config, "statistic": "spearman rho"}),
    }


def system_agreement(
    scores: Iterable[tuple[str, Hashable, float]],
    ratings: Mapping[str, float],
    rng: np.random.Generator,
    rounds: int = ROUNDS,
    level: float = 0.95,
    better: str = "higher",
    human: str = "ratings",
) -> dict[str, MetricResult]:
    """System-level tau and rho between per-candidate metric means and human ratings.

    Parameters
    ----------
    scores : (candidate, prompt, value) per scored output; outputs of candidates without a
        rating and ``None``/nan values are left out.
    ratings : human rating per candidate (e.g. Bradley-Terry, or a Likert mean).
    rng : the generator the bootstrap draws prompts from (same state, same interval).
    better : "lower" negates the metric first (see the module docstring).
    human : what ``ratings`` are, recorded in the config.

    Returns ``{"kendall_tau": MetricResult, "spearman_rho": MetricResult}``; ``n`` is the
    number of candidates, the interval is over prompts (see the module docstring).
    """
    rows = [(c, p, float(v)) for c, p, v in scores
            if c in ratings and v is not None and not math.isnan(float(v))]
    cands = sorted({c for c, _, _ in rows})
    prompts = sorted({p for _, p, _ in rows}, key=repr)
    ci, pi = {c: i for i, c in enumerate(cands)}, {p: i for i, p in enumerate(prompts)}
    sums = np.zeros((len(cands), len(prompts)))
    counts = np.zeros((len(cands), len(prompts)))
    for c, p, v in rows:
        sums[ci[c], pi[p]] += v
        counts[ci[c], pi[p]] += 1
    human_side = np.array([float(ratings[c]) for c in cands])
    sums = _orient(sums, better)

    def at(weights: np.ndarray) -> tuple[float, float]:
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (sums @ weights) / (counts @ weights)
        keep = ~np.isnan(means)  # a candidate none of whose prompts was drawn drops out of this round
        return correlations(means[keep], human_side[keep])

    point = at(np.ones(len(prompts))) if prompts else (math.nan, math.nan)
    taus: list[float] = []
    rhos: list[float] = []

    def tau_of(idx: np.ndarray) -> float:
        t, r = at(np.bincount(idx, minlength=len(prompts)).astype(float))
        taus.append(t)
        rhos.append(r)
        return t

    bootstrap_interval(tau_of, len(prompts), rng, rounds=rounds, level=level)
    config = {"level": "system", "library": "scipy", "version": _scipy_version(), "human": human,
              "bootstrap": f"percentile, {rounds} rounds over prompts, {level:.0%}", "n_prompts": len(prompts),
              "orientation": orientation(better)}

    return _results(point, taus, rhos, len(cands), config, lambda v: _interval(v, level))


def output_agreement(
    metric: Sequence[float],
    human: Sequence[float],
    rng: np.random.Generator,
    rounds: int = ROUNDS,
    level: float = 0.95,
    criterion: str = "",
    better: str = "higher",
) -> dict[str, MetricResult]:
    """Output-level tau and rho between each output's metric value and its human score (the
    mean Likert rating on ``criterion``); pairs with a nan on either side are left out.  The
    interval resamples outputs; ``better="lower"`` negates the metric first."""
    a, b = np.asarray(metric, dtype=float), np.asarray(human, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"metric and human differ in length: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = _orient(a[keep], better), b[keep]
    taus: list[float] = []
    rhos: list[float] = []

    def tau_of(idx: np.ndarray) -> float:
        t, r = correlations(a[idx], b[idx])
        taus.append(t)
        rhos.append(r)
        return t

    bootstrap_interval(tau_of, len(a), rng, rounds=rounds, level=level)
    config = {"level": "output", "library": "scipy", "version": _scipy_version(),
              "human": f"likert mean: {criterion}" if criterion else "likert mean",
              "bootstrap": f"percentile, {rounds} rounds over outputs, {level:.0%}",
              "orientation": orientation(better)}

    return _results(correlations(a, b), taus, rhos, len(a), config, lambda v: _interval(v, level))


def candidate_agreement(
    values: Mapping[str, float],
    ratings: Mapping[str, float],
    reason: str,
    better: str = "higher",
    human: str = "ratings",
) -> dict[str, MetricResult]:
    """System-level tau-b and rho between one metric value per candidate and the candidates'
    human ratings, for metrics with no per-output scores (corpus and set metrics).

    Candidates without a rating or with a ``None``/nan value are left out; ``n`` is the number
    of candidates correlated.  No interval (nan): resampling candidates says little with a
    handful of them and there are no per-prompt scores to resample; ``reason`` says which, and
    the config's ``bootstrap`` reads ``"none: <reason>"``.
    """
    cands = sorted(c for c, v in values.items()
                   if c in ratings and v is not None and not math.isnan(float(v)))
    x = _orient(np.array([float(values[c]) for c in cands]), better)
    y = np.array([float(ratings[c]) for c in cands])
    point = correlations(x, y) if len(cands) >= 2 else (math.nan, math.nan)
    config = {"level": "system", "library": "scipy", "version": _scipy_version(), "human": human,
              "bootstrap": f"none: {reason}", "orientation": orientation(better)}
    return _results(point, [], [], len(cands), config, lambda _v: (math.nan, math.nan))
