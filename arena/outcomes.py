"""The pairwise outcome vocabulary, in one place (plain Python, no Django import).

An outcome has one integer code (0..3) and three spellings, one per audience:

* ``STORED``: what a judgment row keeps (``Judgment.outcome``), in terms of the unit's
  outputs ``a`` and ``b``, never of screen sides;
* ``ARENA``: Chatbot Arena's ``winner`` values, read from battle files and used by
  :mod:`arena.ratings`;
* ``CHOICES``: what the annotator's buttons send, in screen sides (``left``/``right``).

``SCORE`` is the first model's score per code (a win 1, a loss 0, both tie kinds 0.5).
"""
from __future__ import annotations

A, B, TIE, BOTH_BAD = 0, 1, 2, 3
CODES = (A, B, TIE, BOTH_BAD)

STORED = ("a", "b", "tie", "both_bad")
LABELS = ("output_a better", "output_b better", "Tie", "Both bad")
ARENA = ("model_a", "model_b", "tie", "tie (bothbad)")
CHOICES = ("left", "right", "tie", "both_bad")
SCORE = (1.0, 0.0, 0.5, 0.5)

STORED_CODE = {name: code for code, name in enumerate(STORED)}
ARENA_CODE = {name: code for code, name in enumerate(ARENA)}


def from_choice(choice: str, left_is_a: bool) -> int:
    """The outcome code of an annotator's button, given which output was on the left.

    Raises ``ValueError`` naming the allowed choices for anything else.
    """
    if choice == "left":
        return A if left_is_a else B
    if choice == "right":
        return B if left_is_a else A
    if choice == "tie":
        return TIE
    if choice == "both_bad":
        return BOTH_BAD
    raise ValueError(f"unknown choice {choice!r}; use one of {', '.join(CHOICES)}")


def swapped(code: int) -> int:
    """The same outcome seen with the two outputs exchanged (a win becomes a loss)."""
    return B if code == A else A if code == B else code


__all__ = ["A", "ARENA", "ARENA_CODE", "B", "BOTH_BAD", "CHOICES", "CODES", "LABELS", "SCORE", "STORED",
           "STORED_CODE", "TIE", "from_choice", "swapped"]
