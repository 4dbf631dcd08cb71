"""Per-annotator quality statistics (plain Python, no Django import).

The selectors read judgments from the database as plain tuples; these functions turn
them into the numbers of the quality table: median time per task, agreement with the
majority of peers, straight-lining and speeding.  Every flag comes with a sentence in
plain words, for the evaluator who decides whether to exclude.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MIN_PEER_JUDGMENTS = 3  # a unit speaks for a majority once it has this many judgments, the annotator's included


def median(values: Iterable[float]) -> float | None:
    """The median of the values (mean of the middle two for an even count); ``None`` when empty."""
    ordered = sorted(v for v in values if v is not None)
    n = len(ordered)
    if not n:
        return None
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def longest_run(answers: Sequence[Hashable]) -> tuple[int, Hashable | None]:
    """The longest stretch of the same answer given in a row: (its length, that answer)."""
    best, best_answer, run = 0, None, 0
    previous = object()
    for answer in answers:
        run = run + 1 if answer == previous else 1
        previous = answer
        if run > best:
            best, best_answer = run, answer
    return best, best_answer


def top_share(answers: Sequence[Hashable]) -> tuple[Hashable | None, float]:
    """The most common answer and its share of all answers (``(None, 0.0)`` when empty)."""
    if not answers:
        return None, 0.0
    answer, count = Counter(answers).most_common(1)[0]
    return answer, count / len(answers)


def peer_majority(votes: Mapping[Hashable, int], own: Hashable | None = None, *,
                  own_in_votes: bool = True) -> Hashable | None:
    """The outcome most peers chose on one unit, leaving the annotator's own vote out.

    ``votes`` counts the unit's outcomes; ``own`` is the annotator's outcome (``None``: no
    annotator, just the majority of ``votes``) and ``own_in_votes`` whether ``votes``
    includes it (an excluded annotator's vote is not counted).  ``None`` when the unit has
    fewer than ``MIN_PEER_JUDGMENTS`` judgments, own included, or when the peers' top
    outcomes are tied: there is no majority to agree with.
    """
    peers = Counter(votes)
    if own is not None and own_in_votes:
        if peers[own] < 1:
            raise ValueError(f"the annotator's vote {own!r} is not among the unit's votes")
        peers[own] -= 1
    peers = Counter({k: n for k, n in peers.items() if n > 0})
    if sum(peers.values()) + (own is not None) < MIN_PEER_JUDGMENTS:
        return None
    top = peers.most_common(2)
    if len(top) == 2 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def peer_agreement(own_votes: Mapping[Hashable, Hashable], unit_votes: Mapping[Hashable, Mapping[Hashable, int]],
                   *, own_in_votes: bool = True) -> tuple[int, int]:
    """(agreeing, compared): on how many of the annotator's units their outcome equals the
    peers' majority, out of the units that have one.

    ``own_votes`` maps unit to the annotator's outcome; ``unit_votes`` maps unit to the
    outcome counts of the counted judgments on it, which include the annotator's own
    unless ``own_in_votes`` is false (an excluded annotator, compared with the others).
    """
    agree = compared = 0
    for unit, own in own_votes.items():
        majority = peer_majority(unit_votes.get(unit, {}), own, own_in_votes=own_in_votes)
        if majority is None:
            continue
        compared += 1
        agree += own == majority
    return agree, compared


@dataclass(frozen=True)
class Thresholds:
    speeding_seconds: float = 3.0
    straightline_share: float = 0.9
    straightline_run: int = 20
    min_judgments: int = 10


@dataclass(frozen=True)
class AnnotatorQuality:
    judgments: int
    median_seconds: float | None  # served -> submitted, on the server's clock
    median_active_seconds: float | None  # the client's active time (tab visible, not idle)
    agree: int
    compared: int
    longest_run: int
    top_answer: Hashable | None
    top_share: float
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None


def annotator_quality(answers: Sequence[Hashable], seconds: Sequence[float], active_seconds: Sequence[float | None],
                      agree: int, compared: int, thresholds: Thresholds,
                      describe=str) -> AnnotatorQuality:
    """One annotator's row: ``answers`` in the order given (the screen choice, so pressing
    the same key over and over shows), their times, and the peer agreement counts.

    Flags (plain sentences) need ``thresholds.min_judgments`` judgments at least;
    ``describe`` turns an answer into words for them.
    """
    n = len(answers)
    run, run_answer = longest_run(answers)
    top, share = top_share(answers)
    active = median(a for a in active_seconds if a is not None)
    flags: list[str] = []
    if n >= thresholds.min_judgments:
        if share >= thresholds.straightline_share:
            flags.append(f"Straight-lining: answered “{describe(top)}” in {share:.0%} of {n} judgments.")
        elif run >= thresholds.straightline_run:
            flags.append(f"Straight-lining: answered “{describe(run_answer)}” {run} times in a row.")
        if active is not None and active < thresholds.speeding_seconds:
            flags.append(f"Speeding: half of the tasks took under {active:.1f} s of active time "
                         f"(the limit is {thresholds.speeding_seconds:g} s).")
    return AnnotatorQuality(judgments=n, median_seconds=median(seconds), median_active_seconds=active,
                            agree=agree, compared=compared, longest_run=run, top_answer=top, top_share=share,
                            flags=tuple(flags))
