"""Inter-annotator agreement and annotator reliability (pure: no Django import).

Every function takes ``triples``: an iterable of ``(annotator, unit, value)``. A missing
rating is an absent triple; a second value for the same annotator and unit is an error.

Krippendorff's alpha
    The point value comes from the ``krippendorff`` package (Castro 2017), fed the
    units x values count matrix built here with numpy, so no dense annotators x units
    table is ever made (100,000 units cost a few megabytes). Levels: nominal (pairwise
    choices, tags), ordinal (Likert points), interval, ratio.
    K. Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011,
    https://repository.upenn.edu/asc_papers/43.

The bootstrap interval (:func:`alpha_interval`)
    A. F. Hayes and K. Krippendorff, "Answering the call for a standard reliability
    measure for coding data", Communication Methods and Measures 1 (2007) 77-89, as
    implemented in Hayes' KALPHA macro (v3.0, 2011). With the coincidence matrix ``o``
    (values x values; each unit's ordered pairs of values weighted 1/(m_u - 1)),
    ``n = sum(o)`` pairable values, ``n_c`` its margins, the expected matrix
    ``e_ck = n_c (n_k - [c == k]) / (n - 1)``, the level's squared difference ``delta``
    (nominal 0/1; ordinal ``(sum_{g=c..k} n_g - (n_c + n_k)/2)^2``; interval ``(c - k)^2``;
    ratio ``((c - k)/(c + k))^2``) and ``D_e = sum(e * delta) / n``:

    1. the pairs are sampled from the unordered cells c <= k of ``o`` with probability
       ``2 o_ck / n`` off the diagonal and ``o_cc / n`` on it;
    2. each round draws ``M = min(25 q, (N - 1) n / 2)`` pairs (q: the non-zero cells of
       the whole matrix ``o``, both triangles, as the macro counts them; N: the annotators
       with pairable values; M rounded down), as one multinomial count vector per round,
       and ``alpha_b = 1 - sum(delta of the drawn pairs) / (D_e M)``;
    3. ``alpha_b`` below -1 is set to -1;
    4. small-sample corrections of the macro: when only one diagonal cell of ``o`` is
       non-zero, every ``alpha_b == 1`` becomes 0; when more than one is, the expected
       number of rounds that would sample matches of a single value only,
       ``nx = round(rounds * sum_c (o_cc / n) ** P)`` with ``P = sum_u m_u (m_u - 1) / 2``
       the pairs in the data, of the ``alpha_b == 1`` rounds (the first ones drawn) are
       set to 0;
    5. the interval is read off the sorted rounds ``a_(1) <= ... <= a_(R)`` as the macro
       does: lower ``a_(max(1, floor(t R)))``, upper ``a_(min(R, floor((1 - t) R) + 1))``
       with ``t = (1 - confidence) / 2`` (for R = 1000 at 95 %: the 25th and 976th);
       ``q[a]`` is the share of rounds below ``a`` (the macro's 0.67 is 0.667 here).

    Because M is capped at 25 q, the interval does not narrow as units are added beyond a
    few hundred pairs: it describes the sampling error of a study of about M pairs. A
    unit-resampling bootstrap narrows with 1/sqrt(units) instead (see bench/agreement_bench.py).

Cohen's kappa (weighted as :func:`sklearn.metrics.cohen_kappa_score`), Fleiss' kappa
(J. L. Fleiss, "Measuring nominal scale agreement among many raters", Psychological
Bulletin 76 (1971) 378-382; on the units with the modal number of ratings), leave-one-annotator-out alpha, and latent competence by
Dawid-Skene (1979) and MACE (Hovy et al. 2013) through ``crowd-kit``, which is imported
inside :func:`competence` only (it needs transformers, kept off web machines).
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Real

import krippendorff
import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")
ALPHA_MINS = (0.9, 0.8, 0.7, 0.667, 0.6, 0.5)


@dataclass(frozen=True)
class AlphaResult:
    alpha: float  # Krippendorff's alpha; nan when undefined
    lower: float  # bootstrap interval; nan when rounds == 0 or undefined
    upper: float
    level: str
    units: int  # pairable units (>= 2 values)
    annotators: int  # annotators with at least one pairable value
    pairable: int  # pairable values, n of the coincidence matrix
    percent_agreement: float  # share of agreeing ordered pairs within units; nan if none
    rounds: int
    q: dict[float, float]  # probability that alpha < alphamin


@dataclass(frozen=True)
class PairKappa:
    a: Hashable
    b: Hashable
    n: int
    kappa: float
    percent: float


@dataclass(frozen=True)
class FleissResult:
    kappa: float
    percent: float
    units: int  # units used: those with ``raters_per_unit`` ratings
    raters_per_unit: int
    total_units: int  # units with two ratings or more


@dataclass(frozen=True)
class Competence:
    method: str  # "dawid_skene" | "mace"
    skills: dict[Hashable, float]
    labels: dict[Hashable, Hashable]
    uncertainty: dict[Hashable, float]  # entropy (nats) of the posterior over labels


def _sorted(values: Iterable) -> list:
    """Sorted naturally when the values compare, by their text otherwise."""
    values = list(values)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class _Table:
    annotators: list  # annotator names by code
    units: list  # unit names by code
    domain: list  # values by code, sorted
    a: np.ndarray  # annotator code per rating
    u: np.ndarray  # unit code per rating
    v: np.ndarray  # value code per rating


def _table(triples, level: str | None = None) -> _Table:
    if level is not None and level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    ann_index: dict = {}
    unit_index: dict = {}
    a_codes: list[int] = []
    u_codes: list[int] = []
    raw: list = []
    seen: set = set()
    numeric = level is not None and level != "nominal"
    for annotator, unit, value in triples:
        ai = ann_index.setdefault(annotator, len(ann_index))
        ui = unit_index.setdefault(unit, len(unit_index))
        key = (ai, ui)
        if key in seen:
            raise ValueError(f"annotator {annotator!r} rated unit {unit!r} twice")
        seen.add(key)
        if numeric:
            if not _is_number(value):
                raise ValueError(f"annotator {annotator!r}, unit {unit!r}: {value!r} is not a finite number ({level})")
            if level == "ratio" and value < 0:
                raise ValueError(f"annotator {annotator!r}, unit {unit!r}: ratio values must not be negative")
        a_codes.append(ai)
        u_codes.append(ui)
        raw.append(value)
    domain = _sorted(set(raw))
    value_index = {value: i for i, value in enumerate(domain)}
    return _Table(
        annotators=list(ann_index),
        units=list(unit_index),
        domain=domain,
        a=np.asarray(a_codes, dtype=np.int64),
        u=np.asarray(u_codes, dtype=np.int64),
        v=np.asarray([value_index[x] for x in raw], dtype=np.int64),
    )


def _value_counts(t: _Table, keep: np.ndarray | None = None) -> np.ndarray:
    """Units x values counts of the pairable units (those with >= 2 values)."""
    u, v = (t.u, t.v) if keep is None else (t.u[keep], t.v[keep])
    width = len(t.domain)
    counts = np.bincount(u * width + v, minlength=len(t.units) * width).reshape(len(t.units), width)
    return counts[counts.sum(axis=1) >= 2]


def _coincidences(counts: np.ndarray) -> np.ndarray:
    m = counts.sum(axis=1).astype(float)
    weighted = counts / (m - 1.0)[:, None]
    return weighted.T @ counts - np.diag(weighted.sum(axis=0))


def _delta(level: str, domain: Sequence, n_c: np.ndarray) -> np.ndarray:
    size = len(domain)
    if level == "nominal":
        return 1.0 - np.eye(size)
    if level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(size), np.arange(size))
        hi = np.maximum.outer(np.arange(size), np.arange(size))
        return (cum[hi + 1] - cum[lo] - (n_c[lo] + n_c[hi]) / 2.0) ** 2
    values = np.asarray(domain, dtype=float)
    diff = np.subtract.outer(values, values)
    if level == "interval":
        return diff**2
    total = np.add.outer(values, values)
    ratio = np.divide(diff, total, out=np.zeros_like(diff), where=total != 0)
    return ratio**2


def _alpha_point(counts: np.ndarray, domain: Sequence, level: str) -> float:
    """The ``krippendorff`` package's alpha on a count matrix; nan when undefined."""
    used = counts.sum(axis=0) > 0
    if counts.shape[0] == 0 or used.sum() < 2:
        return math.nan  # no pairable values, or no variation: D_e = 0
    counts = counts[:, used]
    if level == "nominal":
        value_domain = np.arange(counts.shape[1])
    else:
        value_domain = np.asarray(domain, dtype=float)[used]
    return float(krippendorff.alpha(value_counts=counts, value_domain=value_domain, level_of_measurement=level))


def _percent(counts: np.ndarray) -> float:
    m = counts.sum(axis=1)
    pairs = float((m * (m - 1)).sum())
    if pairs == 0:
        return math.nan
    return float((counts * (counts - 1)).sum()) / pairs


def alpha_interval(triples, level: str, rng: np.random.Generator, rounds: int = 1000,
                   confidence: float = 0.95) -> AlphaResult:
    """Krippendorff's alpha with Hayes and Krippendorff's (2007) bootstrap interval.

    Parameters
    ----------
    triples : iterable of (annotator, unit, value)
    level : one of :data:`LEVELS`; non-nominal levels need numeric values (ratio: >= 0)
    rng : the generator the bootstrap draws from
    rounds : bootstrap rounds; 0 gives the point only
    confidence : two-sided coverage of the interval

    Returns
    -------
    AlphaResult
        The bootstrap follows the KALPHA macro step by step; see the module docstring.
        ``alpha`` is nan when no unit has two values or every pairable value is the same.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    if rounds < 0:
        raise ValueError("rounds must not be negative")
    t = _table(triples, level)
    counts = _value_counts(t)
    pairable_units = np.flatnonzero(np.bincount(t.u, minlength=len(t.units)) >= 2)
    in_pairable = np.isin(t.u, pairable_units)
    annotators = int(np.unique(t.a[in_pairable]).size)
    n = int(counts.sum())
    point = _alpha_point(counts, t.domain, level)
    nan_q = {a: math.nan for a in ALPHA_MINS}
    base = dict(level=level, units=int(counts.shape[0]), annotators=annotators, pairable=n,
                percent_agreement=_percent(counts), rounds=rounds)
    if rounds == 0 or math.isnan(point):
        return AlphaResult(alpha=point, lower=math.nan, upper=math.nan, q=nan_q, **base)

    o = _coincidences(counts)
    n_c = o.sum(axis=0)
    delta = _delta(level, t.domain, n_c)
    e = np.outer(n_c, n_c) - np.diag(n_c)
    e /= n - 1.0
    d_e = float((e * delta).sum()) / n

    upper_cells = np.triu_indices(len(t.domain))
    p = np.where(upper_cells[0] == upper_cells[1], 1.0, 2.0) * o[upper_cells] / n
    nonzero = p > 1e-12
    p = p[nonzero] / p[nonzero].sum()
    cell_delta = delta[upper_cells][nonzero]
    q_cells = int(np.count_nonzero(o > 1e-12))
    draws = int(min(25 * q_cells, (annotators - 1) * n / 2))
    draws = max(draws, 1)
    sampled = rng.multinomial(draws, p, size=rounds)
    boot = 1.0 - (sampled @ cell_delta) / (d_e * draws)
    boot = np.maximum(boot, -1.0)

    diagonal = np.diag(o)
    perfect = np.flatnonzero(boot == 1.0)
    if np.count_nonzero(diagonal > 1e-12) == 1:
        boot[perfect] = 0.0
    elif perfect.size:
        pairs = float((counts.sum(axis=1) * (counts.sum(axis=1) - 1)).sum()) / 2.0
        nx = int(round(rounds * float(((diagonal / n) ** pairs).sum())))
        boot[perfect[:nx]] = 0.0

    tail = (1.0 - confidence) / 2.0
    ordered = np.sort(boot)
    lower = ordered[max(1, math.floor(tail * rounds)) - 1]
    upper = ordered[min(rounds, math.floor((1.0 - tail) * rounds) + 1) - 1]
    q = {a: float(np.mean(boot < a)) for a in ALPHA_MINS}
    return AlphaResult(alpha=point, lower=float(lower), upper=float(upper), q=q, **base)


def split_units(triples) -> int:
    """Units whose values are not all the same (units with one value never are).

    Zero means the data hold no disagreement at all: a latent-class model (Dawid-Skene, MACE)
    then has nothing to tell a careful annotator from a careless one by.
    """
    t = _table(triples)
    counts = _value_counts(t)
    return int(np.count_nonzero((counts > 0).sum(axis=1) >= 2))


def percent_agreement(triples) -> float:
    """Share of agreeing ordered pairs of values within units (exact equality); nan if none."""
    return _percent(_value_counts(_table(triples)))


_WEIGHTS = (None, "linear", "quadratic")


def cohen_kappa(x: Sequence, y: Sequence, weights: str | None = None, labels: Sequence | None = None) -> float:
    """Cohen's (1960) kappa between two raters, weighted as ``sklearn.metrics.cohen_kappa_score``.

    ``weights``: None (kappa), "linear" (|i - j|) or "quadratic" ((i - j)^2), i and j the
    positions of the labels in ``labels`` (default: the sorted values seen). nan when
    undefined (the expected disagreement is zero).
    """
    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of None, 'linear', 'quadratic', not {weights!r}")
    if len(x) != len(y):
        raise ValueError(f"the two raters have {len(x)} and {len(y)} values")
    labels = _sorted(set(x) | set(y)) if labels is None else list(labels)
    index = {label: i for i, label in enumerate(labels)}
    missing = [value for value in (*x, *y) if value not in index]
    if missing:
        raise ValueError(f"value {missing[0]!r} is not among the labels")
    k = len(labels)
    xi = np.fromiter((index[value] for value in x), dtype=np.int64, count=len(x))
    yi = np.fromiter((index[value] for value in y), dtype=np.int64, count=len(y))
    confusion = np.bincount(xi * k + yi, minlength=k * k).reshape(k, k).astype(float)
    if confusion.sum() == 0:
        return math.nan
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / confusion.sum()
    grid = np.subtract.outer(np.arange(k), np.arange(k))
    w = {None: (grid != 0).astype(float), "linear": np.abs(grid).astype(float), "quadratic": grid.astype(float) ** 2}[weights]
    denominator = float((w * expected).sum())
    if denominator == 0:
        return math.nan
    return 1.0 - float((w * confusion).sum()) / denominator


def pairwise_kappas(triples, weights: str | None = None, labels=None, min_shared: int = 2) -> list[PairKappa]:
    """Cohen's kappa and exact agreement for every pair of annotators sharing ``min_shared`` units.

    ``labels`` defaults to every value in ``triples``, sorted, so weighted kappas of all
    pairs use the same scale. Pairs come in sorted(str) order of the annotators.
    """
    t = _table(triples)
    labels = t.domain if labels is None else list(labels)
    rated: dict[int, dict[int, int]] = defaultdict(dict)
    for a, u, v in zip(t.a.tolist(), t.u.tolist(), t.v.tolist()):
        rated[a][u] = v
    order = sorted(range(len(t.annotators)), key=lambda i: str(t.annotators[i]))
    result = []
    for i, first in enumerate(order):
        for second in order[i + 1:]:
            shared = rated[first].keys() & rated[second].keys()
            if len(shared) < max(min_shared, 1):
                continue
            shared = sorted(shared)
            x = [t.domain[rated[first][u]] for u in shared]
            y = [t.domain[rated[second][u]] for u in shared]
            result.append(PairKappa(
                a=t.annotators[first], b=t.annotators[second], n=len(shared),
                kappa=cohen_kappa(x, y, weights=weights, labels=labels),
                percent=float(np.mean([p == r for p, r in zip(x, y)])),
            ))
    return result


def fleiss_kappa(triples) -> FleissResult | None:
    """Fleiss' (1971) kappa on the units with the modal number (>= 2) of ratings.

    Fleiss' statistic needs the same number m of ratings on every unit; in a live study units
    hold different numbers, so it is computed on the units holding the most common m among
    those with two ratings or more (ties: the larger m), and ``units`` of ``total_units``
    (the units with >= 2 ratings) says how many that is.  None when no unit has two ratings.
    A nominal statistic: the order of Likert points is ignored.  ``percent`` is Fleiss' mean
    pairwise agreement P-bar; kappa is nan when every rating used falls in one category.
    """
    t = _table(triples)
    if not t.units:
        return None
    k = len(t.domain)
    table = np.bincount(t.u * k + t.v, minlength=len(t.units) * k).reshape(len(t.units), k).astype(float)
    per_unit = table.sum(axis=1).astype(np.int64)
    pairable = per_unit[per_unit >= 2]
    if pairable.size == 0:
        return None
    sizes, freq = np.unique(pairable, return_counts=True)
    m = int(sizes[np.flatnonzero(freq == freq.max())[-1]])
    table = table[per_unit == m]
    units = table.shape[0]
    p_j = table.sum(axis=0) / (units * m)
    p_i = ((table**2).sum(axis=1) - m) / (m * (m - 1))
    p_bar = float(p_i.mean())
    p_e = float((p_j**2).sum())
    kappa = math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)
    return FleissResult(kappa=kappa, percent=p_bar, units=units, raters_per_unit=m,
                        total_units=int(pairable.size))


def leave_one_out(triples, level: str) -> dict[Hashable, tuple[float, float]]:
    """Annotator -> (alpha of everyone, alpha without that annotator), points only."""
    t = _table(triples, level)
    everyone = _alpha_point(_value_counts(t), t.domain, level)
    return {
        name: (everyone, _alpha_point(_value_counts(t, keep=t.a != code), t.domain, level))
        for code, name in enumerate(t.annotators)
    }


def _entropy(probas: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probas > 0, -probas * np.log(probas), 0.0)
    return terms.sum(axis=1)


# crowd-kit's defaults cost 10 s on any study (MACE: 10 restarts of variational EM, mostly pandas
# overhead; Dawid-Skene: tolerance 1e-5).  Two restarts and a 1e-4 tolerance bring a study's
# competence to about 3 s; tests/metrics/test_agreement.py checks spammers are still found.
MACE_RESTARTS = 2
DS_TOL = 1e-4


def competence(triples, method: str = "dawid_skene", seed: int = 0) -> Competence:
    """Latent annotator competence and aggregated labels for nominal labels.

    ``dawid_skene``: A. P. Dawid and A. M. Skene, "Maximum likelihood estimation of observer
    error-rates using the EM algorithm", Applied Statistics 28 (1979) 20-28; skill is the
    chance of a right label, sum_c prior_c * P(says c | truth c). ``mace``: D. Hovy et al.,
    "Learning whom to trust with MACE", NAACL-HLT 2013; skill is 1 - P(spamming), restarts
    seeded with ``seed`` (:data:`MACE_RESTARTS` of them). Both from crowd-kit; uncertainty is the posterior entropy in nats.
    """
    if method not in ("dawid_skene", "mace"):
        raise ValueError(f"unknown method {method!r}; choose dawid_skene or mace")
    import pandas as pd
    from crowdkit.aggregation import MACE, DawidSkene

    t = _table(triples)
    if not t.units:
        raise ValueError("no ratings")
    data = pd.DataFrame({"worker": t.a, "task": t.u, "label": t.v})
    with warnings.catch_warnings():
        # crowd-kit 1.4.2 calls pandas keywords that pandas 3 deprecates, once per iteration
        warnings.filterwarnings("ignore", module="crowdkit")
        model = (DawidSkene(n_iter=100, tol=DS_TOL).fit(data) if method == "dawid_skene"
                 else MACE(n_restarts=MACE_RESTARTS, n_iter=50, random_state=seed).fit(data))
    if method == "dawid_skene":
        errors = model.errors_
        priors = model.priors_
        skills = {}
        for code, name in enumerate(t.annotators):
            worker = errors.loc[code]
            skills[name] = float(sum(priors[c] * worker.loc[c, c] for c in priors.index if c in worker.index))
    else:
        _, worker_names = pd.factorize(data["worker"])
        knowing = dict(zip(worker_names.tolist(), model.spamming_[:, 1].tolist()))
        skills = {name: float(knowing[code]) for code, name in enumerate(t.annotators)}
    probas = model.probas_
    entropy = _entropy(probas.to_numpy(dtype=float))
    labels = {t.units[int(u)]: t.domain[int(label)] for u, label in model.labels_.items()}
    uncertainty = {t.units[int(u)]: float(h) for u, h in zip(probas.index, entropy)}
    return Competence(method=method, skills=skills, labels=labels, uncertainty=uncertainty)


def most_uncertain(comp: Competence, k: int = 20) -> list[tuple[Hashable, float]]:
    """The ``k`` units whose aggregated label is least certain, highest entropy first."""
    ranked = sorted(comp.uncertainty.items(), key=lambda item: (-item[1], str(item[0])))
    return ranked[:k]
