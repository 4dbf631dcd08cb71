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
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from arena import outcomes

PLACEHOLDERS = ("{prompt}", "{output_1}", "{output_2}")

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


def check_rubric(rubric: str) -> None:
    """Raise ``ValueError`` naming the missing placeholder unless each appears in ``rubric``.

    Only the three placeholders are substituted (``str.replace``, not ``str.format``), so
    other braces in a rubric (a JSON example) are left alone.
    """
    if not isinstance(rubric, str) or not rubric.strip():
        raise ValueError("rubric: must be non-empty text")
    missing = [p for p in PLACEHOLDERS if p not in rubric]
    if missing:
        raise ValueError(f"rubric: must contain {', '.join(missing)}")


def build_prompt(rubric: str, prompt: str, output_1: str, output_2: str) -> str:
    """The judge's prompt: ``rubric`` with its placeholders replaced in one pass.

    One pass (a regular expression over the three names) so that an output which itself
    contains ``{output_2}`` is not substituted again.
    """
    check_rubric(rubric)
    values = {"{prompt}": prompt, "{output_1}": output_1, "{output_2}": output_2}
    return re.sub(r"\{prompt\}|\{output_1\}|\{output_2\}", lambda m: values[m.group(0)], rubric)


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


__all__ = ["Agreement", "DEFAULT_RUBRIC", "FIRST", "PLACEHOLDERS", "PairVerdict", "SECOND", "TIE", "UNPARSED",
           "agreement", "build_prompt", "check_rubric", "combine", "majority", "parse_verdict"]
