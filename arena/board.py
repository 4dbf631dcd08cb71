"""A slice's leaderboard as stored in a snapshot: typed on the way in and on the way out.

``RatingSnapshot.payload`` stays plain JSON (the REST API returns parts of it as is);
everything that reads it goes through :meth:`Board.from_json`, so a key is spelled in one
place.  Plain Python, no Django import.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


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
class Board:
    """Ratings with intervals, win matrices (in ``models`` order) and bias diagnostics.

    ``style`` is the length-controlled fit (``available``, ``ratings`` by model,
    ``length_coefficient_elo``, or a ``reason``); ``position_bias`` and ``length_bias``
    are Wilson proportions as plain dicts (their JSON is what the API returns).
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
        return cls(**values)

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("rows", "models", "observed", "predicted", "covariance", "pair_battles"):
            data[name] = [list(x) if isinstance(x, tuple) else x for x in data[name]]
        return data

    @property
    def ratings(self) -> dict[str, float]:
        return {row.model: row.rating for row in self.rows}


__all__ = ["Board", "BoardRow"]
