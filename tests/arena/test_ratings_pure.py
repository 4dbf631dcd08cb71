"""Tests of arena.ratings against hand calculations and independent implementations.

No database: these run with ``pytest -p no:django``.
"""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from arena import ratings as R
from arena.ratings import A_WINS, B_WINS, BOTH_BAD, TIE, RatingError

ELO = 400 / math.log(10)  # Elo points per natural-log unit of strength


def simulate(rng, strengths, n_battles, tie_rate=0.0, names=None):
    """Battles between random pairs; A wins with the Bradley-Terry probability."""
    n = len(strengths)
    names = names or [f"m{k}" for k in range(n)]
    a = rng.integers(0, n, n_battles)
    b = (a + rng.integers(1, n, n_battles)) % n
    p = 1 / (1 + np.exp(-(strengths[a] - strengths[b])))
    tie = rng.random(n_battles) < tie_rate
    code = np.where(tie, 2, np.where(rng.random(n_battles) < p, 0, 1))
    return [names[k] for k in a], [names[k] for k in b], [R.OUTCOMES[k] for k in code]


def counts_of(rows):
    """BattleCounts from (model_a, model_b, outcome, times) rows."""
    a, b, o = [], [], []
    for model_a, model_b, outcome, times in rows:
        a += [model_a] * times
        b += [model_b] * times
        o += [outcome] * times
    return R.count_battles(a, b, o)


def test_importing_the_math_modules_does_not_import_django():
    code = "import sys, arena.ratings, arena.sampling; print('django' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- counting ---------------------------------------------------------------


def test_it_counts_wins_by_model_whichever_side_it_was_shown_on():
    counts = counts_of(
        [
            ("x", "y", A_WINS, 2),
            ("y", "x", A_WINS, 1),
            ("y", "x", B_WINS, 3),
            ("x", "z", TIE, 1),
            ("z", "x", BOTH_BAD, 2),
        ]
    )
    assert counts.models == ("x", "y", "z")
    assert counts.wins.tolist() == [[0, 5, 0], [1, 0, 0], [0, 0, 0]]
    assert counts.ties.tolist() == [[0, 0, 3], [0, 0, 0], [3, 0, 0]]
    assert counts.both_bad.tolist() == [[0, 0, 2], [0, 0, 0], [2, 0, 0]]
    assert counts.battles.tolist() == [9, 6, 3]
    assert counts.n_battles == 9
    assert counts.wins_total.tolist() == [5, 1, 0]
    assert counts.losses_total.tolist() == [1, 5, 0]
    assert counts.both_bad_total.tolist() == [2, 0, 2]


def test_it_keeps_models_without_battles_when_asked():
    counts = R.count_battles(["a"], ["b"], [A_WINS], models=["c", "b", "a"])
    assert counts.models == ("a", "b", "c")
    assert counts.battles.tolist() == [1, 1, 0]


def test_it_names_the_index_and_value_of_an_unknown_outcome():
    with pytest.raises(RatingError, match=r"outcome\[2\] = 'model_c'"):
        R.count_battles(["a", "a", "a"], ["b", "b", "b"], [A_WINS, TIE, "model_c"])


def test_it_refuses_a_model_battling_itself():
    with pytest.raises(RatingError, match=r"battle 1 pits 'a' against itself"):
        R.count_battles(["a", "a"], ["b", "a"], [A_WINS, A_WINS])


def test_it_refuses_sequences_of_different_lengths():
    with pytest.raises(RatingError, match="differ in length"):
        R.count_battles(["a", "b"], ["b"], [A_WINS, A_WINS])


def test_it_refuses_a_battle_with_a_model_outside_the_given_models():
    with pytest.raises(RatingError, match="'c'"):
        R.count_battles(["a"], ["c"], [A_WINS], models=["a", "b"])


def test_counts_from_sql_cells_equal_counts_from_rows():
    rng = np.random.default_rng(3)
    a, b, o = simulate(rng, np.array([0.0, 0.5, -0.2, 1.0]), 500, tie_rate=0.2)
    o = [BOTH_BAD if (k % 7 == 0 and x == TIE) else x for k, x in enumerate(o)]
    expected = R.count_battles(a, b, o)
    # The shape a GROUP BY model_a, model_b, outcome query returns, models unsorted.
    models = ["m3", "m1", "m0", "m2"]
    cells = {}
    for row in zip(a, b, o):
        cells[row] = cells.get(row, 0) + 1
    keys = list(cells)
    for code in ([R.OUTCOMES.index(k[2]) for k in keys], [k[2] for k in keys]):
        got = R.counts_from_cells(
            models,
            [models.index(k[0]) for k in keys],
            [models.index(k[1]) for k in keys],
            code,
            [cells[k] for k in keys],
        )
        assert got.models == expected.models
        for name in ("wins", "ties", "both_bad"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_counts_from_cells_names_a_bad_cell():
    with pytest.raises(RatingError, match=r"outcome_code\[1\] = 7"):
        R.counts_from_cells(["a", "b"], [0, 0], [1, 1], [0, 7], [1, 1])
    with pytest.raises(RatingError, match=r"count\[0\]"):
        R.counts_from_cells(["a", "b"], [0], [1], [0], [-1])
    with pytest.raises(RatingError, match=r"j_idx\[0\] = 2"):
        R.counts_from_cells(["a", "b"], [0], [2], [0], [1])


def test_counts_are_read_only():
    counts = counts_of([("a", "b", A_WINS, 1)])
    with pytest.raises(ValueError):
        counts.wins[0, 1] = 5


# --- Bradley-Terry ----------------------------------------------------------


def test_three_wins_in_four_give_a_gap_of_400_log10_3():
    counts = counts_of([("a", "b", A_WINS, 3), ("a", "b", B_WINS, 1)])
    ratings = R.fit_bradley_terry(counts)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert ratings.mean() == pytest.approx(1000.0, abs=1e-9)


def test_a_tie_counts_as_half_a_win_for_each_side():
    # 2 wins + 2 ties = 3 effective wins against 1: the same gap as 3 wins in 4.
    counts = counts_of([("a", "b", A_WINS, 2), ("b", "a", TIE, 1), ("a", "b", BOTH_BAD, 1)])
    ratings = R.fit_bradley_terry(counts)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(3), abs=1e-6)


def test_an_anchor_pins_that_model_and_keeps_the_gaps():
    rng = np.random.default_rng(0)
    counts = R.count_battles(*simulate(rng, np.array([0.0, 0.4, -0.3]), 300, tie_rate=0.1))
    centred = R.fit_bradley_terry(counts)
    anchored = R.fit_bradley_terry(counts, anchor=("m1", 1200.0))
    assert anchored[1] == pytest.approx(1200.0, abs=1e-9)
    np.testing.assert_allclose(anchored - anchored[1], centred - centred[1], atol=1e-9)
    with pytest.raises(RatingError, match="'nope'"):
        R.fit_bradley_terry(counts, anchor=("nope", 1000.0))


def test_scale_and_base_change_the_units_only():
    counts = counts_of([("a", "b", A_WINS, 3), ("a", "b", B_WINS, 1)])
    ratings = R.fit_bradley_terry(counts, scale=1.0, base=math.e, init_rating=0.0)
    assert ratings[0] - ratings[1] == pytest.approx(math.log(3), abs=1e-9)


def test_it_agrees_with_scikit_learn_logistic_regression_as_fastchat_fits_it():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    counts = R.count_battles(*simulate(rng, rng.normal(0, 1, 6), 3000, tie_rate=0.15))
    # FastChat's compute_mle_elo: +log(base) for A, -log(base) for B, no intercept, a
    # tie entered twice, once won by each side (here as two half-weight rows).
    n = counts.n_models
    rows, target, weight = [], [], []
    for i in range(n):
        for j in range(n):
            x = np.zeros(n)
            x[i], x[j] = math.log(10), -math.log(10)
            if counts.wins[i, j]:
                rows.append(x), target.append(1), weight.append(counts.wins[i, j])
            if i < j and counts.ties[i, j]:
                rows += [x, x]
                target += [1, 0]
                weight += [counts.ties[i, j] / 2] * 2
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000, solver="newton-cg")
    model.fit(np.array(rows), np.array(target), sample_weight=np.array(weight))
    reference = 400 * model.coef_[0]
    reference += 1000 - reference.mean()
    np.testing.assert_allclose(R.fit_bradley_terry(counts), reference, atol=0.01)


def test_it_agrees_with_choix():
    import choix

    rng = np.random.default_rng(6)
    counts = R.count_battles(*simulate(rng, rng.normal(0, 1, 7), 2000, tie_rate=0.2))
    # Every battle entered twice, so a tie becomes one win each way.
    data = []
    for i in range(counts.n_models):
        for j in range(counts.n_models):
            data += [(i, j)] * int(2 * counts.wins[i, j] + counts.ties[i, j])
    theta = choix.ilsr_pairwise(counts.n_models, data, tol=1e-12, max_iter=10_000)
    reference = 1000 + ELO * (theta - theta.mean())
    np.testing.assert_allclose(R.fit_bradley_terry(counts), reference, atol=1e-6)


def test_it_recovers_known_strengths_from_simulated_battles():
    rng = np.random.default_rng(11)
    true = np.array([1000, 1150, 930, 1080, 1000, 840, 1210, 790], dtype=float)
    counts = R.count_battles(*simulate(rng, (true - 1000) / ELO, 40_000, tie_rate=0.0))
    ratings = R.fit_bradley_terry(counts)
    # About 10,000 battles per model: a standard error near 4 Elo.
    assert np.abs(ratings - (true - true.mean() + 1000)).max() < 15


def test_a_disconnected_graph_raises_naming_its_components():
    counts = counts_of(
        [
            ("a", "b", A_WINS, 2),
            ("a", "b", B_WINS, 1),
            ("c", "d", A_WINS, 1),
            ("c", "d", B_WINS, 1),
        ]
    )
    with pytest.raises(RatingError, match=r"disconnected into 2 components.*\{'a', 'b'\}; \{'c', 'd'\}"):
        R.fit_bradley_terry(counts)


def test_a_model_without_battles_is_named():
    counts = R.count_battles(["a", "b"], ["b", "a"], [A_WINS, A_WINS], models=["a", "b", "c"])
    with pytest.raises(RatingError, match=r"no battles: 'c'"):
        R.fit_bradley_terry(counts)


def test_an_undefeated_model_raises_unless_regularized():
    counts = counts_of(
        [
            ("top", "a", A_WINS, 3),
            ("a", "b", A_WINS, 2),
            ("a", "b", B_WINS, 2),
        ]
    )
    with pytest.raises(RatingError, match=r"\{'top'\} won all their battles.*\{'a', 'b'\} lost all"):
        R.fit_bradley_terry(counts)
    ratings = R.fit_bradley_terry(counts, regularization=0.5)
    assert np.all(np.isfinite(ratings))
    assert ratings.mean() == pytest.approx(1000.0, abs=1e-9)
    assert ratings[counts.index("top")] == ratings.max()


def test_a_tie_is_enough_for_the_estimate_to_exist():
    counts = counts_of([("a", "b", A_WINS, 3), ("a", "b", TIE, 1)])
    ratings = R.fit_bradley_terry(counts)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(7), abs=1e-6)


def test_regularization_is_the_documented_gaussian_penalty():
    from scipy.optimize import minimize

    counts = counts_of(
        [("a", "b", A_WINS, 5), ("b", "c", A_WINS, 4), ("c", "a", A_WINS, 1), ("a", "c", TIE, 2)]
    )
    lam = 0.7
    w = counts.effective_wins

    def negative_penalised_loglik(theta):
        diff = theta[:, None] - theta[None, :]
        return -(w * -np.logaddexp(0, -diff)).sum() + lam * (theta**2).sum() / 2

    theta = minimize(negative_penalised_loglik, np.zeros(3), method="BFGS", options={"gtol": 1e-12}).x
    reference = 1000 + ELO * (theta - theta.mean())
    np.testing.assert_allclose(R.fit_bradley_terry(counts, regularization=lam), reference, atol=1e-4)


def test_it_rejects_bad_options():
    counts = counts_of([("a", "b", A_WINS, 3), ("a", "b", B_WINS, 1)])
    for options, message in [
        ({"regularization": -1.0}, "regularization"),
        ({"scale": 0.0}, "scale"),
        ({"base": 1.0}, "base"),
        ({"max_iter": 0}, "max_iter"),
    ]:
        with pytest.raises(RatingError, match=message):
            R.fit_bradley_terry(counts, **options)


def test_non_convergence_is_an_error():
    rng = np.random.default_rng(2)
    counts = R.count_battles(*simulate(rng, np.array([0.0, 2.0, -2.0]), 200))
    with pytest.raises(RatingError, match="did not converge in 1 Newton"):
        R.fit_bradley_terry(counts, max_iter=1)


# --- bootstrap and leaderboard ----------------------------------------------


def test_the_bootstrap_is_reproducible_and_centred():
    rng = np.random.default_rng(1)
    counts = R.count_battles(*simulate(rng, np.array([0.0, 0.3, -0.5, 0.2]), 800, tie_rate=0.1))
    first = R.bootstrap_ratings(counts, rounds=50, rng=np.random.default_rng(7))
    second = R.bootstrap_ratings(counts, rounds=50, rng=np.random.default_rng(7))
    assert first.shape == (50, 4)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first.mean(axis=1), 1000.0, atol=1e-8)
    anchored = R.bootstrap_ratings(counts, rounds=5, rng=np.random.default_rng(7), anchor=("m2", 900.0))
    np.testing.assert_allclose(anchored[:, 2], 900.0)


def test_every_bootstrap_round_is_the_maximum_likelihood_fit_of_its_resample():
    # Replay the multinomial draws: each round must equal a fresh fit of its counts.
    rng = np.random.default_rng(4)
    counts = R.count_battles(*simulate(rng, np.array([0.0, 0.8, -0.4, 0.3, 1.2]), 3000, tie_rate=0.1))
    samples = R.bootstrap_ratings(counts, rounds=20, rng=np.random.default_rng(9))
    win_i, win_j = np.nonzero(counts.wins)
    tie_i, tie_j = np.nonzero(np.triu(counts.ties))
    cells = np.concatenate([counts.wins[win_i, win_j], counts.ties[tie_i, tie_j]])
    draws = np.random.default_rng(9).multinomial(int(cells.sum()), cells / cells.sum(), size=20)
    for round_, draw in enumerate(draws):
        wins = np.zeros((5, 5))
        wins[win_i, win_j] = draw[: win_i.size]
        ties = np.zeros((5, 5))
        ties[tie_i, tie_j] = draw[win_i.size :]
        ties = ties + ties.T
        resample = R.BattleCounts(counts.models, wins, ties, np.zeros((5, 5)))
        np.testing.assert_allclose(samples[round_], R.fit_bradley_terry(resample), atol=1e-6)


def test_bootstrap_intervals_cover_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    strengths = np.array([0.0, 0.25, -0.35, 0.5])
    true_gap = ELO * (strengths[1] - strengths[0])
    covered = 0
    studies = 200
    for _ in range(studies):
        counts = R.count_battles(*simulate(rng, strengths, 400))
        samples = R.bootstrap_ratings(counts, rounds=200, rng=rng, fallback_regularization=0.01)
        gap = samples[:, 1] - samples[:, 0]
        low, high = np.percentile(gap, [2.5, 97.5])
        covered += low <= true_gap <= high
    assert 0.90 <= covered / studies <= 0.99


def test_a_resample_that_leaves_a_model_undefeated_is_regularized_and_reported():
    # "top" lost once in 12 battles: about 1 resample in 3 makes it undefeated.
    counts = counts_of(
        [
            ("top", "a", A_WINS, 6),
            ("top", "b", A_WINS, 5),
            ("top", "a", B_WINS, 1),
            ("a", "b", A_WINS, 5),
            ("a", "b", B_WINS, 5),
        ]
    )
    board = R.leaderboard(counts, rounds=300, rng=np.random.default_rng(0))
    assert 50 < board.fallback_rounds < 200
    assert board.regularized and board.regularization == 0.0
    top = board[0]
    assert top.model == "top" and np.isfinite(top.upper) and top.upper > top.rating


def test_a_regularized_leaderboard_says_so():
    counts = counts_of([("a", "b", A_WINS, 3)])
    board = R.leaderboard(counts, rounds=20, rng=np.random.default_rng(0), regularization=1.0)
    assert board.regularized and board.regularization == 1.0 and board.fallback_rounds == 0
    with pytest.raises(RatingError, match="won all their battles"):
        R.leaderboard(counts, rounds=20, rng=np.random.default_rng(0))


def test_the_bootstrap_needs_a_numpy_generator():
    counts = counts_of([("a", "b", A_WINS, 3), ("a", "b", B_WINS, 1)])
    with pytest.raises(TypeError, match="Generator"):
        R.bootstrap_ratings(counts, rounds=5, rng=np.random.RandomState(0))


def test_rank_is_one_plus_the_models_whose_interval_lies_entirely_above():
    lower = np.array([1100, 1050, 1040, 900, 880])
    upper = np.array([1200, 1120, 1095, 990, 1045])
    # Model 2's upper bound 1095 is below model 0's lower 1100: rank 2. Model 3 is below
    # 0, 1, 2 (lower 1040 > 990) but not 4; model 4 (upper 1045) is only below 0, 1.
    assert R.rank_by_intervals(lower, upper).tolist() == [1, 1, 2, 4, 3]


def test_the_leaderboard_reports_counts_rates_intervals_and_ranks_best_first():
    rng = np.random.default_rng(8)
    a, b, o = simulate(rng, np.array([0.0, 1.0, -1.0]), 600, tie_rate=0.2)
    o = [BOTH_BAD if (k % 3 == 0 and x == TIE) else x for k, x in enumerate(o)]
    counts = R.count_battles(a, b, o)
    board = R.leaderboard(counts, rounds=200, rng=np.random.default_rng(1))
    assert [row.model for row in board] == ["m1", "m0", "m2"]
    assert [row.rank for row in board] == [1, 2, 3]
    assert board.n_battles == 600 and board.rounds == 200 and len(board) == 3
    ratings = R.fit_bradley_terry(counts)
    for row in board:
        k = counts.index(row.model)
        assert row.rating == pytest.approx(ratings[k])
        assert row.lower < row.median < row.upper
        assert row.battles == row.wins + row.losses + row.ties
        assert row.win_rate == pytest.approx((row.wins + row.ties / 2) / row.battles)
        assert row.both_bad_rate == pytest.approx(row.both_bad / row.battles)
        assert row.both_bad == counts.both_bad_total[k] > 0


# --- win matrices and online Elo -------------------------------------------


def test_the_predicted_win_matrix_is_complementary():
    ratings = np.array([1000.0, 1400.0, 900.0])
    p = R.predicted_win_matrix(ratings)
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-15)
    np.testing.assert_allclose(np.diag(p), 0.5)
    assert p[1, 0] == pytest.approx(10 / 11)


def test_the_observed_win_matrix_counts_ties_as_half_and_leaves_unmet_pairs_blank():
    counts = counts_of([("a", "b", A_WINS, 2), ("a", "b", TIE, 2), ("b", "c", B_WINS, 1)])
    w = R.observed_win_matrix(counts)
    assert w[0, 1] == pytest.approx(0.75) and w[1, 0] == pytest.approx(0.25)
    assert w[2, 1] == 1.0
    assert np.isnan(w[0, 2]) and np.isnan(w[1, 1])


def test_online_elo_matches_a_hand_computation():
    # Battle 1: equal ratings, expected 0.5, a wins: a 1002, b 998 (k = 4).
    # Battle 2: b vs a tie; expected for b = 1 / (1 + 10 ** (4 / 400)).
    ratings = R.online_elo(["a", "b"], ["b", "a"], [A_WINS, TIE])
    expected_b = 1 / (1 + 10 ** ((1002 - 998) / 400))
    assert ratings["b"] == pytest.approx(998 + 4 * (0.5 - expected_b))
    assert ratings["a"] == pytest.approx(1002 + 4 * (0.5 - (1 - expected_b)))
    assert list(ratings) == ["a", "b"]
    with pytest.raises(RatingError, match=r"outcome\[0\]"):
        R.online_elo(["a"], ["b"], ["draw"])


# --- style control and bias diagnostics ------------------------------------


def test_the_contextual_fit_without_covariate_effect_equals_the_plain_fit():
    rng = np.random.default_rng(12)
    a, b, o = simulate(rng, np.array([0.0, 0.6, -0.4, 0.2]), 1500, tie_rate=0.1)
    counts = R.count_battles(a, b, o)
    models = list(counts.models)
    y = [{A_WINS: 1.0, B_WINS: 0.0}.get(x, 0.5) for x in o]
    fit = R.fit_contextual_bradley_terry(
        [models.index(x) for x in a], [models.index(x) for x in b], y, np.zeros((len(a), 0)), models=models
    )
    np.testing.assert_allclose(fit.ratings, R.fit_bradley_terry(counts), atol=1e-6)


def test_the_contextual_fit_recovers_a_length_effect_and_agrees_with_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(13)
    n, m = 5, 6000
    strengths = np.array([0.0, 0.5, -0.5, 0.3, -0.2])
    i = rng.integers(0, n, m)
    j = (i + rng.integers(1, n, m)) % n
    length = rng.lognormal(6, 0.5, size=(m, 2))
    x = R.normalized_length_difference(length[:, 0], length[:, 1])
    beta = 1.5
    y = (rng.random(m) < 1 / (1 + np.exp(-(strengths[i] - strengths[j] + beta * x)))).astype(float)
    models = [f"m{k}" for k in range(n)]
    fit = R.fit_contextual_bradley_terry(i, j, y, x, models=models, feature_names=["length"])
    assert fit.feature_names == ("length",)
    assert abs(fit.coefficients[0] - beta) < 0.3
    design = np.zeros((m, n + 1))
    design[np.arange(m), i] = 1
    design[np.arange(m), j] = -1
    design[:, n] = x
    reference = LogisticRegression(
        fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000, solver="newton-cg"
    ).fit(design, y)
    theta = reference.coef_[0][:n]
    np.testing.assert_allclose(fit.coefficients, reference.coef_[0][n:], atol=1e-6)
    np.testing.assert_allclose(fit.ratings, 1000 + ELO * (theta - theta.mean()), atol=1e-3)
    assert fit.elo_coefficients[0] == pytest.approx(ELO * fit.coefficients[0])


def test_the_normalized_length_difference_is_zero_for_two_empty_outputs():
    np.testing.assert_allclose(R.normalized_length_difference([30, 0, 10], [10, 0, 10]), [0.5, 0.0, 0.0])


def test_position_bias_gives_newcombes_wilson_intervals():
    # Newcombe (1998), Statistics in Medicine 17:857-872, worked examples: 81/263 -> 0.2553 to 0.3662;
    # 15/148 -> 0.0624 to 0.1605; 0/20 -> 0 to 0.1611.
    for wins, n, low, high in [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611)]:
        result = R.position_bias([True] * wins + [False] * (n - wins) + [None] * 5)
        assert (result.successes, result.trials) == (wins, n)
        assert result.lower == pytest.approx(low, abs=5e-5)
        assert result.upper == pytest.approx(high, abs=5e-5)
    empty = R.position_bias([None])
    assert math.isnan(empty.share) and (empty.lower, empty.upper) == (0.0, 1.0)
    with pytest.raises(RatingError, match=r"left_won\[1\]"):
        R.position_bias([True, "left"])


def test_length_bias_bins_the_win_rate_of_a_by_length_difference():
    result = R.length_bias(
        [300, 300, 100, 100, 100, 50],
        [100, 100, 300, 100, 300, 50],
        [A_WINS, TIE, B_WINS, A_WINS, A_WINS, B_WINS],
        edges=[-1, -0.1, 0.1, 1],
    )
    shares = [(b.a_win.trials, b.a_win.share) for b in result.bins]
    assert shares == [(2, 0.5), (2, 0.5), (2, 0.75)]
    # Decisive battles of unequal lengths: the longer output won two (A at 300 vs 100,
    # B at 300 vs 100) and lost one (A at 100 beat B at 300).
    assert (result.longer_wins.successes, result.longer_wins.trials) == (2, 3)


def test_a_covariate_without_variation_is_an_error():
    with pytest.raises(RatingError, match="collinear"):
        R.fit_contextual_bradley_terry(
            [0, 1, 0, 1], [1, 0, 1, 0], [1, 1, 0, 0.5], np.zeros((4, 1)), models=["a", "b"]
        )


def test_no_warnings_on_clean_data():
    rng = np.random.default_rng(1)
    counts = R.count_battles(*simulate(rng, np.array([0.0, 0.3, -0.5]), 300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R.leaderboard(counts, rounds=50, rng=rng)


def test_length_bias_with_weights_equals_the_expanded_battles():
    len_a = np.array([30.0, 10.0, 20.0, 20.0])
    len_b = np.array([10.0, 30.0, 20.0, 5.0])
    outcome = np.array([0, 1, 2, 3])
    weights = np.array([3, 2, 4, 1])
    weighted = R.length_bias(len_a, len_b, outcome, weights=weights)
    expanded = R.length_bias(np.repeat(len_a, weights), np.repeat(len_b, weights),
                             [R.OUTCOMES[c] for c in np.repeat(outcome, weights)])
    assert weighted == expanded
    assert weighted.longer_wins.trials == 5 and weighted.longer_wins.successes == 5
