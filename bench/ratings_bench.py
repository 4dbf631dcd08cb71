"""Benchmark the leaderboard math: counting, Bradley-Terry fit and bootstrap.

Usage::

    python bench/ratings_bench.py                     # pure part: 1,000,000 battles, 50 models
    python bench/ratings_bench.py --battles 200000 --fastchat-rounds 2

The pure part (:func:`bench_pure`) simulates battles with known strengths, times
``arena.ratings`` step by step, and in the same run times the FastChat approach to the
same numbers: a scikit-learn logistic regression on one design row per battle (the
battles duplicated so that a tie is one win each way, as ``compute_mle_elo`` in the
Chatbot Arena notebook does) and a bootstrap that resamples individual battles and
refits. The FastChat bootstrap is timed for a few rounds and extrapolated to the full
number of rounds; the output says so. FastChat uses pandas to build its design matrix;
this reimplementation uses numpy, which is no slower.

A ``--db`` part (Django and PostgreSQL end to end: SQL counts, fit, snapshot) belongs in
a separate function next to :func:`bench_pure`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena import ratings  # noqa: E402


def simulate_battles(
    n_models: int,
    n_battles: int,
    rng: np.random.Generator,
    *,
    tie_rate: float = 0.3,
    both_bad_share: float = 0.3,
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Random pairs with true ratings ~ N(1000, 150^2) Elo.

    Between equals a battle is tied with probability ``tie_rate``, between unequal
    models proportionally less (``tie_rate * 2 min(p, 1 - p)``), and the wins make up the
    rest so that ``P(win) + P(tie) / 2`` is exactly the Bradley-Terry probability ``p``:
    ties-as-half then estimates the true ratings without bias.
    """
    true = rng.normal(1000.0, 150.0, n_models)
    names = [f"model-{k:02d}" for k in range(n_models)]
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    p_a = 1.0 / (1.0 + 10.0 ** ((true[b] - true[a]) / 400.0))
    p_tie = tie_rate * 2.0 * np.minimum(p_a, 1.0 - p_a)
    u = rng.random(n_battles)
    tie_code = np.where(rng.random(n_battles) < both_bad_share, 3, 2)
    code = np.where(u < p_a - p_tie / 2, 0, np.where(u < p_a + p_tie / 2, tie_code, 1))
    outcome_names = np.array(ratings.OUTCOMES, dtype=object)
    return [names[k] for k in a], [names[k] for k in b], list(outcome_names[code]), true


def _fastchat_mle_elo(a: np.ndarray, b: np.ndarray, code: np.ndarray, n_models: int) -> np.ndarray:
    """Chatbot Arena notebook's ``compute_mle_elo``, with numpy in place of pandas."""
    from sklearn.linear_model import LogisticRegression

    n = 2 * a.size  # every battle twice: a win is two wins, a tie one win each way
    x = np.zeros((n, n_models))
    rows = np.arange(n)
    x[rows, np.concatenate([a, a])] = +math.log(10)
    x[rows, np.concatenate([b, b])] = -math.log(10)
    y = np.zeros(n)
    y[np.concatenate([code == 0, code == 0])] = 1.0
    y[np.concatenate([code >= 2, np.zeros(a.size, dtype=bool)])] = 1.0
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    model.fit(x, y)
    elo = 400.0 * model.coef_[0]
    return elo - elo.mean() + 1000.0


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_pure(
    *,
    n_models: int = 50,
    n_battles: int = 1_000_000,
    rounds: int = 1000,
    fastchat_rounds: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Time arena.ratings and the FastChat approach on the same simulated battles.

    Prints the figures and returns them (seconds, and the speed ratio).
    """
    rng = np.random.default_rng(seed)
    model_a, model_b, outcome, true = simulate_battles(n_models, n_battles, rng)
    print(f"{n_battles:,} simulated battles among {n_models} models (seed {seed}), {rounds} bootstrap rounds")

    counts, t_count = _timed(ratings.count_battles, model_a, model_b, outcome)
    fitted, t_fit = _timed(ratings.fit_bradley_terry, counts)
    boot_rng = np.random.default_rng(seed + 1)
    samples, t_boot = _timed(ratings.bootstrap_ratings, counts, rounds=rounds, rng=boot_rng)
    ours = t_count + t_fit + t_boot
    width = np.percentile(samples, 97.5, axis=0) - np.percentile(samples, 2.5, axis=0)
    error = np.abs(fitted - (true - true.mean() + 1000.0))
    print("arena.ratings")
    print(f"  count_battles              {t_count:8.3f} s")
    print(f"  fit_bradley_terry          {t_fit:8.3f} s")
    print(f"  bootstrap_ratings ({rounds})  {t_boot:8.3f} s")
    print(f"  total                      {ours:8.3f} s")
    print(f"  |rating - truth|: mean {error.mean():.2f}, max {error.max():.2f} Elo")
    print(f"  mean 95% interval width: {width.mean():.2f} Elo")

    index = {name: k for k, name in enumerate(counts.models)}
    a = np.fromiter(map(index.__getitem__, model_a), dtype=np.intp, count=n_battles)
    b = np.fromiter(map(index.__getitem__, model_b), dtype=np.intp, count=n_battles)
    code = np.fromiter(map(ratings.OUTCOMES.index, outcome), dtype=np.intp, count=n_battles)
    reference, t_fc_fit = _timed(_fastchat_mle_elo, a, b, code, n_models)
    fc_rng = np.random.default_rng(seed + 2)
    start = time.perf_counter()
    for _ in range(fastchat_rounds):
        pick = fc_rng.integers(0, n_battles, n_battles)  # battles.sample(frac=1.0, replace=True)
        _fastchat_mle_elo(a[pick], b[pick], code[pick], n_models)
    t_fc_round = (time.perf_counter() - start) / fastchat_rounds
    t_fc_boot = t_fc_round * rounds
    theirs = t_fc_fit + t_fc_boot
    print("FastChat approach (scikit-learn LogisticRegression on individual battles)")
    print(f"  fit                        {t_fc_fit:8.3f} s")
    print(f"  bootstrap, per round       {t_fc_round:8.3f} s  (mean of {fastchat_rounds} rounds)")
    print(f"  bootstrap ({rounds})          {t_fc_boot:8.1f} s  EXTRAPOLATED from {fastchat_rounds} rounds")
    print(f"  total                      {theirs:8.1f} s  (extrapolated)")
    gap = np.abs(fitted - reference).max()
    print(f"  max |arena.ratings - scikit-learn| rating difference: {gap:.2e} Elo")
    print(f"speed ratio, fit + {rounds}-round bootstrap (+ counting for ours): {theirs / ours:,.0f}x")
    return {
        "count_s": t_count,
        "fit_s": t_fit,
        "bootstrap_s": t_boot,
        "total_s": ours,
        "fastchat_fit_s": t_fc_fit,
        "fastchat_round_s": t_fc_round,
        "fastchat_total_extrapolated_s": theirs,
        "speed_ratio": theirs / ours,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--battles", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--fastchat-rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bench_pure(
        n_models=args.models,
        n_battles=args.battles,
        rounds=args.rounds,
        fastchat_rounds=args.fastchat_rounds,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
