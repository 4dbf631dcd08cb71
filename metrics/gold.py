"""Known-answer checks: is an answer to a gold item or attention check right? (plain Python)

A check's expected answer is a dict:

* a pair: ``{"better": "a" | "b" | "tie"}``, in terms of the unit's outputs ``a`` and ``b``
  (never screen sides).  ``"tie"`` means the two are equally good or equally bad, so both
  tie buttons ("tie", "both bad") are right.
* one output rated on criteria: ``{"ratings": {criterion key: [low, high]}}``, each range
  inclusive; every criterion named must be answered inside its range ("not applicable"
  is not inside any range).  Criteria the check does not name may be answered freely.

``kind`` ("gold" or "attention") and ``note`` ride along and do not change the scoring.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from arena.ratings import Proportion, wilson_interval

BETTER = ("a", "b", "tie")
KINDS = ("gold", "attention")
MIN_ANSWERED = 5  # checks an annotator answers before their share right is flagged


def answer_right(expected: Mapping, *, outcome: str = "", ratings: Mapping | None = None) -> bool:
    """Whether a judgment's stored answer matches the check's expected one.

    ``outcome`` is the stored pairwise outcome ("a", "b", "tie", "both_bad"); ``ratings``
    the Likert answer ({criterion: point or None}).  Raises ``ValueError`` for an expected
    answer that is neither kind.
    """
    if "better" in expected:
        better = expected["better"]
        if better == "tie":
            return outcome in ("tie", "both_bad")
        return outcome == better
    if "ratings" in expected:
        given = ratings or {}
        for key, (low, high) in expected["ratings"].items():
            point = given.get(key)
            if point is None or not low <= point <= high:
                return False
        return True
    raise ValueError("a check's expected answer needs 'better' (a pair) or 'ratings' (criteria)")


def describe(expected: Mapping, *, left_is_a: bool, criteria: Sequence[Mapping] = ()) -> str:
    """The expected answer in the words of the annotator's screen (for the quiz's feedback)."""
    if "better" in expected:
        better = expected["better"]
        if better == "tie":
            return "a tie: the two answers are equally good, or equally bad"
        left_better = (better == "a") == left_is_a
        return "the left answer is better" if left_better else "the right answer is better"
    names = {c["key"]: c for c in criteria}
    parts = []
    for key, (low, high) in expected.get("ratings", {}).items():
        criterion = names.get(key, {"name": key, "labels": []})
        labels = criterion.get("labels") or []

        def label(point: int) -> str:
            return f"{point} ({labels[point - 1]})" if 0 < point <= len(labels) else str(point)

        span = label(low) if low == high else f"{label(low)} to {label(high)}"
        parts.append(f"{criterion['name']}: {span}")
    return "; ".join(parts)


def accuracy(right: int, answered: int) -> Proportion:
    """The share of checks answered right, with its Wilson 95% interval (NaN share when none)."""
    return wilson_interval(right, answered)


def below_pass(right: int, answered: int, pass_share: float, *, min_answered: int = MIN_ANSWERED) -> bool:
    """Flag an annotator whose share right is under the pass mark, once they have answered
    ``min_answered`` checks (fewer says too little to act on)."""
    return answered >= min_answered and right < pass_share * answered


__all__ = ["BETTER", "KINDS", "MIN_ANSWERED", "accuracy", "answer_right", "below_pass", "describe"]
