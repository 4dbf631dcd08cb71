"""Likert summaries against independent computations (numpy, scipy.stats), with no database."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from metrics import likert


def test_the_mean_and_t_interval_match_scipy():
    rng = np.random.default_rng(3)
    points = rng.integers(1, 6, size=37).tolist()
    s = likert.criterion_summary(points + [None, None], scale=5)
    low, high = stats.t.interval(0.95, len(points) - 1, loc=np.mean(points), scale=stats.sem(points))
    assert (s.n, s.n_na) == (37, 2)
    assert s.mean == pytest.approx(np.mean(points))
    assert (s.lower, s.upper) == (pytest.approx(low), pytest.approx(high))
    assert s.distribution == tuple(int((np.array(points) == k).sum()) for k in range(1, 6))


def test_a_known_small_sample_gives_the_textbook_interval():
    # 2, 4, 4, 5: mean 3.75, s = 1.2583, t(0.975, 3) = 3.1824 -> half width 2.0022
    s = likert.criterion_summary([2, 4, 4, 5], scale=5)
    assert s.mean == 3.75
    assert (s.lower, s.upper) == (pytest.approx(1.7478, abs=1e-4), pytest.approx(5.7522, abs=1e-4))
    assert s.distribution == (0, 1, 0, 2, 1)


def test_too_few_ratings_give_no_interval_and_out_of_scale_points_are_refused():
    none = likert.criterion_summary([None], scale=3)
    assert (none.n, none.n_na, none.distribution) == (0, 1, (0, 0, 0)) and math.isnan(none.mean)
    one = likert.criterion_summary([3], scale=3)
    assert one.mean == 3 and math.isnan(one.lower) and math.isnan(one.upper)
    with pytest.raises(ValueError, match="1..3"):
        likert.criterion_summary([4], scale=3)


def test_summaries_group_by_candidate_and_tag_rates_use_wilson_intervals():
    criteria = [{"key": "f", "scale": 3}, {"key": "s", "scale": 5}]
    rows = [("a", {"f": 1, "s": 5}), ("b", {"f": None, "s": 2}), ("a", {"f": 3, "s": 4})]
    out = likert.summarize(criteria, rows)
    assert out["a"]["f"].mean == 2 and out["a"]["s"].n == 2 and out["b"]["f"].n_na == 1
    rates = likert.tag_rates(["hands", "text"], [("a", ["hands"]), ("a", []), ("a", ["hands", "text"]), ("b", [])])
    hands = rates["a"]["hands"]
    # Wilson 95% for 2 of 3, computed independently
    z = stats.norm.ppf(0.975)
    p, n = 2 / 3, 3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (hands.n, hands.of, hands.share) == (2, 3, pytest.approx(p))
    assert (hands.lower, hands.upper) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert rates["b"]["hands"].n == 0 and rates["b"]["hands"].of == 1


def test_the_module_imports_without_django():
    code = "import sys, metrics.likert; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weighted_means_follow_kish_effective_size_and_reduce_to_the_unweighted_ones():
    # points 1 and 5 weighted 1 and 3: mean 4, n_eff = 4²/10 = 1.6, s_w² = (1·9 + 3·1)/(4 − 10/4) = 8
    s = likert.criterion_summary([1, 5], 5, weights=[1.0, 3.0])
    half = stats.t.ppf(0.975, 0.6) * math.sqrt(8) / math.sqrt(1.6)
    assert s.mean == pytest.approx(4.0) and s.n == 2
    assert (s.lower, s.upper) == (pytest.approx(4 - half), pytest.approx(4 + half))
    rng = np.random.default_rng(3)
    points = [int(p) for p in rng.integers(1, 6, 40)] + [None, None]
    plain = likert.criterion_summary(points, 5)
    assert likert.criterion_summary(points, 5, weights=[0.7] * len(points)) == plain  # equal weights: the same
    # a weight of 0 is the same as leaving the point out; n and the distribution count the rest
    weights = [0.0 if i % 4 == 0 else 1.0 for i in range(len(points))]
    kept = [p for p, w in zip(points, weights) if w > 0]
    assert likert.criterion_summary(points, 5, weights=weights) == likert.criterion_summary(kept, 5)
    # weighted mean against numpy's, independent of the interval formula
    w = rng.uniform(0.2, 1.0, len(points))
    got = likert.criterion_summary(points, 5, weights=list(w))
    rated = [(p, x) for p, x in zip(points, w) if p is not None]
    assert got.mean == pytest.approx(np.average([p for p, _ in rated], weights=[x for _, x in rated]))
    with pytest.raises(ValueError, match="non-negative"):
        likert.criterion_summary([1, 2], 5, weights=[1.0, -1.0])


def test_tag_rates_with_one_judgment_per_output_are_the_plain_wilson_interval():
    rows = [("a", ["hands"], 1), ("a", [], 2), ("a", ["hands"], 3), ("a", [], 4), ("a", [], 5)]
    clustered = likert.tag_rates(["hands"], rows)["a"]["hands"]
    plain = likert.tag_rates(["hands"], [r[:2] for r in rows])["a"]["hands"]
    assert (clustered.lower, clustered.upper) == (plain.lower, plain.upper)
    assert likert.effective_n([(1, 1), (0, 1), (1, 1)]) == 3


def test_tag_rate_intervals_keep_their_coverage_when_each_output_is_rated_three_times():
    """Simulated studies: 40 outputs, each rated by 3 annotators who mostly agree on whether it has a
    failure (the output's own failure probability is drawn per output, so ratings of one output are
    correlated). The true rate is the mean of those probabilities. A Wilson interval that treats the
    120 judgments as independent covers it too rarely; the clustered one keeps near 95%."""
    rng = np.random.default_rng(7)
    truth = 0.3
    covered = {"clustered": 0, "independent": 0}
    runs = 1500
    for _ in range(runs):
        probs = rng.beta(truth * 2, (1 - truth) * 2, size=40)  # mean 0.3, strongly spread between outputs
        rows = [("a", ["f"] if rng.random() < p else [], o) for o, p in enumerate(probs) for _ in range(3)]
        for name, data in (("clustered", rows), ("independent", [r[:2] for r in rows])):
            r = likert.tag_rates(["f"], data)["a"]["f"]
            covered[name] += r.lower <= truth <= r.upper
    clustered, independent = covered["clustered"] / runs, covered["independent"] / runs
    assert 0.92 <= clustered <= 0.98, clustered
    assert independent < 0.88, independent
