"""metrics/agreement.py against published worked examples and independent libraries."""
import math
import subprocess
import sys

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats import inter_rater

from metrics import agreement

NAN = math.nan

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
# 12 units, missing values; published alpha nominal .743, ordinal .815, interval .849, ratio .797.
K2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]

# Fleiss (1971), Table 1 as raw ratings: 30 patients, 6 psychiatrists, 5 diagnoses
# (the same data as statsmodels' test_inter_rater.py and R irr's `diagnoses`); kappa .430.
FLEISS1971 = np.array([
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5],
    [2, 2, 2, 4, 4, 4], [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4],
    [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5], [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4],
    [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5], [3, 3, 3, 3, 3, 5],
    [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4],
    [1, 4, 4, 4, 4, 5], [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4],
    [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
])


def dense_to_triples(rows):
    return [(f"obs{i}", f"u{j}", value) for i, row in enumerate(rows) for j, value in enumerate(row)
            if not (isinstance(value, float) and math.isnan(value))]


def random_dense(rng, annotators, units, values, missing):
    """A table with a latent score per unit, annotator noise and missing cells."""
    truth = rng.integers(1, values + 1, size=units)
    noisy = np.clip(truth + rng.integers(-1, 2, size=(annotators, units)) * (rng.random((annotators, units)) < 0.4),
                    1, values).astype(float)
    noisy[rng.random((annotators, units)) < missing] = NAN
    return noisy


def test_it_imports_without_django():
    code = "import sys, metrics.agreement; assert 'django' not in sys.modules and 'crowdkit' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_alpha_matches_krippendorff_2011_worked_example(level, published):
    result = agreement.alpha_interval(dense_to_triples(K2011), level, np.random.default_rng(0), rounds=0)
    assert round(result.alpha, 3) == published
    # 11 pairable units (the 12th has one value), 40 pairable values, all four observers
    assert (result.units, result.pairable, result.annotators) == (11, 40, 4)
    assert math.isnan(result.lower) and math.isnan(result.upper)


def test_the_coincidence_matrix_is_krippendorffs():
    # Krippendorff (2011), C.2: o_11 = 7, o_12 = 4/3, o_13 = o_14 = 1/3, o_22 = 10, o_44 = 4, o_55 = 3
    t = agreement._table(dense_to_triples(K2011), "nominal")
    o = agreement._coincidences(agreement._value_counts(t))
    assert o.sum() == pytest.approx(40)
    assert o[0] == pytest.approx([7, 4 / 3, 1 / 3, 1 / 3, 0])
    assert np.diag(o) == pytest.approx([7, 10, 8, 4, 3])
    assert o == pytest.approx(o.T)


@pytest.mark.parametrize("level", agreement.LEVELS)
def test_alpha_equals_the_package_on_dense_random_tables(level):
    rng = np.random.default_rng(11)
    for _ in range(5):
        dense = random_dense(rng, annotators=7, units=60, values=5, missing=0.3)
        ours = agreement.alpha_interval(dense_to_triples(dense), level, rng, rounds=0).alpha
        theirs = krippendorff.alpha(reliability_data=dense, level_of_measurement=level)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_percent_agreement_counts_ordered_pairs_within_units():
    # unit a: 1,1,2 -> 2 agreeing ordered pairs of 6; unit b: 3,3 -> 2 of 2; unit c has one value
    triples = [("x", "a", 1), ("y", "a", 1), ("z", "a", 2), ("x", "b", 3), ("y", "b", 3), ("x", "c", 1)]
    assert agreement.percent_agreement(triples) == pytest.approx(4 / 8)


def test_a_duplicate_rating_names_the_annotator_and_unit():
    with pytest.raises(ValueError, match="annotator 'x' rated unit 'a' twice"):
        agreement.alpha_interval([("x", "a", 1), ("y", "a", 1), ("x", "a", 2)], "nominal", np.random.default_rng(0))


def test_non_numeric_values_are_refused_above_the_nominal_level():
    with pytest.raises(ValueError, match="'good' is not a finite number"):
        agreement.alpha_interval([("x", "a", "good"), ("y", "a", 1)], "ordinal", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown level"):
        agreement.alpha_interval([("x", "a", 1)], "cardinal", np.random.default_rng(0))


# --- the Hayes & Krippendorff bootstrap ------------------------------------------------------

def realistic_triples(seed=3, units=300, annotators=8, per_unit=3):
    rng = np.random.default_rng(seed)
    truth = rng.normal(3, 1.1, size=units)
    bias = rng.normal(0, 0.3, size=annotators)
    triples = []
    for u in range(units):
        for a in rng.choice(annotators, size=per_unit, replace=False):
            triples.append((f"a{a}", u, int(np.clip(np.rint(truth[u] + bias[a] + rng.normal(0, 0.7)), 1, 5))))
    return triples


def test_the_same_seed_gives_the_same_interval():
    triples = realistic_triples()
    first = agreement.alpha_interval(triples, "ordinal", np.random.default_rng(5))
    second = agreement.alpha_interval(triples, "ordinal", np.random.default_rng(5))
    third = agreement.alpha_interval(triples, "ordinal", np.random.default_rng(6))
    assert (first.lower, first.upper, first.q) == (second.lower, second.upper, second.q)
    assert (first.lower, first.upper) != (third.lower, third.upper)


def test_the_interval_contains_the_point_and_q_is_monotone():
    result = agreement.alpha_interval(realistic_triples(), "ordinal", np.random.default_rng(1))
    assert 0.5 < result.alpha < 0.95
    assert result.lower < result.alpha < result.upper
    assert result.rounds == 1000 and result.units == 300 and result.annotators == 8
    qs = [result.q[a] for a in sorted(result.q)]
    assert qs == sorted(qs) and 0 <= qs[0] and qs[-1] <= 1


def unit_bootstrap_width(triples, level, rounds, rng):
    """An independent check: resample units with replacement, alpha of each resample."""
    t = agreement._table(triples, level)
    counts = agreement._value_counts(t)
    values = np.asarray(t.domain, dtype=float)
    alphas = []
    for _ in range(rounds):
        sample = counts[rng.integers(0, counts.shape[0], size=counts.shape[0])]
        used = sample.sum(axis=0) > 0
        alphas.append(krippendorff.alpha(value_counts=sample[:, used], value_domain=values[used],
                                         level_of_measurement=level))
    lower, upper = np.quantile(alphas, [0.025, 0.975])
    return upper - lower


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_the_pair_bootstrap_is_about_as_wide_as_a_unit_bootstrap(level):
    # The two bootstraps answer slightly different questions (H&K resample pairs, M of them,
    # from the coincidence matrix; the unit bootstrap keeps each unit's pairs together), so
    # their widths agree only roughly; a factor of 2 either way catches a wrong D_e, a wrong
    # pair distribution or a wrong M, each of which moves the width by far more.
    triples = realistic_triples(units=150)
    ours = agreement.alpha_interval(triples, level, np.random.default_rng(2))
    width = unit_bootstrap_width(triples, level, 400, np.random.default_rng(2))
    assert 0.5 < (ours.upper - ours.lower) / width < 2.0


def test_perfect_agreement_gives_alpha_one_and_the_nx_correction():
    # 10 units rated 1,1 or 2,2 by two coders: o_11 = o_22 = 10, n = 20, P = 10 pairs.
    # Every bootstrap round draws only matches (alpha_b = 1); the macro sets
    # nx = round(1000 * (0.5**10 + 0.5**10)) = 2 of them to 0.
    triples = [(coder, u, 1 + u % 2) for u in range(10) for coder in ("a", "b")]
    result = agreement.alpha_interval(triples, "nominal", np.random.default_rng(0))
    assert result.alpha == 1.0 and result.percent_agreement == 1.0
    assert (result.lower, result.upper) == (1.0, 1.0)
    assert result.q[0.5] == pytest.approx(0.002) and result.q[0.9] == pytest.approx(0.002)


def test_a_single_diagonal_value_turns_perfect_rounds_into_zero():
    # units (1,1) x3 and (1,2): o_11 = 6, o_12 = o_21 = 1, o_22 = 0; only one diagonal cell.
    # D_e = 2 * e_12 / n = 2 * (7 * 1 / 7) / 8 = 0.25; M = min(25 * 3, (2 - 1) * 8 / 2) = 4;
    # a round with j disagreeing pairs gives 1 - j / (0.25 * 4) = 1 - j (clipped at -1), and
    # rounds with j = 0 (probability 0.75**4 = 0.32) would be 1 without the correction.
    triples = [(c, u, 1) for u in range(3) for c in ("a", "b")] + [("a", 3, 1), ("b", 3, 2)]
    result = agreement.alpha_interval(triples, "nominal", np.random.default_rng(4))
    assert result.alpha == pytest.approx(1 - (2 / 8) / 0.25)  # D_o = 2/8: alpha 0
    draws = np.random.default_rng(4).multinomial(4, [6 / 8, 2 / 8], size=1000)
    replicates = np.maximum(1.0 - draws[:, 1], -1.0)
    replicates[replicates == 1.0] = 0.0
    assert result.upper == 0.0 and result.q[0.5] == 1.0
    assert result.lower == np.sort(replicates)[24]  # the 25th of 1000, as KALPHA reads it
    assert result.q[0.5] == np.mean(replicates < 0.5)


# Hayes and Krippendorff (2007), Table 1: 5 observers rate the tone of 40 newspaper articles 0-3
# ("." missing); as the jucor/krippendorff R package ships it (data-raw/news_tone_hayes2007.csv).
HAYES2007 = """1,1,2,.,2 1,1,0,1,. 2,3,3,3,. .,0,0,.,0 0,0,0,.,0 0,0,0,.,0 1,0,2,.,1 1,.,2,0,. 2,2,2,.,2
2,1,1,1,. .,1,0,0,. 0,0,0,0,. 1,2,2,2,. 3,3,2,2,3 1,1,1,.,1 1,1,1,.,1 2,1,2,.,2 1,2,3,3,. 1,1,0,1,.
0,0,0,.,0 0,0,1,1,. 0,0,.,0,0 2,3,3,3,. 0,0,0,0,. 1,2,.,2,2 0,1,1,1,. 0,0,0,1,0 1,2,1,2,. 1,1,2,2,.
1,1,2,.,2 1,1,0,.,0 2,1,2,1,. 2,2,.,2,2 3,2,2,2,. 2,2,2,.,2 2,2,3,.,2 2,2,2,.,2 2,2,.,1,2 2,2,2,2,.
1,1,1,.,1"""


def hayes2007_triples():
    units = HAYES2007.split()
    return [(f"obs{o + 1}", u, int(v)) for u, row in enumerate(units) for o, v in enumerate(row.split(","))
            if v != "."]


def test_alpha_and_its_bootstrap_on_hayes_and_krippendorffs_2007_example():
    # The paper reports ordinal alpha = .7598 for these data, and that its bootstrap draws from the
    # 239 pairs of judgments the data hold (sum over units of m_u (m_u - 1) / 2).  Its printed
    # interval could not be retrieved to cite, and depends on the macro's random draws and version
    # (the paper used an earlier one than the v3.0 followed here), so the interval is pinned to
    # this seed only.  Note how much narrower the pair bootstrap is than resampling the 40 units
    # (0.085 against about 0.23): the pairs of one article are not independent.
    triples = hayes2007_triples()
    assert len(triples) == 159
    result = agreement.alpha_interval(triples, "ordinal", np.random.default_rng(0))
    assert round(result.alpha, 4) == 0.7598
    per_unit = np.bincount([u for _, u, _ in triples])
    assert (per_unit * (per_unit - 1) // 2).sum() == 239
    assert (result.units, result.annotators, result.pairable) == (40, 5, 159)
    assert result.lower < result.alpha < result.upper
    # v3.0's draws per round: min(25 q, (N - 1) n / 2) with q the non-zero coincidence cells
    t = agreement._table(triples, "ordinal")
    q = int(np.count_nonzero(agreement._coincidences(agreement._value_counts(t)) > 1e-12))
    assert min(25 * q, 4 * 159 // 2) == 318
    assert (round(result.lower, 3), round(result.upper, 3)) == (0.715, 0.800)


def test_alpha_is_undefined_without_pairable_values_or_variation():
    lonely = agreement.alpha_interval([("a", 1, 1), ("b", 2, 2)], "nominal", np.random.default_rng(0))
    assert math.isnan(lonely.alpha) and lonely.units == 0 and math.isnan(lonely.percent_agreement)
    same = agreement.alpha_interval([("a", 1, 3), ("b", 1, 3)], "interval", np.random.default_rng(0))
    assert math.isnan(same.alpha) and math.isnan(same.lower) and same.percent_agreement == 1.0


# --- Cohen and Fleiss ------------------------------------------------------------------------

def expand(table):
    """Two raters' labels from a confusion table of counts."""
    x, y = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            x += [i] * count
            y += [j] * count
    return x, y


def test_cohen_kappa_matches_the_sas_example_in_statsmodels_tests():
    # statsmodels' test_inter_rater.py, TestUnweightedCohens: SAS prints kappa 0.4842;
    # TestWeightedCohens (weights 0,1,2 = linear): 0.4701.
    x, y = expand([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    assert round(agreement.cohen_kappa(x, y), 4) == 0.4842
    assert round(agreement.cohen_kappa(x, y, weights="linear"), 4) == 0.4701


def test_cohen_kappa_matches_cohens_1960_table_1():
    # J. Cohen, "A coefficient of agreement for nominal scales", Educational and Psychological
    # Measurement 20 (1960) 37-46, Table 1 (three categories, proportions): p_o = .25 + .02 + .02 = .29
    # and p_c = .20 + .09 + .06 = .35 (chance: the products of the margins .50/.40, .30/.30, .20/.30).
    # Kappa depends on the diagonal and the margins only, so any table with them gives
    # (.29 - .35) / (1 - .35); here as 100 units.
    table = [[25, 13, 12], [12, 2, 16], [3, 15, 2]]
    x, y = expand(table)
    assert np.trace(np.array(table)) / 100 == pytest.approx(0.29)
    chance = np.array(table).sum(axis=1) / 100 @ (np.array(table).sum(axis=0) / 100)
    assert chance == pytest.approx(0.35)
    assert agreement.cohen_kappa(x, y) == pytest.approx((0.29 - 0.35) / (1 - 0.35), abs=1e-12)
    assert round(agreement.cohen_kappa(x, y), 3) == -0.092
    assert agreement.cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_equals_sklearn_and_statsmodels_on_random_tables(weights):
    rng = np.random.default_rng(7)
    for _ in range(20):
        x = rng.integers(0, 5, size=80)
        y = np.where(rng.random(80) < 0.6, x, rng.integers(0, 5, size=80))
        ours = agreement.cohen_kappa(x.tolist(), y.tolist(), weights=weights, labels=range(5))
        assert ours == pytest.approx(cohen_kappa_score(x, y, weights=weights, labels=list(range(5))), abs=1e-12)
        table = np.histogram2d(x, y, bins=[np.arange(6) - 0.5] * 2)[0]
        wt = {None: None, "linear": "linear", "quadratic": "quadratic"}[weights]
        assert ours == pytest.approx(inter_rater.cohens_kappa(table, wt=wt, return_results=False), abs=1e-10)


def test_fleiss_kappa_matches_fleiss_1971():
    triples = [(f"r{j}", i, int(v)) for i, row in enumerate(FLEISS1971) for j, v in enumerate(row)]
    result = agreement.fleiss_kappa(triples)
    assert round(result.kappa, 3) == 0.430
    assert result.kappa == pytest.approx(0.4302445, abs=1e-7)  # R irr::kappam.fleiss
    assert (result.units, result.raters_per_unit) == (30, 6)
    assert round(result.percent, 3) == 0.556  # Fleiss' P-bar


def test_fleiss_kappa_equals_statsmodels_on_random_tables():
    rng = np.random.default_rng(9)
    for _ in range(10):
        ratings = random_dense(rng, annotators=5, units=40, values=4, missing=0.0).T.astype(int)
        triples = [(f"r{j}", i, int(v)) for i, row in enumerate(ratings) for j, v in enumerate(row)]
        counts, _ = inter_rater.aggregate_raters(ratings)
        assert agreement.fleiss_kappa(triples).kappa == pytest.approx(inter_rater.fleiss_kappa(counts), abs=1e-12)


def test_fleiss_kappa_uses_the_units_with_the_modal_number_of_ratings():
    # K2011 holds units with 2, 3 and 4 values: 8 of the 11 pairable units have 4, the 12th has one
    result = agreement.fleiss_kappa(dense_to_triples(K2011))
    assert (result.units, result.raters_per_unit, result.total_units) == (8, 4, 11)
    data = np.array(K2011, dtype=float)
    full = data[:, (~np.isnan(data)).sum(axis=0) == 4].T.astype(int)
    counts, _ = inter_rater.aggregate_raters(full)
    assert result.kappa == pytest.approx(inter_rater.fleiss_kappa(counts), abs=1e-12)
    # random tables with missing cells: always the modal-count subset, as statsmodels computes it
    rng = np.random.default_rng(12)
    for _ in range(10):
        dense = random_dense(rng, annotators=6, units=50, values=4, missing=0.25)
        m = (~np.isnan(dense)).sum(axis=0)
        sizes, freq = np.unique(m[m >= 2], return_counts=True)
        modal = sizes[np.flatnonzero(freq == freq.max())[-1]]
        keep = dense[:, m == modal].T
        subset = np.array([row[~np.isnan(row)] for row in keep], dtype=int)
        ours = agreement.fleiss_kappa(dense_to_triples(dense))
        assert (ours.units, ours.raters_per_unit) == (len(subset), modal)
        assert ours.kappa == pytest.approx(inter_rater.fleiss_kappa(inter_rater.aggregate_raters(subset)[0]),
                                           abs=1e-12)


def test_fleiss_kappa_is_none_without_a_unit_rated_twice():
    assert agreement.fleiss_kappa([("a", 1, 1), ("b", 2, 1), ("a", 3, 2)]) is None
    single = agreement.fleiss_kappa([("a", 1, 1), ("b", 1, 1), ("a", 2, 2)])
    assert (single.units, single.total_units, single.raters_per_unit) == (1, 1, 2) and math.isnan(single.kappa)


def test_split_units_counts_units_that_hold_different_values():
    assert agreement.split_units([("a", 1, "x"), ("b", 1, "x"), ("a", 2, "y")]) == 0
    # K2011: units 2 (2,2,3,2), 6 (1,2,3,4) and 8 (1,1,2,1) hold different values; the others agree
    assert agreement.split_units(dense_to_triples(K2011)) == 3


def test_pairwise_kappas_use_the_shared_units_of_each_pair():
    rng = np.random.default_rng(3)
    dense = random_dense(rng, annotators=4, units=50, values=5, missing=0.3)
    pairs = agreement.pairwise_kappas(dense_to_triples(dense), weights="quadratic")
    assert [(p.a, p.b) for p in pairs] == [("obs0", "obs1"), ("obs0", "obs2"), ("obs0", "obs3"),
                                           ("obs1", "obs2"), ("obs1", "obs3"), ("obs2", "obs3")]
    for pair in pairs:
        x, y = dense[int(pair.a[3:])], dense[int(pair.b[3:])]
        shared = ~np.isnan(x) & ~np.isnan(y)
        assert pair.n == shared.sum()
        assert pair.kappa == pytest.approx(
            cohen_kappa_score(x[shared], y[shared], weights="quadratic", labels=[1.0, 2.0, 3.0, 4.0, 5.0]))
        assert pair.percent == pytest.approx(np.mean(x[shared] == y[shared]))


def test_leave_one_out_drops_one_annotator_and_finds_the_noisy_one():
    rng = np.random.default_rng(5)
    dense = random_dense(rng, annotators=5, units=80, values=5, missing=0.1)
    dense[4] = np.where(np.isnan(dense[4]), NAN, rng.integers(1, 6, size=80))  # a random rater
    result = agreement.leave_one_out(dense_to_triples(dense), "ordinal")
    full = krippendorff.alpha(reliability_data=dense, level_of_measurement="ordinal")
    for i in range(5):
        everyone, without = result[f"obs{i}"]
        assert everyone == pytest.approx(full)
        assert without == pytest.approx(krippendorff.alpha(reliability_data=np.delete(dense, i, axis=0),
                                                           level_of_measurement="ordinal"))
    assert max(result, key=lambda name: result[name][1]) == "obs4"


# --- latent competence -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def crowd():
    """10 annotators right 90 % of the time, 3 answering uniformly at random; 300 units, 3 labels."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=300)
    triples = []
    for w in range(13):
        for u in range(300):
            if w < 10:
                label = truth[u] if rng.random() < 0.9 else (truth[u] + rng.integers(1, 3)) % 3
            else:
                label = rng.integers(0, 3)
            triples.append((f"w{w}", f"unit{u}", ["yes", "no", "unsure"][label]))
    return triples, {f"unit{u}": ["yes", "no", "unsure"][t] for u, t in enumerate(truth)}


@pytest.mark.parametrize("method", ["dawid_skene", "mace"])
def test_competence_ranks_the_spammers_last_and_recovers_the_labels(crowd, method):
    triples, truth = crowd
    comp = agreement.competence(triples, method=method, seed=1)
    ranked = sorted(comp.skills, key=comp.skills.get)
    assert set(ranked[:3]) == {"w10", "w11", "w12"}
    assert all(0 <= s <= 1 for s in comp.skills.values())
    if method == "dawid_skene":
        # the chance of a right label: ~0.9 for the good annotators, ~1/3 for the spammers
        assert all(abs(comp.skills[f"w{w}"] - 0.9) < 0.06 for w in range(10))
        assert all(abs(comp.skills[f"w{w}"] - 1 / 3) < 0.08 for w in (10, 11, 12))
    else:
        # MACE's spamming probability: near 1 for the spammers, low for the others
        assert all(comp.skills[f"w{w}"] < 0.1 for w in (10, 11, 12))
        assert all(comp.skills[f"w{w}"] > 0.7 for w in range(10))
    assert np.mean([comp.labels[u] == truth[u] for u in truth]) > 0.98
    assert set(comp.uncertainty) == set(truth)


def test_most_uncertain_returns_the_highest_entropies_first(crowd):
    triples, truth = crowd
    # three contested units: five good annotators say "yes", the other five "no"
    contested = {"unit0", "unit1", "unit2"}
    good = {f"w{w}": ("yes" if w < 5 else "no") for w in range(10)}
    flipped = [(w, u, good[w] if u in contested and w in good else v) for w, u, v in triples]
    comp = agreement.competence(flipped)
    top = agreement.most_uncertain(comp, k=5)
    entropies = [h for _, h in top]
    assert entropies == sorted(entropies, reverse=True) and len(top) == 5
    assert entropies[0] == max(comp.uncertainty.values())
    assert {u for u, _ in top[:3]} == contested  # the others are near-certain
    assert top[2][1] > 10 * top[3][1]
    assert all(0 <= h <= math.log(3) for h in comp.uncertainty.values())
