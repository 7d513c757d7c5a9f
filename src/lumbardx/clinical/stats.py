"""Statistics for reader studies: proportions, paired tests, agreement and the patient bootstrap.

Every function takes plain numpy arrays or counts and returns a small typed dataclass; the
reader-study orchestration lives in :mod:`lumbardx.clinical.readerstudy_analysis`. The tests themselves
come from statsmodels and scipy; this module only shapes their inputs and outputs and defines
what happens on degenerate tables (reported as ``nan``, never as an exception).

Conventions:
    * A *disc* is one (case, site) pair; a *case* is a patient, the unit of clustering.
    * ``correct`` arrays are boolean, shape ``(n_discs,)``: the reader's call agrees with the
      truth on presence/absence of a finding.
    * Differences are always ``A - B`` (in the reader study: AI minus human reader).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2_contingency
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar
from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, fleiss_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

NAN = float("nan")


@dataclass(frozen=True)
class Proportion:
    """``successes / total`` with a two-sided confidence interval (fractions in [0, 1]).

    ``estimate`` and the interval are ``nan`` when ``total`` is 0.
    """

    successes: int
    total: int
    estimate: float
    ci_low: float
    ci_high: float
    method: str = "wilson"

    @property
    def fraction(self) -> str:
        """The counts as written in a table, e.g. ``"194/198"``."""
        return f"{self.successes}/{self.total}"


def proportion(
    successes: int, total: int, alpha: float = 0.05, method: str = "wilson"
) -> Proportion:
    """A proportion with its ``1 - alpha`` interval (``proportion_confint``, Wilson by default).

    ``method`` is any statsmodels ``proportion_confint`` method (``"wilson"``, ``"beta"`` for
    Clopper-Pearson, ...).
    """
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"invalid proportion {successes}/{total}")
    if total == 0:
        return Proportion(0, 0, NAN, NAN, NAN, method)
    low, high = proportion_confint(successes, total, alpha=alpha, method=method)
    return Proportion(
        int(successes), int(total), successes / total, float(low), float(high), method
    )


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two readers on the same items.

    ``b``: items A got right and B got wrong; ``c``: items A got wrong and B got right.
    ``pvalue`` is the two-sided exact binomial p-value, ``min(1, 2 * Binom(b + c, 0.5).cdf(
    min(b, c)))``; it is 1.0 when there are no discordant items.
    """

    b: int
    c: int
    statistic: float
    pvalue: float


def mcnemar_exact(correct_a: NDArray[np.bool_], correct_b: NDArray[np.bool_]) -> McNemarResult:
    """Exact McNemar test (``statsmodels ... mcnemar(exact=True)``) on paired correctness.

    Args:
        correct_a, correct_b: shape ``(n_items,)`` booleans, same items in the same order.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise ValueError(
            f"paired arrays must have the same 1-D shape, got {a.shape} and {b_.shape}"
        )
    table = np.array(
        [[np.sum(a & b_), np.sum(a & ~b_)], [np.sum(~a & b_), np.sum(~a & ~b_)]], dtype=np.int64
    )
    res = mcnemar(table, exact=True)
    b, c = int(table[0, 1]), int(table[1, 0])
    return McNemarResult(
        b=b, c=c, statistic=float(res.statistic), pvalue=min(1.0, float(res.pvalue))
    )


@dataclass(frozen=True)
class CochranQResult:
    """Cochran's Q across ``k`` readers on the same items (chi-square with ``k - 1`` df).

    ``statistic`` and ``pvalue`` are ``nan`` when no item is discordant (Q is undefined).
    """

    statistic: float
    df: int
    pvalue: float
    n_items: int


def cochran_q(correct: NDArray[np.bool_]) -> CochranQResult:
    """Cochran's Q (``statsmodels.stats.contingency_tables.cochrans_q``).

    Args:
        correct: shape ``(n_items, n_readers)`` booleans, one column per reader.
    """
    x = np.asarray(correct, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"Cochran's Q needs an (items, readers>=2) array, got shape {x.shape}")
    n, k = x.shape
    row = x.sum(axis=1)
    if n == 0 or not np.any((row > 0) & (row < k)):
        return CochranQResult(NAN, k - 1, NAN, n)
    res = cochrans_q(x)
    return CochranQResult(float(res.statistic), int(res.df), float(res.pvalue), n)


def holm(pvalues: list[float] | NDArray[np.float64], alpha: float = 0.05) -> NDArray[np.float64]:
    """Holm step-down adjusted p-values (``multipletests(method="holm")``).

    ``nan`` entries are left out of the family and stay ``nan``. Shape ``(m,)`` in and out.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


@dataclass(frozen=True)
class Chi2Result:
    """Unpaired chi-square test of two proportions on their 2x2 correct/incorrect table."""

    statistic: float
    pvalue: float
    dof: int
    yates: bool


def chi2_unpaired(k1: int, n1: int, k2: int, n2: int, yates: bool) -> Chi2Result:
    """Chi-square (``scipy.stats.chi2_contingency``) of ``k1/n1`` against ``k2/n2``.

    The table is ``[[k1, n1 - k1], [k2, n2 - k2]]``. This treats the two readers as
    independent samples, which they are not when both read the same discs; it is kept only
    to reproduce published tables (use :func:`mcnemar_exact` for inference). ``yates`` applies
    Yates' continuity correction. Degenerate tables (a zero margin) give ``nan``.
    """
    table = np.array([[k1, n1 - k1], [k2, n2 - k2]], dtype=np.int64)
    if np.any(table < 0):
        raise ValueError(f"invalid counts {k1}/{n1}, {k2}/{n2}")
    if np.any(table.sum(axis=0) == 0) or np.any(table.sum(axis=1) == 0):
        return Chi2Result(NAN, NAN, 1, yates)
    res = chi2_contingency(table, correction=yates)
    return Chi2Result(float(res.statistic), float(res.pvalue), int(res.dof), yates)


@dataclass(frozen=True)
class KappaResult:
    """Cohen's kappa with its asymptotic 95% interval (``nan`` when undefined)."""

    kappa: float
    ci_low: float
    ci_high: float
    n_items: int


def cohen_kappa(
    labels_a: NDArray[np.str_] | list[str], labels_b: NDArray[np.str_] | list[str]
) -> KappaResult:
    """Cohen's kappa between two label sequences (``statsmodels ... cohens_kappa``).

    Args:
        labels_a, labels_b: shape ``(n_items,)``, any hashable labels, same items in order.
    """
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired labels must have the same 1-D shape, got {a.shape} and {b.shape}")
    cats = sorted(set(a.tolist()) | set(b.tolist()))
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)), dtype=np.int64)
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        table[index[x], index[y]] += 1
    if len(cats) < 2:
        return KappaResult(NAN, NAN, NAN, int(a.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = cohens_kappa(table)
    return KappaResult(float(res.kappa), float(res.kappa_low), float(res.kappa_upp), int(a.size))


def fleiss(labels: NDArray[np.str_] | NDArray[np.int64]) -> float:
    """Fleiss' kappa among several raters (``statsmodels ... fleiss_kappa``).

    Args:
        labels: shape ``(n_items, n_raters)``, one categorical label per rater and item.

    Returns ``nan`` when fewer than two raters or when every rating is the same category.
    """
    x = np.asarray(labels)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0:
        return NAN
    _, codes = np.unique(x, return_inverse=True)
    counts, _ = aggregate_raters(codes.reshape(x.shape))
    if counts.shape[1] < 2:
        return NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(fleiss_kappa(counts, method="fleiss"))


def case_weights(n_cases: int, n_boot: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """How often each case is drawn in each patient-level bootstrap resample.

    Each resample draws ``n_cases`` cases with replacement (``rng.integers``). Returns an
    ``(n_boot, n_cases)`` integer array whose rows sum to ``n_cases``; a statistic that is a
    ratio of per-case sums is then ``(W @ numerator) / (W @ denominator)``.
    """
    if n_cases <= 0 or n_boot <= 0:
        return np.zeros((max(n_boot, 0), max(n_cases, 0)), dtype=np.int64)
    draws = rng.integers(0, n_cases, size=(n_boot, n_cases))
    offsets = np.arange(n_boot)[:, None] * n_cases
    flat = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_cases)
    return flat.reshape(n_boot, n_cases).astype(np.int64)


def bootstrap_ratio(
    weights: NDArray[np.int64], numerator: NDArray[np.float64], denominator: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Replicates of ``sum(numerator) / sum(denominator)`` under case weights.

    Args:
        weights: ``(n_boot, n_cases)`` from :func:`case_weights`.
        numerator, denominator: per-case sums, shape ``(n_cases,)`` (e.g. for a difference in
            sensitivity: AI true positives minus reader true positives, and positive discs).

    Returns shape ``(n_boot,)``; replicates with a zero denominator are ``nan``.
    """
    num = weights @ np.asarray(numerator, dtype=np.float64)
    den = weights @ np.asarray(denominator, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def percentile_ci(replicates: NDArray[np.float64], alpha: float = 0.05) -> tuple[float, float, int]:
    """Percentile interval of bootstrap replicates, ignoring ``nan`` ones.

    Returns ``(low, high, n_used)``; ``(nan, nan, 0)`` when no replicate is usable.
    """
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return NAN, NAN, 0
    low, high = np.percentile(r, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high), int(r.size)


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or ``None`` when missing or not finite (for JSON output)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
