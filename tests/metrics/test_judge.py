"""metrics.judge: prompt building, the strict verdict format, both orders, Cohen's kappa."""
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from arena import outcomes
from metrics import judge

A, B, TIE, BB = outcomes.A, outcomes.B, outcomes.TIE, outcomes.BOTH_BAD


def test_the_module_imports_without_django():
    code = "import sys, metrics.judge; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_it_fills_the_three_placeholders_once():
    text = judge.build_prompt("Q={prompt} | 1={output_1} | 2={output_2} | {json}", "why?", "says {output_2}", "no")
    # an output that contains a placeholder is not substituted again; other braces stay
    assert text == "Q=why? | 1=says {output_2} | 2=no | {json}"


def test_it_refuses_a_rubric_without_a_placeholder():
    with pytest.raises(ValueError, match=r"\{output_2\}"):
        judge.check_rubric("{prompt} {output_1}")
    judge.check_rubric(judge.DEFAULT_RUBRIC)


@pytest.mark.parametrize("reply, verdict", [
    ("Output 1 is clearer.\nVERDICT: 1", "1"),
    ("reasons...\n\nverdict:2.\n\n", "2"),
    ("Both fine.\nVERDICT: TIE", "tie"),
    ("VERDICT: 1\nActually, on reflection, 2 is better.", "unparsed"),  # the verdict must be last
    ("VERDICT: 1 or 2", "unparsed"),
    ("I prefer output 1", "unparsed"),
    ("", "unparsed"),
    (None, "unparsed"),
])
def test_it_reads_only_the_strict_verdict_line(reply, verdict):
    assert judge.parse_verdict(reply) == verdict


def test_consistent_orders_give_that_outcome():
    # a first: "1" names a; b first: "2" names a
    assert judge.combine("1", "2") == judge.PairVerdict(A, True)
    assert judge.combine("2", "1") == judge.PairVerdict(B, True)
    assert judge.combine("tie", "tie") == judge.PairVerdict(TIE, True)


def test_an_inconsistent_or_unparsed_pair_is_a_tie_marked_inconsistent():
    # position bias: the judge always picks whatever is shown first
    assert judge.combine("1", "1") == judge.PairVerdict(TIE, False)
    assert judge.combine("1", "tie") == judge.PairVerdict(TIE, False)
    assert judge.combine("unparsed", "2") == judge.PairVerdict(TIE, False)
    assert judge.combine("unparsed", "unparsed") == judge.PairVerdict(TIE, False)


def test_kappa_matches_sklearn_on_a_worked_example():
    j = [A, A, B, TIE, A, B, B, TIE, A, A]
    h = [A, B, B, TIE, A, B, A, A, A, TIE]
    result = judge.agreement(j, h)
    # p_o = 6/10; marginals judge A5 B3 T2, human A5 B3 T2 -> p_e = .25+.09+.04 = .38;
    # kappa = (.6-.38)/.62 = 0.3548387...
    assert result.percent == pytest.approx(60.0)
    assert result.kappa == pytest.approx(0.22 / 0.62, abs=1e-12)
    assert result.kappa == pytest.approx(cohen_kappa_score(j, h), abs=1e-12)
    assert result.n == 10


def test_kappa_matches_sklearn_on_random_labellings():
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(2, 60))
        j = rng.integers(0, 3, n).tolist()
        h = rng.integers(0, 3, n).tolist()
        if len(set(j) | set(h)) == 1:
            continue
        assert judge.agreement(j, h).kappa == pytest.approx(cohen_kappa_score(j, h), abs=1e-12)


def test_both_bad_counts_as_a_tie_and_undefined_kappa_is_none():
    assert judge.agreement([TIE, A], [BB, A]).percent == 100.0
    same = judge.agreement([A, A], [A, A])
    assert same.kappa is None and same.percent == 100.0
    assert judge.agreement([], []) == judge.Agreement(None, None, 0)
    with pytest.raises(ValueError):
        judge.agreement([A], [])


def test_the_human_majority_breaks_even_splits_to_a_tie():
    assert judge.majority([A, A, B]) == A
    assert judge.majority([A, B]) == TIE
    assert judge.majority([BB, TIE, A]) == TIE
    assert judge.majority([]) is None


# --- Likert judges ------------------------------------------------------------------------


def test_each_kind_has_its_default_rubric_and_placeholders():
    assert judge.default_rubric("pairwise") == judge.DEFAULT_RUBRIC
    assert judge.default_rubric("likert") == judge.DEFAULT_LIKERT_RUBRIC
    judge.check_rubric(judge.DEFAULT_LIKERT_RUBRIC, "likert")
    # the pairwise default is not a Likert rubric, and the other way round: the error names what is missing
    with pytest.raises(ValueError, match=r"likert rubric must contain \{output\}, \{criterion\}, \{scale\}$"):
        judge.check_rubric(judge.DEFAULT_RUBRIC, "likert")
    with pytest.raises(ValueError, match=r"pairwise rubric must contain \{output_1\}, \{output_2\}$"):
        judge.check_rubric(judge.DEFAULT_LIKERT_RUBRIC, "pairwise")
    judge.check_rubric("{prompt} {output} {criterion} {scale}", "likert")  # {description} is optional
    with pytest.raises(ValueError, match="unknown judge kind 'pointwise'"):
        judge.check_rubric("{prompt}", "pointwise")
    with pytest.raises(ValueError, match="unknown judge kind"):
        judge.default_rubric("nope")


def test_a_likert_prompt_fills_five_placeholders_once():
    rubric = "Q={prompt} | A={output} | C={criterion} | D={description} | S={scale} | {json}"
    text = judge.build_likert_prompt(rubric, "why?", "says {scale} and {criterion}", "Style", "", 5)
    assert text == "Q=why? | A=says {scale} and {criterion} | C=Style | D= | S=1 to 5 | {json}"
    criterion = {"key": "fact", "name": "Factuality", "scale": 3, "labels": ["Wrong", "Partly right", "Right"]}
    assert judge.describe(criterion) == "Points: 1 = Wrong, 2 = Partly right, 3 = Right"
    assert judge.describe({**criterion, "description": "Is it true?"}) == (
        "Is it true?\nPoints: 1 = Wrong, 2 = Partly right, 3 = Right")
    assert judge.describe({"key": "x", "name": "X", "scale": 2}) == ""
    with pytest.raises(ValueError, match=r"\{scale\}"):
        judge.build_likert_prompt("{prompt} {output} {criterion}", "p", "o", "c", "", 5)


@pytest.mark.parametrize("reply, scale, score", [
    ("Clear and correct.\nSCORE: 4", 5, 4),
    ("reasons\n\n score:5. \n\n", 5, 5),
    ("SCORE: 1", 3, 1),
    ("SCORE: 6", 5, None),  # off the scale: no score, never clamped to 5
    ("SCORE: 0", 5, None),
    ("SCORE: -2", 5, None),
    ("SCORE: 3.5", 5, None),
    ("SCORE: four", 5, None),
    ("SCORE: 4\nOn reflection, 2.", 5, None),  # the score line must be last
    ("I would give it a 4", 5, None),
    ("", 5, None),
    (None, 5, None),
])
def test_it_reads_only_a_score_line_on_the_scale(reply, scale, score):
    assert judge.parse_score(reply, scale) == score


def test_weighted_kappa_on_a_worked_example():
    # judge 1,2,3 vs human 1,2,2 on 1..3: observed weighted disagreement 1/3 * 1/4 = 1/12;
    # marginals judge (1/3,1/3,1/3), human (1/3,2/3,0): expected weighted disagreement
    # 1/9*(0+1/4+1) + 2/9*(1/4+0+1/4) = 5/36 + 4/36 = 1/4; kappa = 1 - (1/12)/(1/4) = 2/3
    assert judge.weighted_kappa([1, 2, 3], [1, 2, 2], 3) == pytest.approx(2 / 3, abs=1e-12)
    assert cohen_kappa_score([1, 2, 3], [1, 2, 2], weights="quadratic", labels=[1, 2, 3]) == pytest.approx(2 / 3)


def test_weighted_kappa_matches_sklearn_over_the_whole_scale():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(60):
        scale = int(rng.integers(2, 8))
        n = int(rng.integers(2, 40))
        j = rng.integers(1, scale + 1, n).tolist()
        h = np.clip(np.array(j) + rng.integers(-1, 2, n), 1, scale).tolist()
        expected = cohen_kappa_score(j, h, weights="quadratic", labels=list(range(1, scale + 1)))
        got = judge.weighted_kappa(j, h, scale)
        if np.isnan(expected):
            assert got is None
            continue
        assert got == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked > 40
    # the weights follow the scale, not the points used: 1 and 5 are four steps apart on 1..5
    assert judge.weighted_kappa([1, 5, 3], [1, 4, 3], 5) == pytest.approx(
        cohen_kappa_score([1, 5, 3], [1, 4, 3], weights="quadratic", labels=[1, 2, 3, 4, 5]), abs=1e-12)


def test_weighted_kappa_undefined_and_bad_input():
    assert judge.weighted_kappa([], [], 5) is None
    assert judge.weighted_kappa([3, 3], [3, 3], 5) is None  # no expected disagreement
    with pytest.raises(ValueError, match="off the scale 1..5"):
        judge.weighted_kappa([6], [1], 5)
    with pytest.raises(ValueError, match="differ in length"):
        judge.weighted_kappa([1], [], 5)


def test_the_human_median_rounds_halves_up():
    assert judge.rounded_median([3, 4]) == 4
    assert judge.rounded_median([1, 2]) == 2
    assert judge.rounded_median([2, 3, 5]) == 3
    assert judge.rounded_median([4]) == 4
    with pytest.raises(ValueError):
        judge.rounded_median([])


def test_likert_agreement_against_median_and_mean():
    from scipy import stats

    j = [5, 4, 2, 1, 3, 4]
    h = [[5, 4], [4, 4, 3], [2], [1, 2], [2, 2, 4], [5, 5]]
    res = judge.likert_agreement(j, h, 5, np.random.default_rng(3), rounds=200, criterion="style")
    medians = [5, 4, 2, 2, 2, 5]  # 4.5 -> 5, 1.5 -> 2
    means = [4.5, 11 / 3, 2.0, 1.5, 8 / 3, 5.0]
    assert res.n == 6
    assert res.percent == pytest.approx(100 * 3 / 6)
    assert res.kappa == pytest.approx(cohen_kappa_score(j, medians, weights="quadratic", labels=[1, 2, 3, 4, 5]),
                                      abs=1e-12)
    assert res.kendall_tau.value == pytest.approx(stats.kendalltau(j, means).statistic, abs=1e-12)
    assert res.spearman_rho.value == pytest.approx(stats.spearmanr(j, means).statistic, abs=1e-12)
    assert res.kendall_tau.lower <= res.kendall_tau.value <= res.kendall_tau.upper
    assert res.kendall_tau.n == 6 and "style" in res.kendall_tau.config["human"]
    empty = judge.likert_agreement([], [], 5, np.random.default_rng(0), rounds=10)
    assert (empty.kappa, empty.percent, empty.n) == (None, None, 0)


def test_likert_agreement_without_bootstrap_gives_the_same_points_and_no_interval():
    j, h = [5, 4, 2, 1, 3], [[5], [4, 3], [2, 2], [1], [3, 4]]
    full = judge.likert_agreement(j, h, 5, np.random.default_rng(0), rounds=100)
    quick = judge.likert_agreement(j, h, 5, np.random.default_rng(0), rounds=0)
    assert (quick.kappa, quick.percent, quick.n) == (full.kappa, full.percent, full.n)
    assert quick.kendall_tau.value == pytest.approx(full.kendall_tau.value, abs=1e-12)
    assert quick.spearman_rho.value == pytest.approx(full.spearman_rho.value, abs=1e-12)
    assert np.isnan(quick.kendall_tau.lower) and np.isnan(quick.spearman_rho.upper)
