"""Tests of arena.sampling (adaptive pair choice); no database."""

import math

import numpy as np
import pytest

from arena import sampling
from arena.sampling import SamplingError

PAIRS = [(0, 1), (0, 2), (1, 2), (2, 3)]


def battles(n=4, each=20.0):
    matrix = np.full((n, n), each)
    np.fill_diagonal(matrix, 0.0)
    return matrix


def test_the_score_is_the_expected_variance_reduction_of_the_difference():
    ratings = np.array([1000.0, 1000.0, 1400.0, 1400.0])
    cov = np.diag([30.0**2, 30.0**2, 30.0**2, 60.0**2])
    scores = sampling.pair_scores(ratings, battles(), PAIRS, cov=cov)
    factor = math.log(10) / 400
    v = (30.0**2 + 30.0**2) * factor**2
    assert scores[0] == pytest.approx(v**2 * 0.25 / (1 + v * 0.25))
    p = 1 / (1 + 10.0)  # 400 Elo apart
    assert scores[1] == pytest.approx(v**2 * p * (1 - p) / (1 + v * p * (1 - p)))
    # Equal ratings beat a 400-point gap; more variance beats less.
    assert scores[0] > scores[1] and scores[3] > scores[0]


def test_it_chooses_the_close_uncertain_pair():
    rng = np.random.default_rng(0)
    samples = rng.normal([1000, 1010, 1300, 700], [40, 40, 10, 10], size=(400, 4))
    assert sampling.choose_pair(samples, battles(), PAIRS, np.random.default_rng(1)) == (0, 1)


def test_a_model_without_battles_comes_first():
    rng = np.random.default_rng(0)
    samples = rng.normal([1000, 1010, 1300, 700], [40, 40, 10, 10], size=(400, 4))
    matrix = battles()
    matrix[3, :] = matrix[:, 3] = 0.0
    assert sampling.choose_pair(samples, matrix, PAIRS, np.random.default_rng(1)) == (2, 3)


def test_a_batch_spreads_over_pairs_of_equal_value_and_is_reproducible():
    ratings = np.full(4, 1000.0)
    cov = np.eye(4) * 50.0**2
    pairs = [(0, 1), (2, 3)]
    first = sampling.choose_pairs(ratings, battles(), pairs, np.random.default_rng(5), k=4, cov=cov)
    assert sorted(first) == [(0, 1), (0, 1), (2, 3), (2, 3)]
    assert first == sampling.choose_pairs(ratings, battles(), pairs, np.random.default_rng(5), k=4, cov=cov)


def test_it_rejects_bad_input():
    samples = np.zeros((10, 4))
    with pytest.raises(SamplingError, match="0..3"):
        sampling.choose_pair(samples, None, [(0, 4)], np.random.default_rng(0))
    with pytest.raises(SamplingError, match="itself"):
        sampling.choose_pair(samples, None, [(1, 1)], np.random.default_rng(0))
    with pytest.raises(SamplingError, match="symmetric"):
        sampling.choose_pair(samples, np.triu(battles()), PAIRS, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        sampling.choose_pair(samples, None, PAIRS, np.random.RandomState(0))
