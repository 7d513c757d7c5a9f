"""Reader-study statistics checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, chi2, norm
from statsmodels.stats.contingency_tables import mcnemar

from lumbardx.clinical.stats import (
    bootstrap_ratio,
    case_weights,
    chi2_unpaired,
    cochran_q,
    cohen_kappa,
    fleiss,
    holm,
    mcnemar_exact,
    percentile_ci,
    proportion,
)


def _paired(n11: int, b: int, c: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness arrays with n11 both right, b only A right, c only B right, n00 both wrong."""
    a = np.array([1] * n11 + [1] * b + [0] * c + [0] * n00, dtype=bool)
    bb = np.array([1] * n11 + [0] * b + [1] * c + [0] * n00, dtype=bool)
    return a, bb


@pytest.mark.parametrize("k,n", [(194, 198), (148, 198), (0, 12), (12, 12), (3, 7)])
def test_wilson_matches_hand_formula(k: int, n: int) -> None:
    z = norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    res = proportion(k, n)
    assert res.estimate == pytest.approx(p)
    assert res.ci_low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert res.ci_high == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert res.fraction == f"{k}/{n}"


def test_proportion_edge_cases() -> None:
    empty = proportion(0, 0)
    assert empty.total == 0 and math.isnan(empty.estimate) and math.isnan(empty.ci_low)
    with pytest.raises(ValueError):
        proportion(5, 4)
    cp = proportion(3, 10, method="beta")
    assert cp.method == "beta" and cp.ci_low < 0.3 < cp.ci_high


@pytest.mark.parametrize("b,c", [(1, 6), (0, 3), (4, 4), (50, 4), (12, 3)])
def test_mcnemar_exact_against_binomial_and_statsmodels(b: int, c: int) -> None:
    a, bb = _paired(20, b, c, 5)
    res = mcnemar_exact(a, bb)
    assert (res.b, res.c) == (b, c)
    hand = min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5))
    assert res.pvalue == pytest.approx(hand, rel=1e-12)
    sm = mcnemar(np.array([[20, b], [c, 5]]), exact=True).pvalue
    assert res.pvalue == pytest.approx(sm, rel=1e-12)


def test_mcnemar_b1_c6_value_and_no_discordance() -> None:
    assert mcnemar_exact(*_paired(3, 1, 6, 2)).pvalue == pytest.approx(2 * 8 / 128)
    assert mcnemar_exact(*_paired(10, 0, 0, 2)).pvalue == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


def test_cochran_q_hand_computed() -> None:
    x = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1], [1, 1, 0]], dtype=bool)
    # Column sums 5, 3, 2 (N = 10), row sums squared 22, k = 3:
    # Q = (k-1) (k sum C_j^2 - N^2) / (k N - sum R_i^2) = 2 (3*38 - 100) / (30 - 22) = 3.5
    res = cochran_q(x)
    assert res.statistic == pytest.approx(3.5)
    assert res.df == 2 and res.n_items == 6
    assert res.pvalue == pytest.approx(math.exp(-1.75))
    assert res.pvalue == pytest.approx(chi2.sf(3.5, 2))


def test_cochran_q_without_discordant_items_is_nan() -> None:
    res = cochran_q(np.array([[1, 1, 1], [0, 0, 0]], dtype=bool))
    assert math.isnan(res.statistic) and math.isnan(res.pvalue)


def test_holm_known_vector_and_nan() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    adj = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    adj2 = holm([0.01, float("nan"), 0.04])
    assert math.isnan(adj2[1])
    np.testing.assert_allclose(adj2[[0, 2]], [0.02, 0.04])


def test_chi2_of_the_papers_specificity_table() -> None:
    # AI 190/193 vs 15-year surgeon 182/193 (Ke et al. 2025, Table 3)
    a, b, c, d = 190, 3, 182, 11
    n = a + b + c + d
    den = (a + b) * (c + d) * (a + c) * (b + d)
    pearson = n * (a * d - b * c) ** 2 / den
    yates = n * (abs(a * d - b * c) - n / 2) ** 2 / den
    r1 = chi2_unpaired(190, 193, 182, 193, yates=False)
    r2 = chi2_unpaired(190, 193, 182, 193, yates=True)
    assert r1.statistic == pytest.approx(pearson) and r2.statistic == pytest.approx(yates)
    assert r1.pvalue == pytest.approx(chi2.sf(pearson, 1)) and r2.pvalue == pytest.approx(
        chi2.sf(yates, 1)
    )
    # the paper's "P < 0.05" holds only without Yates' correction
    assert r1.pvalue < 0.05 < r2.pvalue
    assert math.isnan(chi2_unpaired(5, 5, 7, 7, yates=False).pvalue)


def test_cohen_kappa_hand() -> None:
    a = np.array(["p"] * 10 + ["p"] * 2 + ["n"] * 3 + ["n"] * 15)
    b = np.array(["p"] * 10 + ["n"] * 2 + ["p"] * 3 + ["n"] * 15)
    po = 25 / 30
    pe = (12 / 30) * (13 / 30) + (18 / 30) * (17 / 30)
    res = cohen_kappa(a, b)
    assert res.kappa == pytest.approx((po - pe) / (1 - pe))
    assert res.ci_low < res.kappa < res.ci_high
    assert math.isnan(cohen_kappa(["n", "n"], ["n", "n"]).kappa)


def test_fleiss_hand() -> None:
    # item category counts (3 raters): [3,0], [0,3], [2,1], [1,2] -> P_bar 2/3, P_e 1/2 -> kappa 1/3
    labels = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert fleiss(labels) == pytest.approx(1 / 3)
    assert math.isnan(fleiss(np.zeros((4, 3), dtype=int)))
    assert math.isnan(fleiss(np.zeros((4, 1), dtype=int)))


def test_case_weights_deterministic_and_valid() -> None:
    w1 = case_weights(50, 300, np.random.default_rng(7))
    w2 = case_weights(50, 300, np.random.default_rng(7))
    w3 = case_weights(50, 300, np.random.default_rng(8))
    assert w1.shape == (300, 50)
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, w3)
    assert np.all(w1.sum(axis=1) == 50) and w1.min() >= 0
    # each case is drawn about once per resample on average
    assert abs(w1.mean() - 1.0) < 1e-12


def test_bootstrap_ratio_and_percentile_ci() -> None:
    rng = np.random.default_rng(0)
    discs = rng.integers(5, 9, size=40).astype(float)
    hits = np.floor(discs * 0.8)
    w = case_weights(40, 2000, np.random.default_rng(1))
    reps = bootstrap_ratio(w, hits, discs)
    lo, hi, used = percentile_ci(reps)
    point = hits.sum() / discs.sum()
    assert used == 2000 and lo < point < hi and 0 < hi - lo < 0.2
    # a constant per-case ratio has no sampling variability
    const = bootstrap_ratio(w, discs * 0.5, discs)
    np.testing.assert_allclose(const, 0.5)
    # zero denominators give nan replicates, which the interval ignores
    zero = bootstrap_ratio(np.array([[2, 0], [0, 2]]), np.array([1.0, 0.0]), np.array([2.0, 0.0]))
    assert zero[0] == 0.5 and math.isnan(zero[1])
    assert percentile_ci(zero)[2] == 1
    assert percentile_ci(np.array([np.nan]))[2] == 0
