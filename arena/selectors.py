"""Turn a study's judgments into the plain arrays that arena.ratings takes.

Every aggregate comes from one SQL ``GROUP BY`` per slice; no judgment row is loaded
into Python on the leaderboard path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db.models import Case, Count, F, IntegerField, Max, Q, QuerySet, When
from django.db.models.functions import Coalesce, NullIf

from annotation.models import Candidate, Judgment, PromptTag, StudyMember

# Outcome codes shared with arena.ratings: 0 A wins, 1 B wins, 2 tie, 3 both bad.
OUTCOME_CODE = {Judgment.Outcome.A: 0, Judgment.Outcome.B: 1, Judgment.Outcome.TIE: 2, Judgment.Outcome.BOTH_BAD: 3}
OUTCOME_NAMES = ("model_a", "model_b", "tie", "tie (bothbad)")

# The normalised length difference (a - b) / (a + b) is grouped in SQL into bins this
# wide; the style-controlled fit uses each bin's centre (an error of at most 1/40).
LENGTH_BIN = 0.05

ALL = "all"


@dataclass(frozen=True)
class Slice:
    key: str
    label: str


def study_slices(study_id: int) -> list[Slice]:
    """The leaderboard slices a study offers: everything, each prompt tag, each annotator group."""
    tags = PromptTag.objects.filter(study_id=study_id).values_list("tag", flat=True).distinct().order_by("tag")
    groups = (
        StudyMember.objects.filter(study_id=study_id, role=StudyMember.Role.ANNOTATOR).exclude(group="")
        .values_list("group", flat=True).distinct().order_by("group")
    )
    return ([Slice(ALL, "All prompts and annotators")]
            + [Slice(f"tag:{t}", f"Prompts tagged {t}") for t in tags]
            + [Slice(f"group:{g}", f"Annotator group {g}") for g in groups])


def study_judgments(study_id: int, slice_key: str = ALL) -> QuerySet:
    """Judgments that count for a slice: excluded annotators are always left out."""
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    qs = Judgment.objects.filter(study_id=study_id).exclude(annotator__in=excluded)
    kind, _, value = slice_key.partition(":")
    if slice_key == ALL:
        return qs
    if kind == "tag" and value:
        tagged = PromptTag.objects.filter(study_id=study_id, tag=value).values("prompt")
        return qs.filter(unit__prompt__in=tagged)
    if kind == "group" and value:
        members = StudyMember.objects.filter(study_id=study_id, group=value).values("user")
        return qs.filter(annotator__in=members)
    raise ValueError(f"unknown slice {slice_key!r}; use 'all', 'tag:<tag>' or 'group:<group>'")


@dataclass(frozen=True)
class BattleTable:
    """Judgments of a slice grouped by candidate pair, outcome, screen side and length bin.

    Arrays are parallel, one entry per group; ``models[a[k]]`` is unit.output_a's
    candidate of group ``k``.  ``length_bin`` is round(((len_a - len_b) / (len_a + len_b)) / LENGTH_BIN).
    """

    models: list[str]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    left_is_a: np.ndarray
    length_bin: np.ndarray
    count: np.ndarray
    n_judgments: int
    last_judgment_id: int


def _length_bin() -> Case:
    """round(((a - b) / (a + b)) / LENGTH_BIN), half away from zero, in integer arithmetic."""
    steps = round(1 / LENGTH_BIN)
    la, lb = F("unit__output_a__text_chars"), F("unit__output_b__text_chars")
    total = la + lb
    up = (2 * steps * (la - lb) + total) / NullIf(2 * total, 0)
    down = -((2 * steps * (lb - la) + total) / NullIf(2 * total, 0))
    return Coalesce(
        Case(When(unit__output_a__text_chars__gte=lb, then=up), default=down, output_field=IntegerField()), 0
    )


# Outcome code and screen side of each counted column, in this order.
_COLUMNS = [(code, left) for code in range(4) for left in (True, False)]
_OUTCOME_OF_CODE = {code: outcome for outcome, code in OUTCOME_CODE.items()}


def battle_table(study_id: int, slice_key: str = ALL) -> BattleTable:
    """One ``GROUP BY`` over the slice's judgments; everything the leaderboard shows derives from it.

    Groups by candidate pair and length bin with eight filtered counts (outcome x screen
    side), which keeps the result small; lengths come from the stored ``text_chars``.
    """
    counts = {
        f"c{k}": Count("id", filter=Q(outcome=_OUTCOME_OF_CODE[code], left_is_a=left))
        for k, (code, left) in enumerate(_COLUMNS)
    }
    rows = list(
        study_judgments(study_id, slice_key)
        .annotate(length_bin=_length_bin())
        .values("unit__output_a__candidate_id", "unit__output_b__candidate_id", "length_bin")
        .annotate(last=Max("id"), **counts)
        .order_by()
        .values_list("unit__output_a__candidate_id", "unit__output_b__candidate_id", "length_bin", "last",
                     *counts)
    )
    names = dict(Candidate.objects.filter(study_id=study_id).values_list("pk", "name"))
    models = sorted(names.values())
    table = np.array(rows, dtype=np.int64).reshape(-1, 4 + len(_COLUMNS))
    if len(table):  # candidate primary keys -> positions in `models`
        lookup = np.full(max(names) + 1, -1, dtype=np.int64)
        lookup[list(names)] = [models.index(name) for name in names.values()]
        table[:, 0], table[:, 1] = lookup[table[:, 0]], lookup[table[:, 1]]
    cells = table[:, 4:]
    k, col = np.nonzero(cells)
    codes = np.array([c for c, _ in _COLUMNS], dtype=np.intp)
    sides = np.array([left for _, left in _COLUMNS], dtype=bool)
    return BattleTable(
        models=models,
        a=table[k, 0].astype(np.intp),
        b=table[k, 1].astype(np.intp),
        outcome=codes[col],
        left_is_a=sides[col],
        length_bin=table[k, 2],
        count=cells[k, col],
        n_judgments=int(cells.sum()),
        last_judgment_id=int(table[:, 3].max()) if len(table) else 0,
    )


def latest_judgment_id(study_id: int, slice_key: str = ALL) -> int:
    return study_judgments(study_id, slice_key).aggregate(last=Max("id"))["last"] or 0


def battles_since(study_id: int, after_id: int, limit: int = 200_000):
    """Judgments after ``after_id`` in the order they were cast, as candidate names and outcomes."""
    names = dict(Candidate.objects.filter(study_id=study_id).values_list("pk", "name"))
    rows = list(
        study_judgments(study_id).filter(id__gt=after_id).order_by("id")
        .values_list("id", "unit__output_a__candidate_id", "unit__output_b__candidate_id", "outcome")[:limit]
    )
    return (
        [r[0] for r in rows],
        [names[r[1]] for r in rows],
        [names[r[2]] for r in rows],
        [OUTCOME_NAMES[OUTCOME_CODE[r[3]]] for r in rows],
    )


__all__ = ["ALL", "BattleTable", "LENGTH_BIN", "Slice", "battle_table", "battles_since", "latest_judgment_id",
           "study_judgments", "study_slices"]
