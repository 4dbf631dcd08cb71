"""Whether two outputs are identical or nearly so (plain Python, no Django import).

A pair of such outputs is not served: there is nothing to choose between them, and the
pair is recorded as a tie by rule.  The comparison ignores case and runs of whitespace,
looks at the first ``max_chars`` characters only, and compares word sequences with
:class:`difflib.SequenceMatcher` after two cheap upper bounds, so its cost stays small
when many pairs are built at once.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def normalise(text: str, max_chars: int) -> str:
    return " ".join(text[: max_chars * 2].split()).casefold()[:max_chars]


def similarity_at_least(a: str, b: str, percent: int, max_chars: int = 4000) -> bool:
    """Whether ``a`` and ``b`` are at least ``percent`` % similar (100: equal once normalised;
    0: the rule is off and nothing is similar enough)."""
    if percent <= 0:
        return False
    na, nb = normalise(a, max_chars), normalise(b, max_chars)
    if na == nb:
        return True
    if percent >= 100 or not na or not nb:
        return False
    threshold = percent / 100
    wa, wb = _WORD.findall(na), _WORD.findall(nb)
    matcher = SequenceMatcher(None, wa, wb, autojunk=False)
    # real_quick_ratio bounds by lengths alone, quick_ratio by the words shared (linear)
    return (matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold
            and matcher.ratio() >= threshold)
