"""A slice's leaderboard as stored in a snapshot: typed on the way in and on the way out.

``RatingSnapshot.payload`` stays plain JSON (the REST API returns parts of it as is);
everything that reads it goes through :meth:`Board.from_json`, so a key is spelled in one
place.  Plain Python, no Django import.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class BoardRow:
    """One candidate's line, best first."""

    model: str
    rating: float
    lower: float
    upper: float
    median: float
    rank: int
    battles: int
    wins: float
    losses: float
    ties: float
    both_bad: float
    win_rate: float | None
    both_bad_rate: float | None


@dataclass(frozen=True)
class LikertCell:
    """One candidate on one criterion: mean with its Student-t interval (None with too few
    ratings), the number of ratings, the counts at points 1..scale and the "not applicable" count."""

    n: int
    n_na: int
    mean: float | None
    lower: float | None
    upper: float | None
    distribution: tuple[int, ...]


@dataclass(frozen=True)
class TagCell:
    """The share of a candidate's rated outputs given one tag, with its Wilson interval."""

    n: int
    of: int
    share: float | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class LikertCandidate:
    candidate: str
    criteria: dict[str, LikertCell]
    tags: dict[str, TagCell]


@dataclass(frozen=True)
class LikertBoard:
    """A slice's Likert summaries and tag rates, computed by the worker with the pairwise board.

    ``criteria`` and ``tags`` are the study's settings the summary was laid out by (a change
    to them makes the worker redo it); ``n_judgments``/``last_judgment_id`` say which Likert
    judgments it counted.
    """

    interval: str
    criteria: tuple[dict, ...]
    tags: tuple[dict, ...]
    n_judgments: int
    last_judgment_id: int
    candidates: tuple[LikertCandidate, ...] = ()
    off_scale: dict = field(default_factory=dict)  # criterion key -> answers off its current scale, left out

    @classmethod
    def from_json(cls, data: dict | None) -> LikertBoard | None:
        if not data:
            return None
        return cls(
            interval=data["interval"], criteria=tuple(data["criteria"]), tags=tuple(data["tags"]),
            n_judgments=data["n_judgments"], last_judgment_id=data.get("last_judgment_id", 0),
            off_scale=dict(data.get("off_scale") or {}),
            candidates=tuple(
                LikertCandidate(
                    candidate=c["candidate"],
                    criteria={k: LikertCell(**{**v, "distribution": tuple(v["distribution"])})
                              for k, v in c["criteria"].items()},
                    tags={k: TagCell(**v) for k, v in c["tags"].items()},
                )
                for c in data["candidates"]
            ),
        )

    def to_json(self) -> dict:
        return {
            "interval": self.interval, "criteria": list(self.criteria), "tags": list(self.tags),
            "n_judgments": self.n_judgments, "last_judgment_id": self.last_judgment_id,
            "off_scale": dict(self.off_scale),
            "candidates": [
                {"candidate": c.candidate,
                 "criteria": {k: {**asdict(v), "distribution": list(v.distribution)} for k, v in c.criteria.items()},
                 "tags": {k: asdict(v) for k, v in c.tags.items()}}
                for c in self.candidates
            ],
        }

    def rows(self) -> list[dict]:
        """Per candidate, the cells in the columns' order (for templates, which cannot look a key up)."""
        keys, tags = [c["key"] for c in self.criteria], [t["key"] for t in self.tags]
        return [{"candidate": c.candidate, "cells": [c.criteria[k] for k in keys if k in c.criteria],
                 "tag_cells": [c.tags[t] for t in tags if t in c.tags]} for c in self.candidates]


@dataclass(frozen=True)
class Board:
    """Ratings with intervals, win matrices (in ``models`` order) and bias diagnostics.

    ``style`` is the length-controlled fit (``available``, ``ratings`` by model,
    ``length_coefficient_elo``, or a ``reason``); ``position_bias`` and ``length_bias``
    are Wilson proportions as plain dicts (their JSON is what the API returns).  ``likert``:
    the slice's Likert summaries and tag rates, None when the study rates and tags nothing.
    """

    rounds: int
    seed: int
    n_battles: int
    regularization: float = 0.0
    note: str = ""
    rows: tuple[BoardRow, ...] = ()
    models: tuple[str, ...] = ()
    observed: tuple[tuple[float | None, ...], ...] = ()
    predicted: tuple[tuple[float, ...], ...] = ()
    covariance: tuple[tuple[float, ...], ...] = ()
    pair_battles: tuple[tuple[int, ...], ...] = ()
    style: dict = field(default_factory=dict)
    position_bias: dict | None = None
    length_bias: dict | None = None
    likert: LikertBoard | None = None

    @classmethod
    def from_json(cls, data: dict | None) -> Board | None:
        """The board a snapshot stored, or None for an empty payload."""
        if not data:
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["rows"] = tuple(BoardRow(**row) for row in data.get("rows", ()))
        for name in ("models",):
            values[name] = tuple(data.get(name, ()))
        for name in ("observed", "predicted", "covariance", "pair_battles"):
            values[name] = tuple(tuple(row) for row in data.get(name, ()))
        values["likert"] = LikertBoard.from_json(data.get("likert"))
        return cls(**values)

    def to_json(self) -> dict:
        data = asdict(replace(self, likert=None))
        data["likert"] = self.likert.to_json() if self.likert else None
        for name in ("rows", "models", "observed", "predicted", "covariance", "pair_battles"):
            data[name] = [list(x) if isinstance(x, tuple) else x for x in data[name]]
        return data

    @property
    def ratings(self) -> dict[str, float]:
        return {row.model: row.rating for row in self.rows}


__all__ = ["Board", "BoardRow", "LikertBoard", "LikertCandidate", "LikertCell", "TagCell"]
