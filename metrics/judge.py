"""LLM-as-judge: the prompt, the verdict format, both-orders combination and judge-human agreement.

Plain Python, no Django import.  Outcomes use :mod:`arena.outcomes` codes (``A``, ``B``,
``TIE``, ``BOTH_BAD``), always in terms of the unit's outputs ``a`` and ``b``.

The verdict format is strict so that a rambling reply is never read as a vote: the reply's
last non-empty line must be ``VERDICT: 1``, ``VERDICT: 2`` or ``VERDICT: tie`` (case and
surrounding spaces ignored; a trailing full stop allowed).  Anything else is *unparsed*.
Each unit is asked twice, once with ``output_a`` as "Output 1" and once with ``output_b``
as "Output 1", because LLM judges prefer a position (Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", section 3.3); a pair whose two answers do
not name the same output, or where either answer is unparsed, counts as a tie and as
inconsistent.

A Likert judge (kind ``likert``) rates one output at a time on one criterion of the study:
its rubric holds ``{prompt}``, ``{output}``, ``{criterion}`` and ``{scale}`` (and, if it
wants, ``{description}``), and the reply's last non-empty line must be ``SCORE: <integer>``
with the integer on the criterion's scale.  A reply without that line, or with a point off
the scale, gives *no score* for the item (``None``): it is counted as unparseable and never
replaced by a guessed point.  Its agreement with people (:func:`likert_agreement`) is per
criterion, against each output's human ratings.
"""
from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from arena import outcomes

from . import trust
from .result import MetricResult

PAIRWISE, LIKERT = "pairwise", "likert"
KINDS = (PAIRWISE, LIKERT)

PLACEHOLDERS = ("{prompt}", "{output_1}", "{output_2}")
# {description} is optional: a criterion's description may be empty.
LIKERT_PLACEHOLDERS = ("{prompt}", "{output}", "{criterion}", "{scale}")
LIKERT_OPTIONAL = ("{description}",)

DEFAULT_RUBRIC = """You are comparing two answers to the same request.

Request:
{prompt}

Output 1:
{output_1}

Output 2:
{output_2}

Which output answers the request better: more correct, more helpful, clearer? Ignore which
one comes first and how long each is. Explain briefly, then end your reply with one line,
exactly one of:
VERDICT: 1
VERDICT: 2
VERDICT: tie"""

# The verdicts a reply can give, in positions of the prompt (which output was shown first).
FIRST, SECOND, TIE, UNPARSED = "1", "2", "tie", "unparsed"

_VERDICT = re.compile(r"^\s*verdict\s*:\s*(1|2|tie)\s*\.?\s*$", re.IGNORECASE)


DEFAULT_LIKERT_RUBRIC = """You are rating one answer to a request on a single criterion.

Request:
{prompt}

Answer:
{output}

Criterion: {criterion}
{description}

Rate the answer on this criterion only, on a scale of {scale} (higher is better). Ignore how
long the answer is. Explain briefly, then end your reply with one line, exactly:
SCORE: <a whole number from {scale}>"""

_SCORE = re.compile(r"^\s*score\s*:\s*([+-]?\d+)\s*\.?\s*$", re.IGNORECASE)


def default_rubric(kind: str = PAIRWISE) -> str:
    """The rubric an empty one stands for, per judge kind."""
    if kind not in KINDS:
        raise ValueError(f"kind: unknown judge kind {kind!r}; use one of {', '.join(KINDS)}")
    return DEFAULT_LIKERT_RUBRIC if kind == LIKERT else DEFAULT_RUBRIC


def check_rubric(rubric: str, kind: str = PAIRWISE) -> None:
    """Raise ``ValueError`` naming the missing placeholder unless each appears in ``rubric``.

    Pairwise: ``{prompt}``, ``{output_1}``, ``{output_2}``.  Likert: ``{prompt}``,
    ``{output}``, ``{criterion}``, ``{scale}`` (``{description}`` optional).  Only these
    names are substituted (one regular-expression pass, not ``str.format``), so other braces
    in a rubric (a JSON example) are left alone.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: unknown judge kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(rubric, str) or not rubric.strip():
        raise ValueError("rubric: must be non-empty text")
    missing = [p for p in (LIKERT_PLACEHOLDERS if kind == LIKERT else PLACEHOLDERS) if p not in rubric]
    if missing:
        raise ValueError(f"rubric: a {kind} rubric must contain {', '.join(missing)}")


def build_prompt(rubric: str, prompt: str, output_1: str, output_2: str) -> str:
    """The judge's prompt: ``rubric`` with its placeholders replaced in one pass.

    One pass (a regular expression over the three names) so that an output which itself
    contains ``{output_2}`` is not substituted again.
    """
    check_rubric(rubric)
    values = {"{prompt}": prompt, "{output_1}": output_1, "{output_2}": output_2}
    return re.sub(r"\{prompt\}|\{output_1\}|\{output_2\}", lambda m: values[m.group(0)], rubric)


def scale_text(scale: int) -> str:
    """What ``{scale}`` reads as: ``"1 to 5"``."""
    return f"1 to {int(scale)}"


def describe(criterion: Mapping) -> str:
    """What ``{description}`` reads as for a study criterion: its ``description`` if it has one,
    then the meaning of each point from its labels ("1 = Wrong, 2 = Partly right, 3 = Right");
    empty when it has neither."""
    parts = []
    text = str(criterion.get("description") or "").strip()
    if text:
        parts.append(text)
    labels = [str(x) for x in criterion.get("labels") or []]
    if labels:
        parts.append("Points: " + ", ".join(f"{i} = {label}" for i, label in enumerate(labels, 1)))
    return "\n".join(parts)


def build_likert_prompt(rubric: str, prompt: str, output: str, criterion: str, description: str, scale: int) -> str:
    """A Likert judge's prompt: the five placeholders replaced in one pass (so an output that
    contains ``{scale}`` is not substituted again)."""
    check_rubric(rubric, LIKERT)
    values = {"{prompt}": prompt, "{output}": output, "{criterion}": criterion, "{description}": description,
              "{scale}": scale_text(scale)}
    return re.sub(r"\{prompt\}|\{output\}|\{criterion\}|\{description\}|\{scale\}",
                  lambda m: values[m.group(0)], rubric)


def parse_score(reply: str | None, scale: int) -> int | None:
    """The point from the reply's last non-empty line ``SCORE: <integer>`` when it lies in
    ``1..scale``; ``None`` (unparseable: no score) otherwise, never a clamped or guessed one."""
    if not reply:
        return None
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = _SCORE.match(lines[-1])
    if not match:
        return None
    value = int(match.group(1))
    return value if 1 <= value <= scale else None


def parse_verdict(reply: str | None) -> str:
    """``"1"``, ``"2"`` or ``"tie"`` from the reply's last non-empty line, else ``"unparsed"``."""
    if not reply:
        return UNPARSED
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return UNPARSED
    match = _VERDICT.match(lines[-1])
    return match.group(1).lower() if match else UNPARSED


def _in_ab(verdict: str, a_first: bool) -> int | None:
    """A positional verdict as an outcome code over a/b (``None`` when unparsed)."""
    if verdict == TIE:
        return outcomes.TIE
    if verdict == FIRST:
        return outcomes.A if a_first else outcomes.B
    if verdict == SECOND:
        return outcomes.B if a_first else outcomes.A
    return None


@dataclass(frozen=True)
class PairVerdict:
    """The combined verdict of one unit: its outcome code and whether the two orders agreed."""

    outcome: int
    consistent: bool


def combine(a_first: str, b_first: str) -> PairVerdict:
    """Combine the verdict with ``output_a`` shown first and the one with ``output_b`` first.

    Consistent (both parsed and naming the same output, or both tie): that outcome.
    Otherwise (they disagree, or either is unparsed): a tie, marked inconsistent.
    """
    first, second = _in_ab(a_first, True), _in_ab(b_first, False)
    if first is not None and first == second:
        return PairVerdict(first, True)
    return PairVerdict(outcomes.TIE, False)


@dataclass(frozen=True)
class Agreement:
    """Judge-human agreement over ``n`` units: Cohen's kappa and the share of equal labels.

    ``kappa`` is ``None`` when undefined (no units, or chance agreement 1: both raters used
    one and the same label throughout).
    """

    kappa: float | None
    percent: float | None
    n: int


def agreement(judge: Sequence[int], human: Sequence[int]) -> Agreement:
    """Cohen's kappa and percent agreement between two nominal labellings of the same units.

    kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement and p_e the chance
    agreement from the two raters' marginals (Cohen 1960, "A coefficient of agreement for
    nominal scales"); the same definition as ``sklearn.metrics.cohen_kappa_score`` without
    weights.  Labels are outcome codes; ``BOTH_BAD`` is folded into ``TIE`` first, since a
    judge answers only 1, 2 or tie.  ``percent`` is in 0..100.
    """
    if len(judge) != len(human):
        raise ValueError(f"judge and human labellings differ in length: {len(judge)} != {len(human)}")
    n = len(judge)
    if n == 0:
        return Agreement(None, None, 0)
    fold = {outcomes.BOTH_BAD: outcomes.TIE}
    j = [fold.get(x, x) for x in judge]
    h = [fold.get(x, x) for x in human]
    labels = sorted(set(j) | set(h))
    p_o = sum(x == y for x, y in zip(j, h)) / n
    p_e = sum((j.count(c) / n) * (h.count(c) / n) for c in labels)
    kappa = None if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)
    return Agreement(kappa, 100.0 * p_o, n)


def majority(codes: Sequence[int]) -> int | None:
    """The human majority outcome of one unit: the most frequent of a/b/tie (both-bad counted
    as tie); a tie between the most frequent labels is a tie; ``None`` for no judgments."""
    if not codes:
        return None
    folded = [outcomes.TIE if c == outcomes.BOTH_BAD else c for c in codes]
    counts = {c: folded.count(c) for c in set(folded)}
    top = max(counts.values())
    winners = [c for c, k in counts.items() if k == top]
    return winners[0] if len(winners) == 1 else outcomes.TIE


def weighted_kappa(judge: Sequence[int], human: Sequence[int], scale: int) -> float | None:
    """Quadratic-weighted Cohen's kappa of two ratings of the same items on points ``1..scale``.

    kappa_w = 1 - sum(w * O) / sum(w * E), with w_ij = (i - j)^2 / (scale - 1)^2 over the whole
    scale (not only the points used), O the observed joint proportions and E the product of
    the two marginals (Cohen 1968, "Weighted kappa"; equal to
    ``sklearn.metrics.cohen_kappa_score(..., weights="quadratic", labels=range(1, scale + 1))``).
    ``None`` when undefined: no items, or the expected disagreement is zero (both raters gave
    one and the same point throughout).
    """
    if len(judge) != len(human):
        raise ValueError(f"judge and human ratings differ in length: {len(judge)} != {len(human)}")
    if scale < 2:
        raise ValueError(f"scale must be at least 2; got {scale!r}")
    for x in (*judge, *human):
        if not 1 <= x <= scale:
            raise ValueError(f"rating {x!r} is off the scale 1..{scale}")
    n = len(judge)
    if n == 0:
        return None
    observed = np.zeros((scale, scale))
    for x, y in zip(judge, human):
        observed[int(x) - 1, int(y) - 1] += 1
    observed /= n
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    idx = np.arange(scale)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (scale - 1) ** 2
    disagree_e = float((weights * expected).sum())
    if disagree_e <= 0.0:
        return None
    return 1.0 - float((weights * observed).sum()) / disagree_e


def rounded_median(values: Sequence[float]) -> int:
    """The median of one output's human points, rounded half up (a median of 3.5 is 4)."""
    if not values:
        raise ValueError("no ratings to take the median of")
    return int(math.floor(statistics.median(values) + 0.5))


@dataclass(frozen=True)
class LikertAgreement:
    """Judge-human agreement on one criterion over ``n`` outputs rated by both.

    ``kappa`` (quadratic-weighted) and ``percent`` (exact agreement, 0..100) compare the
    judge's point with the rounded human median; ``kendall_tau`` and ``spearman_rho`` compare
    the judge's point with the human mean, with percentile bootstrap intervals over outputs.
    """

    kappa: float | None
    percent: float | None
    n: int
    kendall_tau: MetricResult
    spearman_rho: MetricResult


def likert_agreement(judge: Sequence[int], human: Sequence[Sequence[int]], scale: int, rng: np.random.Generator,
                     rounds: int = trust.ROUNDS, level: float = 0.95, criterion: str = "") -> LikertAgreement:
    """Agreement of a Likert judge with people on one criterion.

    ``judge[i]`` is the judge's point for output i, ``human[i]`` the human points the same
    output got (at least one; outputs without a judge score or without human ratings are
    left out by the caller).  Rank correlations come from :func:`metrics.trust.output_agreement`;
    ``rounds=0`` gives the point values only (intervals nan), for figures still changing.
    """
    if len(judge) != len(human):
        raise ValueError(f"judge and human differ in length: {len(judge)} != {len(human)}")
    medians = [rounded_median(h) for h in human]
    means = [float(np.mean(h)) for h in human]
    n = len(judge)
    kappa = weighted_kappa(judge, medians, scale)
    percent = 100.0 * sum(j == m for j, m in zip(judge, medians)) / n if n else None
    points = [float(j) for j in judge]
    if rounds == 0:
        tau, rho = trust.correlations(points, means)
        config = {"level": "output", "bootstrap": "none"}
        return LikertAgreement(kappa, percent, n, MetricResult("kendall_tau", tau, math.nan, math.nan, n, config),
                               MetricResult("spearman_rho", rho, math.nan, math.nan, n, config))
    corr = trust.output_agreement(points, means, rng, rounds=rounds, level=level, criterion=criterion)
    return LikertAgreement(kappa, percent, n, corr["kendall_tau"], corr["spearman_rho"])


__all__ = ["Agreement", "DEFAULT_LIKERT_RUBRIC", "DEFAULT_RUBRIC", "FIRST", "KINDS", "LIKERT", "LIKERT_PLACEHOLDERS",
           "LikertAgreement", "PAIRWISE", "PLACEHOLDERS", "PairVerdict", "SECOND", "TIE", "UNPARSED", "agreement",
           "build_likert_prompt", "build_prompt", "check_rubric", "combine", "default_rubric", "describe",
           "likert_agreement", "majority", "parse_score", "parse_verdict", "rounded_median", "scale_text",
           "weighted_kappa"]
