"""Bradley-Terry ratings with bootstrap intervals for battles from outside any study."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from annotation.uploads import Battles, UploadError, parse_battles
from arena import ratings


def parse_anchor(value: str | None) -> tuple[str, float] | None:
    if not value:
        return None
    model, sep, rating = value.rpartition("=")
    if not sep or not model:
        raise CommandError(f"--anchor {value!r}: use MODEL=RATING, e.g. --anchor gpt-4=1200")
    try:
        return model, float(rating)
    except ValueError:
        raise CommandError(f"--anchor {value!r}: {rating!r} is not a number") from None


def count_parsed_battles(battles: Battles) -> ratings.BattleCounts:
    """The counts ``ratings.count_battles`` would give, from the parser's integer codes.

    One ``bincount`` over (model A, model B, outcome) cells, then ``counts_from_cells``:
    no dictionary lookup per battle, which costs more than the rest of the count. A
    winner that ``ratings`` does not know goes to ``count_battles``, which says so.
    """
    if not set(battles.winners) <= set(ratings.OUTCOMES):
        return ratings.count_battles(battles.model_a, battles.model_b, battles.winner)
    outcome_of = np.array([ratings.OUTCOMES.index(w) for w in battles.winners], dtype=np.intp)
    n, k = len(battles.models), len(ratings.OUTCOMES)
    a = np.asarray(battles.a)
    b = np.asarray(battles.b)
    outcome = outcome_of[np.asarray(battles.winner_code)]
    cells = np.bincount((a * n + b) * k + outcome, minlength=n * n * k)
    present = np.flatnonzero(cells)
    return ratings.counts_from_cells(
        battles.models, present // (k * n), present // k % n, present % k, cells[present]
    )


class Command(BaseCommand):
    help = (
        "Read battles (Chatbot Arena JSON list, JSONL, or CSV with model_a, model_b, winner) "
        "and print Bradley-Terry ratings with 95% bootstrap intervals, best first."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (default 1000)")
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
        parser.add_argument("--anchor", help="pin one model's rating, e.g. --anchor mixtral-8x7b=1114")
        parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    def handle(self, *args, path: str, rounds: int, seed: int, anchor: str | None, json: bool, **options):
        file = Path(path)
        if not file.is_file():
            raise CommandError(f"{path}: no such file")
        if rounds < 1:
            raise CommandError("--rounds must be at least 1")
        pinned = parse_anchor(anchor)
        try:
            battles = parse_battles(file.read_bytes(), file.name, max_bytes=None)
        except UploadError as exc:
            raise CommandError(f"{path}:\n{exc}") from None
        try:
            counts = count_parsed_battles(battles)
            board = ratings.leaderboard(counts, rounds=rounds, rng=np.random.default_rng(seed),
                                        anchor=pinned)
        except ratings.RatingError as exc:
            raise CommandError(str(exc)) from None
        rows = [
            {"model": r.model, "rating": r.rating, "lower": r.lower, "upper": r.upper, "rank": r.rank,
             "battles": r.battles, "wins": r.wins, "ties": r.ties, "win_rate": r.win_rate}
            for r in board
        ]
        if json:
            self.stdout.write(_json_dumps(rows))
            return
        width = max(5, *(len(r["model"]) for r in rows))
        self.stdout.write(f"{'rank':>4}  {'model':<{width}}  {'rating':>7}  {'95% interval':>17}  "
                          f"{'battles':>8}  {'wins':>7}  {'ties':>7}  {'win rate':>8}")
        for r in rows:
            self.stdout.write(
                f"{r['rank']:>4}  {r['model']:<{width}}  {r['rating']:>7.1f}  "
                f"{r['lower']:>8.1f}–{r['upper']:<8.1f}  {r['battles']:>8}  {r['wins']:>7}  {r['ties']:>7}  "
                f"{r['win_rate']:>8.3f}"
            )
        self.stdout.write(f"\n{counts.n_battles} battles, {len(rows)} models, {rounds} bootstrap rounds (seed {seed}).")
        if board.regularized:
            self.stdout.write(f"Note: {board.fallback_rounds} bootstrap rounds had no finite maximum-likelihood fit and "
                              f"used an L2 prior of {board.fallback_regularization}.")


def _json_dumps(rows: list[dict]) -> str:
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    return json.dumps(clean, indent=2)
