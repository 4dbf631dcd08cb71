"""Likert ratings and failure tags summarised per candidate (pure: no Django import).

Per candidate and criterion: the number of ratings, their mean with a Student-t 95%
confidence interval (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, s the sample standard deviation), the
distribution over the points 1..scale and the "not applicable" count.  The t interval
treats the points as interval-scaled, the usual reading of Likert means (Norman 2010,
"Likert scales, levels of measurement and the 'laws' of statistics", Adv. Health Sci.
Educ. 15:625-632); the distribution is reported beside it for those who prefer not to.
Tag rates: the share of a candidate's rated outputs (Likert judgments) given each tag, with the
Wilson score interval (:func:`arena.ratings.wilson_interval`).  When the rows say which output
each judgment rated and some output was rated more than once, the ratings of one output are not
independent (raters agree on a malformed hand), so the Wilson interval is taken on the effective
sample size n / deff (Korn and Graubard 1998, "Confidence intervals for proportions with small
expected number of positive counts estimated from survey data", Survey Methodology 24:193-201),
deff the ratio of the share's cluster-robust (linearisation, outputs as clusters) variance to its
variance as if every judgment were independent, never below 1.  Where that ratio is undefined (no
judgment, or every one, has the tag) the outputs count once each.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit

from arena.ratings import wilson_interval


@dataclass(frozen=True)
class CriterionSummary:
    """One candidate on one criterion; ``mean``/``lower``/``upper`` are NaN with too few ratings
    (no ratings: no mean; one rating: a mean but no interval)."""

    n: int
    n_na: int
    mean: float
    lower: float
    upper: float
    distribution: tuple[int, ...]  # counts of points 1..scale


@dataclass(frozen=True)
class TagRate:
    n: int  # rated outputs carrying the tag
    of: int  # rated outputs
    share: float
    lower: float
    upper: float


def criterion_summary(points: Iterable[int | None], scale: int, *, confidence: float = 0.95,
                      weights: Iterable[float] | None = None) -> CriterionSummary:
    """Summarise the ratings of one candidate on one criterion; ``None`` is "not applicable".

    Parameters
    ----------
    points : iterable of int or None
        Ratings on the scale 1..``scale``.
    scale : int
        The criterion's number of points.
    confidence : float
        Two-sided coverage of the Student-t interval for the mean.
    weights : iterable of float, optional
        One non-negative weight per point (an annotator's competence).  The mean is then
        Σwx/Σw, and the interval mean ± t(n_eff − 1) · s_w/√n_eff with Kish's effective size
        n_eff = (Σw)²/Σw² and the reliability-weighted variance s_w² = Σw(x − mean)² /
        (Σw − Σw²/Σw); equal weights give the unweighted figures exactly.  Points of weight
        0 count nowhere (as if their annotator were left out); ``n`` and the distribution
        count the points of positive weight.
    """
    values = list(points)
    if weights is not None:
        w_all = [float(w) for w in weights]
        if len(w_all) != len(values) or any(w < 0 or not math.isfinite(w) for w in w_all):
            raise ValueError("weights: one finite non-negative weight per point")
        kept = [(p, w) for p, w in zip(values, w_all) if w > 0]
        values = [p for p, _ in kept]
        w_rated = np.array([w for p, w in kept if p is not None], dtype=float)
    rated = np.array([p for p in values if p is not None], dtype=float)
    n_na = len(values) - len(rated)
    if len(rated) and (rated.min() < 1 or rated.max() > scale):
        raise ValueError(f"ratings must lie in 1..{scale}")
    distribution = tuple(int(c) for c in np.bincount(rated.astype(int), minlength=scale + 1)[1:scale + 1])
    n = len(rated)
    if n == 0:
        return CriterionSummary(0, n_na, math.nan, math.nan, math.nan, distribution)
    if weights is not None and not np.all(w_rated == w_rated[0]):
        total, squares = float(w_rated.sum()), float((w_rated ** 2).sum())
        mean = float((w_rated * rated).sum() / total)
        n_eff = total * total / squares
        if n == 1 or n_eff <= 1.0:
            return CriterionSummary(n, n_na, mean, math.nan, math.nan, distribution)
        variance = float((w_rated * (rated - mean) ** 2).sum() / (total - squares / total))
        half = float(stdtrit(n_eff - 1, 0.5 + confidence / 2) * math.sqrt(variance) / math.sqrt(n_eff))
        return CriterionSummary(n, n_na, mean, mean - half, mean + half, distribution)
    mean = float(rated.mean())
    if n == 1:
        return CriterionSummary(1, n_na, mean, math.nan, math.nan, distribution)
    half = float(stdtrit(n - 1, 0.5 + confidence / 2) * rated.std(ddof=1) / math.sqrt(n))
    return CriterionSummary(n, n_na, mean, mean - half, mean + half, distribution)


def summarize(criteria: Sequence[Mapping], rows: Iterable[tuple]) -> dict[str, dict[str, CriterionSummary]]:
    """``rows`` of (candidate, ratings {criterion key: point or None}) or (candidate, ratings,
    weight) to {candidate: {key: summary}}; with weights, see :func:`criterion_summary`.

    Criteria no longer configured are left out; a candidate appears once it has a rating row.
    A point off the criterion's current scale (the evaluator shortened it after ratings came
    in) counts nowhere; :func:`off_scale` counts them.
    """
    scales = {c["key"]: c["scale"] for c in criteria}
    by_candidate: dict[str, dict[str, list]] = {}
    weighted = False
    for row in rows:
        candidate, ratings = row[0], row[1]
        weight = float(row[2]) if len(row) > 2 else 1.0
        weighted = weighted or len(row) > 2
        per = by_candidate.setdefault(candidate, {c["key"]: [] for c in criteria})
        for c in criteria:
            if c["key"] in ratings and not _off(ratings[c["key"]], c["scale"]):
                per[c["key"]].append((ratings[c["key"]], weight))
    return {
        candidate: {key: criterion_summary([p for p, _ in pairs], scales[key],
                                           weights=[w for _, w in pairs] if weighted else None)
                    for key, pairs in per.items()}
        for candidate, per in sorted(by_candidate.items())
    }


def _off(point, scale: int) -> bool:
    """Whether a stored point is off the scale 1..``scale`` ("not applicable", None, is not)."""
    if point is None:
        return False
    return isinstance(point, bool) or not isinstance(point, int) or not 1 <= point <= scale


def off_scale(criteria: Sequence[Mapping], ratings: Iterable[Mapping]) -> dict[str, int]:
    """Criterion key -> how many of ``ratings`` hold a point off its current scale (left out of
    :func:`summarize`); criteria without any are left out."""
    counts: dict[str, int] = {}
    for r in ratings:
        for c in criteria:
            if c["key"] in (r or {}) and _off(r[c["key"]], c["scale"]):
                counts[c["key"]] = counts.get(c["key"], 0) + 1
    return counts


def effective_n(per_cluster: Sequence[tuple[int, int]]) -> float:
    """The effective number of independent judgments behind a share, from (tagged, judgments) per
    cluster (output): n / deff as in the module's docstring; n itself without repeated clusters."""
    m = np.array([c[1] for c in per_cluster], dtype=float)
    y = np.array([c[0] for c in per_cluster], dtype=float)
    total, clusters = float(m.sum()), len(per_cluster)
    if clusters == 0 or total == 0:
        return 0.0
    if clusters == total:  # one judgment per output: independent
        return total
    p = float(y.sum()) / total
    if p in (0.0, 1.0):
        return float(clusters)
    var_cluster = clusters / (clusters - 1) * float(((y - p * m) ** 2).sum()) / total ** 2 if clusters > 1 else math.inf
    var_srs = p * (1 - p) / (total - 1)
    return total / max(1.0, var_cluster / var_srs)


def tag_rates(tag_keys: Sequence[str], rows: Iterable[tuple]) -> dict[str, dict[str, TagRate]]:
    """``rows`` of (candidate, tags given to one rated output[, the output]) to {candidate: {tag:
    rate}}; with the output, the interval allows for outputs rated several times (see the module)."""
    outputs: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    clusters: dict[str, dict] = {}  # candidate -> output -> [judgments, {tag: count}]
    for row in rows:
        candidate, tags = row[0], row[1]
        outputs[candidate] = outputs.get(candidate, 0) + 1
        per = counts.setdefault(candidate, dict.fromkeys(tag_keys, 0))
        given = {tag for tag in set(tags or ()) if tag in per}
        for tag in given:
            per[tag] += 1
        if len(row) > 2:
            cell = clusters.setdefault(candidate, {}).setdefault(row[2], [0, {}])
            cell[0] += 1
            for tag in given:
                cell[1][tag] = cell[1].get(tag, 0) + 1
    result = {}
    for candidate in sorted(outputs):
        result[candidate] = {}
        of = outputs[candidate]
        for tag in tag_keys:
            k = counts[candidate][tag]
            if candidate in clusters:
                n_eff = effective_n([(c[1].get(tag, 0), c[0]) for c in clusters[candidate].values()])
                p = wilson_interval(k / of * n_eff, n_eff) if n_eff else wilson_interval(0, 0)
            else:
                p = wilson_interval(k, of)
            result[candidate][tag] = TagRate(k, of, k / of if of else math.nan, p.lower, p.upper)
    return result
