"""metrics.trust: rank correlations between a metric and the humans, with bootstrap intervals."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from metrics import trust


def test_it_matches_scipy_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)  # ties on purpose: tau-b, not tau-a
    y = x + rng.normal(0, 2, 40)
    tau, rho = trust.correlations(x, y)
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_a_hand_worked_example():
    # x = 1,2,3,4; y = 1,3,2,4: one discordant pair of six -> tau = (5 - 1) / 6;
    # rank differences 0,1,1,0 -> rho = 1 - 6 * 2 / (4 * 15) = 0.8
    tau, rho = trust.correlations([1, 2, 3, 4], [1, 3, 2, 4])
    assert tau == pytest.approx(4 / 6)
    assert rho == pytest.approx(0.8)


def test_perfect_agreement_is_one_and_reversed_is_minus_one_at_system_level():
    ratings = {"a": 1000.0, "b": 1050.0, "c": 1100.0, "d": 1200.0}
    level = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    scores = [(c, p, level[c] + 0.01 * p) for c in level for p in range(10)]
    res = trust.system_agreement(scores, ratings, np.random.default_rng(1), rounds=200)
    assert res["kendall_tau"].value == pytest.approx(1.0)
    assert res["spearman_rho"].value == pytest.approx(1.0)
    assert res["kendall_tau"].n == 4 and res["kendall_tau"].config["n_prompts"] == 10
    # every prompt draw keeps the order, so the interval is [1, 1]
    assert (res["kendall_tau"].lower, res["kendall_tau"].upper) == pytest.approx((1.0, 1.0))
    reversed_ = [(c, p, -v) for c, p, v in scores]
    res = trust.system_agreement(reversed_, ratings, np.random.default_rng(1), rounds=200)
    assert res["kendall_tau"].value == pytest.approx(-1.0)
    assert res["spearman_rho"].upper == pytest.approx(-1.0)


def test_the_system_level_point_is_scipy_on_the_candidate_means():
    rng = np.random.default_rng(3)
    cands = [f"m{i}" for i in range(6)]
    ratings = {c: float(r) for c, r in zip(cands, rng.normal(1000, 50, 6))}
    scores = [(c, p, float(rng.random())) for c in cands for p in range(30)]
    means = [np.mean([v for cc, _, v in scores if cc == c]) for c in cands]
    res = trust.system_agreement(scores + [("unrated", 0, 1.0)], ratings, np.random.default_rng(0), rounds=300)
    assert res["kendall_tau"].value == pytest.approx(stats.kendalltau(means, [ratings[c] for c in cands]).statistic)
    assert res["spearman_rho"].value == pytest.approx(stats.spearmanr(means, [ratings[c] for c in cands]).statistic)
    assert res["kendall_tau"].lower <= res["kendall_tau"].value <= res["kendall_tau"].upper
    assert res["spearman_rho"].config["bootstrap"].startswith("percentile, 300 rounds over prompts")


def test_the_interval_is_reproducible_with_the_same_seed():
    rng = np.random.default_rng(5)
    m, h = rng.random(50), rng.random(50)
    one = trust.output_agreement(m, h, np.random.default_rng(42), rounds=300, criterion="helpful")
    two = trust.output_agreement(m, h, np.random.default_rng(42), rounds=300, criterion="helpful")
    other = trust.output_agreement(m, h, np.random.default_rng(43), rounds=300, criterion="helpful")
    assert one == two
    assert (one["kendall_tau"].lower, one["kendall_tau"].upper) != (other["kendall_tau"].lower,
                                                                    other["kendall_tau"].upper)
    assert one["kendall_tau"].value == pytest.approx(stats.kendalltau(m, h).statistic)
    assert one["kendall_tau"].config["human"] == "likert mean: helpful"


def test_output_level_drops_missing_pairs_and_is_nan_when_undefined():
    res = trust.output_agreement([1, 2, math.nan, 4], [1, 2, 3, math.nan], np.random.default_rng(0), rounds=50)
    assert res["kendall_tau"].n == 2 and res["kendall_tau"].value == pytest.approx(1.0)
    res = trust.output_agreement([1.0], [2.0], np.random.default_rng(0))
    assert math.isnan(res["spearman_rho"].value) and math.isnan(res["spearman_rho"].lower)


def test_the_module_does_not_import_django():
    code = "import sys, metrics.trust; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_lower_is_better_metric_is_negated_so_that_positive_means_agreement():
    rng = np.random.default_rng(7)
    cands = [f"m{i}" for i in range(5)]
    ratings = {c: float(r) for c, r in zip(cands, rng.normal(1000, 50, 5))}
    scores = [(c, p, float(rng.random())) for c in cands for p in range(20)]
    raw = trust.system_agreement(scores, ratings, np.random.default_rng(0), rounds=200)
    flipped = trust.system_agreement(scores, ratings, np.random.default_rng(0), rounds=200, better="lower")
    means = [np.mean([v for cc, _, v in scores if cc == c]) for c in cands]
    human = [ratings[c] for c in cands]
    assert flipped["kendall_tau"].value == pytest.approx(stats.kendalltau([-m for m in means], human).statistic)
    assert flipped["kendall_tau"].value == pytest.approx(-raw["kendall_tau"].value)
    assert flipped["spearman_rho"].value == pytest.approx(-raw["spearman_rho"].value)
    # the same draws, negated: the interval's ends swap and change sign
    assert (flipped["kendall_tau"].lower, flipped["kendall_tau"].upper) == pytest.approx(
        (-raw["kendall_tau"].upper, -raw["kendall_tau"].lower))
    assert flipped["kendall_tau"].config["orientation"].startswith("metric negated (lower is better)")
    assert raw["kendall_tau"].config["orientation"].startswith("as is (higher is better)")
    m, h = rng.random(30), rng.random(30)
    out = trust.output_agreement(m, h, np.random.default_rng(1), rounds=100, better="lower")
    assert out["spearman_rho"].value == pytest.approx(stats.spearmanr(-m, h).statistic)
    with pytest.raises(ValueError, match="better must be 'higher' or 'lower', got 'up'"):
        trust.output_agreement(m, h, np.random.default_rng(1), better="up")


def test_one_value_per_candidate_matches_scipy_with_no_interval():
    """Corpus and set metrics: tau-b (ties) and rho across candidates, n = candidates correlated."""
    values = {"a": 20.0, "b": 20.0, "c": 10.0, "d": 35.5, "e": None, "unrated": 99.0}
    ratings = {"a": 1100.0, "b": 1050.0, "c": 900.0, "d": 1010.0, "e": 1000.0}
    res = trust.candidate_agreement(values, ratings, "corpus-level metric: no per-prompt scores to resample")
    x, y = [20.0, 20.0, 10.0, 35.5], [1100.0, 1050.0, 900.0, 1010.0]
    assert res["kendall_tau"].value == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    assert res["spearman_rho"].value == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert res["kendall_tau"].n == 4
    assert math.isnan(res["kendall_tau"].lower) and math.isnan(res["spearman_rho"].upper)
    assert res["kendall_tau"].config["bootstrap"] == "none: corpus-level metric: no per-prompt scores to resample"
    fid = trust.candidate_agreement(values, ratings, "set-level metric", better="lower")
    assert fid["kendall_tau"].value == pytest.approx(stats.kendalltau([-v for v in x], y).statistic, abs=1e-12)
    assert math.isnan(trust.candidate_agreement({"a": 1.0}, ratings, "r")["kendall_tau"].value)
