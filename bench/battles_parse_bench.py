"""Benchmark reading a battles file: ``parse_battles`` and ``manage.py arena_ratings`` against a bare ``json.load``.

Usage::

    python bench/battles_parse_bench.py                     # 1,000,000 battles, 50 models, 1000 rounds
    python bench/battles_parse_bench.py --battles 200000 --repeat 1
    python bench/battles_parse_bench.py --format jsonl      # or csv

Battles are simulated as in ``bench/ratings_bench.py`` (``simulate_battles``) and written
to a temporary file: by default a Chatbot Arena style JSON list, one element per line.
The bench then times the three below in turn, ``--repeat`` rounds after one untimed
warm-up round (the first run of each pays for growing the process's heap), and prints
the medians: the machine may be shared, and interleaving gives each the same weather.

* ``json.load`` of the file and nothing else: the floor any reader of this file pays;
* ``annotation.uploads.parse_battles`` on the file's bytes (reading them included);
* the whole ``arena_ratings`` command in-process through ``call_command`` (read, parse,
  count, Bradley-Terry fit and bootstrap, table output to a StringIO).

The goal is the whole command at most 3x the bare ``json.load``. No database is touched;
``EVALSITE_VAR_DIR`` defaults to a temporary folder so that Django's settings do not
create ``var/`` in the checkout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation.uploads import parse_battles  # noqa: E402
from bench.ratings_bench import simulate_battles  # noqa: E402


def write_battles(path: Path, model_a: list[str], model_b: list[str], winner: list[str], fmt: str) -> None:
    """Write the battles as a JSON list (one element per line), JSON Lines or CSV."""
    rows = ({"model_a": a, "model_b": b, "winner": w} for a, b, w in zip(model_a, model_b, winner))
    if fmt == "json":
        path.write_text("[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    else:
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["model_a", "model_b", "winner"])
            writer.writerows(zip(model_a, model_b, winner))


def _interleaved_times(functions, repeat: int) -> list[list[float]]:
    """Seconds per call of each function: one untimed warm-up round, then ``repeat``
    rounds calling each in turn. A result is dropped before the clock starts again."""
    times: list[list[float]] = [[] for _ in functions]
    for round_ in range(repeat + 1):
        for function, seconds in zip(functions, times):
            start = time.perf_counter()
            result = function()
            if round_:
                seconds.append(time.perf_counter() - start)
            del result
    return times


def _spread(times: list[float]) -> str:
    return "" if len(times) == 1 else f"  (median of {len(times)}: {min(times):.3f}-{max(times):.3f})"


def bench_parse(
    *,
    n_models: int = 50,
    n_battles: int = 1_000_000,
    rounds: int = 1000,
    seed: int = 0,
    repeat: int = 3,
    fmt: str = "json",
) -> dict[str, float]:
    """Time ``json.load``, ``parse_battles`` and the ``arena_ratings`` command on one file.

    Prints the figures and returns them (seconds, medians of ``repeat`` runs, and ratios).
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # DEBUG is off: a strong key is required
    var_dir = tempfile.TemporaryDirectory(prefix="evalsite-bench-")
    os.environ.setdefault("EVALSITE_VAR_DIR", var_dir.name)
    import django

    django.setup()
    from django.core.management import call_command

    rng = np.random.default_rng(seed)
    model_a, model_b, winner, _ = simulate_battles(n_models, n_battles, rng)
    with tempfile.TemporaryDirectory(prefix="battles-") as folder:
        path = Path(folder) / f"battles.{fmt}"
        write_battles(path, model_a, model_b, winner, fmt)
        size = path.stat().st_size
        print(f"{n_battles:,} simulated battles among {n_models} models (seed {seed}), "
              f"{fmt} file of {size / 2**20:.1f} MiB, {rounds} bootstrap rounds")

        battles = parse_battles(path.read_bytes(), path.name, max_bytes=None)
        same = (battles.model_a, battles.model_b, battles.winner) == (model_a, model_b, winner)
        del battles
        if not same:
            raise SystemExit("parse_battles did not return the battles that were written")

        def bare():
            if fmt == "json":
                with path.open(encoding="utf-8") as file:
                    return json.load(file)
            if fmt == "jsonl":
                with path.open(encoding="utf-8") as file:
                    return [json.loads(line) for line in file]
            with path.open(newline="", encoding="utf-8") as file:
                return list(csv.reader(file))

        def command():
            out = io.StringIO()
            call_command("arena_ratings", str(path), "--rounds", str(rounds), stdout=out)
            return out

        def parse():
            return parse_battles(path.read_bytes(), path.name, max_bytes=None)

        s_load, s_parse, s_cmd = _interleaved_times((bare, parse, command), repeat)
        t_load, t_parse, t_cmd = map(statistics.median, (s_load, s_parse, s_cmd))

    bare_name = {"json": "json.load", "jsonl": "json.loads per line", "csv": "csv.reader"}[fmt]
    print(f"  {'bare ' + bare_name:<34}{t_load:8.3f} s{_spread(s_load)}")
    print(f"  {'parse_battles':<34}{t_parse:8.3f} s{_spread(s_parse)}  ({t_parse / t_load:.2f}x)")
    print(f"  {'arena_ratings command, in-process':<34}{t_cmd:8.3f} s{_spread(s_cmd)}  ({t_cmd / t_load:.2f}x)")
    if fmt == "json" and (n_battles, n_models, rounds) == (1_000_000, 50, 1000):
        print(f"  goal: the command at most 3x the bare json.load: {'met' if t_cmd <= 3 * t_load else 'NOT met'}")
    return {
        "load_s": t_load,
        "parse_s": t_parse,
        "command_s": t_cmd,
        "parse_ratio": t_parse / t_load,
        "command_ratio": t_cmd / t_load,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--battles", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median printed)")
    parser.add_argument("--format", choices=("json", "jsonl", "csv"), default="json")
    args = parser.parse_args(argv)
    bench_parse(n_models=args.models, n_battles=args.battles, rounds=args.rounds, seed=args.seed,
                repeat=args.repeat, fmt=args.format)


if __name__ == "__main__":
    main()
