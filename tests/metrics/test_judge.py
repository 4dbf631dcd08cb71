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
