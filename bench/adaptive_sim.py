"""Simulate studies to compare adaptive pair sampling with uniform sampling.

Usage::

    python bench/adaptive_sim.py                  # 12 models, 20 studies per strategy
    python bench/adaptive_sim.py --studies 5 --budget 1000

Each simulated study has models with known ratings (N(1000, 80^2) Elo, redrawn per
study). Both strategies start from the same warm-up (every pair once), then collect votes
in batches: "uniform" draws pairs at random, "adaptive" asks
:func:`arena.sampling.choose_pairs` given the current bootstrap. After every batch the
leaderboard is refitted (Bradley-Terry with a weak L2 prior, regularization 0.1, so that
early fits exist; 100 bootstrap rounds) and two figures recorded: Kendall's tau between
fitted and true ratings, and the mean width of the 95% intervals. The output gives, for
the level uniform sampling reaches with the whole budget, how many judgments each
strategy needs to reach it (averaged over studies, same seeds for both strategies).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena import ratings, sampling  # noqa: E402

REGULARIZATION = 0.1
BOOTSTRAP_ROUNDS = 100


def _vote(rng: np.random.Generator, true: np.ndarray, i: int, j: int) -> str:
    p = 1.0 / (1.0 + 10.0 ** ((true[j] - true[i]) / 400.0))
    return ratings.A_WINS if rng.random() < p else ratings.B_WINS


def run_study(
    true: np.ndarray, strategy: str, *, budget: int, batch: int, seed: int
) -> list[tuple[int, float, float]]:
    """One study; returns (judgments so far, Kendall tau, mean interval width) per batch."""
    rng = np.random.default_rng(seed)
    n = true.size
    names = [f"m{k:02d}" for k in range(n)]
    pairs = list(combinations(range(n), 2))
    a, b, outcome = [], [], []

    def collect(chosen):
        for i, j in chosen:
            if rng.random() < 0.5:  # random sides, as the site shows them
                i, j = j, i
            a.append(names[i])
            b.append(names[j])
            outcome.append(_vote(rng, true, i, j))

    collect(pairs)
    curve = []
    while True:
        counts = ratings.count_battles(a, b, outcome, models=names)
        samples = ratings.bootstrap_ratings(
            counts, rounds=BOOTSTRAP_ROUNDS, rng=rng, regularization=REGULARIZATION
        )
        fitted = ratings.fit_bradley_terry(counts, regularization=REGULARIZATION)
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
        curve.append((len(a), float(kendalltau(fitted, true).statistic), float((high - low).mean())))
        if len(a) >= budget:
            return curve
        if strategy == "uniform":
            collect([pairs[k] for k in rng.integers(0, len(pairs), batch)])
        else:
            collect(sampling.choose_pairs(samples, counts.pair_battles, pairs, rng, k=batch))


def _needed(curve: np.ndarray, column: int, target: float, higher_is_better: bool) -> float:
    values = curve[:, column]
    reached = values >= target if higher_is_better else values <= target
    hits = np.flatnonzero(reached)
    return float(curve[hits[0], 0]) if hits.size else float("nan")


def simulate(
    *, n_models: int = 12, studies: int = 20, budget: int = 2000, batch: int = 40, seed: int = 0
) -> None:
    """Run both strategies on the same simulated studies and print the comparison."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    curves = {"uniform": [], "adaptive": []}
    for study in range(studies):
        true = rng.normal(1000.0, 80.0, n_models)
        for strategy in curves:
            curve = run_study(true, strategy, budget=budget, batch=batch, seed=seed * 1000 + study)
            curves[strategy].append(curve)
    mean = {s: np.array(c).mean(axis=0) for s, c in curves.items()}
    print(
        f"{studies} simulated studies x 2 strategies, {n_models} models, ratings ~ N(1000, 80^2), "
        f"budget {budget} judgments, batches of {batch}, seed {seed}"
    )
    header = f"{'tau uniform':>11} {'tau adaptive':>12} | {'width uniform':>13} {'width adaptive':>14}"
    print(f"{'judgments':>10} | {header}")
    steps = mean["uniform"][:, 0]
    for k in np.unique(np.linspace(0, steps.size - 1, 9).round().astype(int)):
        u, d = mean["uniform"][k], mean["adaptive"][k]
        print(f"{int(u[0]):>10} | {u[1]:>11.3f} {d[1]:>12.3f} | {u[2]:>13.1f} {d[2]:>14.1f}")
    tau_target = mean["uniform"][-1, 1]
    width_target = mean["uniform"][-1, 2]
    print("judgments needed to reach what uniform sampling reaches with the whole budget")
    print("(first batch at which the mean over studies gets there):")
    for label, column, target, higher in (
        (f"Kendall tau >= {tau_target:.3f}", 1, tau_target, True),
        (f"mean 95% interval width <= {width_target:.1f} Elo", 2, width_target, False),
    ):
        uniform = _needed(mean["uniform"], column, target, higher)
        adaptive = _needed(mean["adaptive"], column, target, higher)
        ratio = f"{adaptive / uniform:.2f}" if np.isfinite(adaptive) else "n/a"
        shown = f"{adaptive:.0f}" if np.isfinite(adaptive) else f"not within {budget}"
        print(f"  {label:<40} uniform {uniform:>6.0f}   adaptive {shown:>6}   (adaptive/uniform {ratio})")
    print(f"({time.perf_counter() - start:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    simulate(n_models=args.models, studies=args.studies, budget=args.budget, batch=args.batch, seed=args.seed)


if __name__ == "__main__":
    main()
