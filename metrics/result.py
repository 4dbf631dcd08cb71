"""The result every automated metric returns (plain Python, no Django import).

One small frozen dataclass shared by the text, image and multimodal metrics: the value,
a bootstrap interval over items, the number of items and the exact configuration that
produced the number (library and version, model path, layer, tokenizer, signature...),
so a score can be reproduced or compared with a published one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MetricResult:
    name: str  # e.g. "rougeL"
    value: float
    lower: float  # bootstrap interval over items (percentile); nan when n < 2
    upper: float
    n: int  # items
    config: dict[str, Any] = field(default_factory=dict)  # exact configuration
    per_item: tuple[float, ...] | None = None  # item-level values, input order; None for corpus-level metrics

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready summary: value, interval, n and config (per-item values left out)."""
        return {
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "n": self.n,
            "config": self.config,
        }


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    rng: np.random.Generator,
    rounds: int = 1000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``n`` items.

    ``statistic(indices)`` computes the metric on the items at ``indices`` (an int array
    drawn with replacement, length ``n``).  Returns ``(nan, nan)`` when ``n < 2`` or when the
    statistic is nan on every resample; nan replicates are otherwise left out.  The
    same generator state gives the same interval.
    """
    if n < 2:
        return (math.nan, math.nan)
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    if rounds < 1:
        raise ValueError(f"rounds must be positive, got {rounds}")
    samples = rng.integers(0, n, size=(rounds, n))
    values = np.array([float(statistic(idx)) for idx in samples], dtype=float)
    if np.isnan(values).all():  # the statistic is undefined on every resample (a constant column)
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lower, upper = np.nanquantile(values, [alpha, 1.0 - alpha])
    return (float(lower), float(upper))


def mean_interval(
    values: np.ndarray | list[float], rng: np.random.Generator, rounds: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of the mean of item-level values (vectorised)."""
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    if n < 2:
        return (math.nan, math.nan)
    samples = rng.integers(0, n, size=(rounds, n))
    means = arr[samples].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lower, upper = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lower), float(upper))


def mean_result(name: str, values, config: dict, rng: np.random.Generator, rounds: int = 1000) -> MetricResult:
    """The mean of item-level values as a result: its bootstrap interval, n, and the values kept."""
    arr = np.asarray(values, dtype=float)
    lower, upper = mean_interval(arr, rng, rounds=rounds)
    return MetricResult(name=name, value=float(arr.mean()) if arr.size else math.nan, lower=lower, upper=upper,
                        n=int(arr.size), config=config, per_item=tuple(float(v) for v in arr))
