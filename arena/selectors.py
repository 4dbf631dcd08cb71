"""Turn a study's judgments into the plain arrays that arena.ratings takes.

Every aggregate comes from one SQL ``GROUP BY`` per slice; no judgment row is loaded
into Python on the leaderboard path.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from django.db.models import Case, Count, F, IntegerField, Max, Min, Q, QuerySet, When
from django.db.models.functions import Coalesce, NullIf

from annotation.models import Candidate, Judgment, PromptTag, StudyMember

from . import outcomes

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


def hidden_candidates(study_id: int) -> set[str]:
    """Names of the study's candidates hidden from new pairs, read live (hiding does not touch
    the snapshot: the candidate keeps its rating, and the leaderboard marks it)."""
    return set(Candidate.objects.filter(study_id=study_id, hidden=True).values_list("name", flat=True))


def study_judgments(study_id: int, slice_key: str = ALL, left_out=()) -> QuerySet:
    """Pairwise judgments that count for a slice: excluded annotators are always left out, and so
    are the annotators in ``left_out`` (the study's ratings mode, :mod:`arena.modes`).

    Likert judgments (empty outcome; summarised by metrics.likert) are not battles."""
    qs = slice_judgments(study_id, slice_key).exclude(outcome="")
    return qs.exclude(annotator_id__in=list(left_out)) if left_out else qs


def slice_judgments(study_id: int, slice_key: str = ALL) -> QuerySet:
    """Every judgment of a slice, pairwise and Likert; excluded annotators are always left out,
    and so are answers to checks (gold items and attention checks measure the annotators)."""
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    qs = Judgment.objects.filter(study_id=study_id, unit__is_gold=False).exclude(annotator__in=excluded)
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
_COLUMNS = [(code, left) for code in outcomes.CODES for left in (True, False)]


@dataclass(frozen=True)
class Cells:
    """A slice's judgments counted by (output_a's candidate id, output_b's candidate id, length bin).

    ``counts[:, k]`` is column ``k`` of ``_COLUMNS`` (outcome x screen side).  Cells add
    up, so a refresh counts only the judgments cast since the last one and adds them to
    the cells its snapshot kept.
    """

    keys: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls) -> Cells:
        return cls(np.zeros((0, 3), dtype=np.int64), np.zeros((0, len(_COLUMNS)), dtype=np.int64))

    @classmethod
    def from_rows(cls, rows) -> Cells:
        table = np.array(rows, dtype=np.int64).reshape(-1, 3 + len(_COLUMNS))
        return cls(table[:, :3], table[:, 3:])

    def rows(self) -> list[list[int]]:
        return np.hstack([self.keys, self.counts]).tolist()

    def to_bytes(self) -> bytes:
        """A compact binary form for the snapshot (a million judgments of 50 models make
        about 100,000 cells: tens of MB as JSON, about a megabyte this way)."""
        table = np.ascontiguousarray(np.hstack([self.keys, self.counts]), dtype="<i8")
        return zlib.compress(table.tobytes(), 1)

    @classmethod
    def from_bytes(cls, data: bytes) -> Cells:
        table = np.frombuffer(zlib.decompress(data), dtype="<i8").reshape(-1, 3 + len(_COLUMNS))
        return cls(table[:, :3].astype(np.int64), table[:, 3:].astype(np.int64))

    def __add__(self, other: Cells) -> Cells:
        if not len(other.keys):
            return self
        if not len(self.keys):
            return other
        keys = np.vstack([self.keys, other.keys])
        # one sortable integer per key: candidate ids, then the length bin (|bin| <= 1 / LENGTH_BIN)
        width = int(keys[:, :2].max()) + 1
        code = (keys[:, 0] * width + keys[:, 1]) * 256 + (keys[:, 2] + 128)
        unique, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        counts = np.zeros((len(unique), len(_COLUMNS)), dtype=np.int64)
        np.add.at(counts, inverse, np.vstack([self.counts, other.counts]))
        return Cells(keys[first], counts)

    @property
    def n_judgments(self) -> int:
        return int(self.counts.sum())


def judgment_cells(study_id: int, slice_key: str = ALL, *, after_id: int = 0,
                   upto_id: int | None = None, left_out=()) -> tuple[Cells, int]:
    """One ``GROUP BY`` over the slice's judgments with ``after_id < id <= upto_id``.

    Groups by candidate pair and length bin with eight filtered counts (outcome x screen
    side), which keeps the result small; lengths come from the stored ``text_chars``.
    Returns the cells and the largest judgment id counted (``after_id`` when none).
    """
    counts = {
        f"c{k}": Count("id", filter=Q(outcome=outcomes.STORED[code], left_is_a=left))
        for k, (code, left) in enumerate(_COLUMNS)
    }
    qs = study_judgments(study_id, slice_key, left_out)
    if after_id:
        qs = qs.filter(id__gt=after_id)
    if upto_id is not None:
        qs = qs.filter(id__lte=upto_id)
    rows = list(
        qs.annotate(length_bin=_length_bin())
        .values("unit__output_a__candidate_id", "unit__output_b__candidate_id", "length_bin")
        .annotate(last=Max("id"), **counts)
        .order_by()
        .values_list("unit__output_a__candidate_id", "unit__output_b__candidate_id", "length_bin", "last", *counts)
    )
    last = max((r[3] for r in rows), default=after_id)
    return Cells.from_rows([r[:3] + r[4:] for r in rows]), last


def weighted_cells(study_id: int, slice_key: str, weights: dict[int, float]) -> tuple[Cells, int, int]:
    """The slice's cells with each annotator's judgments counted ``weights[annotator]`` times
    (1 for annotators not in ``weights``): a full pass, two ``GROUP BY`` queries.

    Returns float cells (for :func:`battle_table`; not to be stored or added to), the number of
    judgments counted (unweighted) and the largest judgment id.  With every weight 1 the cells
    equal :func:`judgment_cells`'s; a weight of 0 leaves that annotator out.
    """
    weighted = sorted(weights)
    base, last = judgment_cells(study_id, slice_key, left_out=weighted)
    keys, counts, n = [base.keys], [base.counts.astype(np.float64)], base.n_judgments
    if weighted:
        columns = {
            f"c{k}": Count("id", filter=Q(outcome=outcomes.STORED[code], left_is_a=left))
            for k, (code, left) in enumerate(_COLUMNS)
        }
        rows = list(
            study_judgments(study_id, slice_key).filter(annotator_id__in=weighted)
            .annotate(length_bin=_length_bin())
            .values("annotator_id", "unit__output_a__candidate_id", "unit__output_b__candidate_id", "length_bin")
            .annotate(last=Max("id"), **columns)
            .order_by()
            .values_list("annotator_id", "unit__output_a__candidate_id", "unit__output_b__candidate_id",
                         "length_bin", "last", *columns)
        )
        for annotator, *row in rows:
            keys.append(np.array([row[:3]], dtype=np.int64))
            cell = np.array([row[4:]], dtype=np.int64)
            counts.append(cell * float(weights[annotator]))
            n += int(cell.sum())
            last = max(last, row[3])
    return Cells(np.vstack(keys), np.vstack(counts)), n, last


def settled_judgment_id(study_id: int, slice_key: str, *, after_id: int, cutoff, left_out=()) -> int:
    """The largest id L such that every judgment of the slice up to L is surely committed.

    Ids are given at INSERT, so a judgment may commit after one with a larger id.  A
    judgment submitted before ``cutoff`` (a minute ago, say) has committed, or never
    will; so L is the largest id submitted before ``cutoff`` that no younger judgment
    precedes.  Judgments above L are counted afresh at each refresh until they settle.
    """
    agg = study_judgments(study_id, slice_key, left_out).filter(id__gt=after_id).aggregate(
        old=Max("id", filter=Q(submitted_at__lte=cutoff)), young=Min("id", filter=Q(submitted_at__gt=cutoff))
    )
    if agg["old"] is None:
        return after_id
    if agg["young"] is None:
        return agg["old"]
    return max(after_id, min(agg["old"], agg["young"] - 1))


def battle_table(study_id: int, slice_key: str = ALL, cells: Cells | None = None,
                 last_judgment_id: int | None = None) -> BattleTable:
    """The leaderboard's input: counted cells (all of the slice's judgments when not given)
    turned into parallel arrays over candidate positions in ``models``."""
    if cells is None:
        cells, last_judgment_id = judgment_cells(study_id, slice_key)
    names = dict(Candidate.objects.filter(study_id=study_id).values_list("pk", "name"))
    models = sorted(names.values())
    keys = cells.keys.copy()
    if len(keys):  # candidate primary keys -> positions in `models`
        lookup = np.full(max(max(names), int(keys[:, :2].max())) + 1, -1, dtype=np.int64)
        lookup[list(names)] = [models.index(name) for name in names.values()]
        keys[:, 0], keys[:, 1] = lookup[keys[:, 0]], lookup[keys[:, 1]]
    k, col = np.nonzero(cells.counts)
    codes = np.array([c for c, _ in _COLUMNS], dtype=np.intp)
    sides = np.array([left for _, left in _COLUMNS], dtype=bool)
    return BattleTable(
        models=models,
        a=keys[k, 0].astype(np.intp),
        b=keys[k, 1].astype(np.intp),
        outcome=codes[col],
        left_is_a=sides[col],
        length_bin=keys[k, 2],
        count=cells.counts[k, col],
        n_judgments=cells.n_judgments,
        last_judgment_id=int(last_judgment_id or 0),
    )


def latest_judgment_id(study_id: int, slice_key: str = ALL, left_out=()) -> int:
    return study_judgments(study_id, slice_key, left_out).aggregate(last=Max("id"))["last"] or 0


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
        [outcomes.ARENA[outcomes.STORED_CODE[r[3]]] for r in rows],
    )


__all__ = ["ALL", "BattleTable", "Cells", "judgment_cells", "weighted_cells", "settled_judgment_id", "LENGTH_BIN", "Slice", "battle_table", "battles_since", "latest_judgment_id",
           "slice_judgments", "study_judgments", "study_slices"]
