"""Reader studies, analysis: per-reader metrics, AI-vs-reader comparisons, agreement.

Takes the tables of :mod:`lumbardx.clinical.readerstudy` (format, label vocabulary, time rule)
and returns a :class:`ReaderStudyResult`; fractions in [0, 1], times in seconds. The statistics
are in :mod:`lumbardx.clinical.stats`; :mod:`lumbardx.clinical.readerstudy_report` writes the
result and its methods text. Reproducing Ke et al. (2025) Table 3: its "chi-square (P < 0.05)"
holds for every comparison only without Yates' correction (15-year surgeon, specificity:
P = 0.029 uncorrected, 0.057 corrected), so the paper most likely used the uncorrected Pearson
test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lumbardx.clinical.readerstudy import (
    NEGATIVE,
    aligned_calls,
    check_consistency,
    load_reads,
    load_truth,
    resolve_ai,
)
from lumbardx.clinical.stats import (
    CochranQResult,
    KappaResult,
    Proportion,
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
from lumbardx.data.errors import InputError


@dataclass(frozen=True)
class FindingMetrics:
    """One truth finding for one reader: of the ``discs`` with this truth label, how many the
    reader called positive (``detected``) and how many with exactly this label (``exact``)."""

    finding: str
    discs: int
    detected: Proportion
    exact: Proportion


@dataclass(frozen=True)
class ReaderMetrics:
    """Diagnostic performance of one reader against the truth (disc level).

    ``exact_agreement``: discs whose canonical label equals the truth label (normal = normal,
    herniation = herniation). ``kappa``: Cohen's kappa of presence/absence against the truth.
    ``mean_seconds_per_case`` is ``None`` when no time was recorded.
    """

    reader: str
    is_ai: bool
    sensitivity: Proportion
    specificity: Proportion
    accuracy: Proportion
    exact_agreement: Proportion
    kappa: KappaResult
    per_finding: list[FindingMetrics]
    mean_seconds_per_case: float | None
    timed_cases: int


@dataclass(frozen=True)
class Comparison:
    """The AI against one reader on one metric (``difference`` = AI minus reader, fraction).

    McNemar fields are set for sensitivity (positive discs) and specificity (negative discs)
    and are ``None`` for accuracy; ``holm_p`` is adjusted over all McNemar tests of the study.
    ``boot_*``: percentile interval of the difference from the patient bootstrap.
    ``chi2_*``: the unpaired chi-square, kept only to reproduce published tables.
    """

    reader: str
    metric: str
    ai_estimate: float
    reader_estimate: float
    difference: float
    boot_ci_low: float
    boot_ci_high: float
    boot_resamples: int
    mcnemar_b: int | None
    mcnemar_c: int | None
    mcnemar_p: float | None
    holm_p: float | None
    chi2_pearson: float
    chi2_pearson_p: float
    chi2_yates: float
    chi2_yates_p: float


@dataclass(frozen=True)
class OmnibusTest:
    """Cochran's Q across all readers on one disc subset (``metric``)."""

    metric: str
    readers: list[str]
    result: CochranQResult


@dataclass(frozen=True)
class Agreement:
    """Fleiss' kappa among the human readers: presence/absence and exact finding labels."""

    readers: list[str]
    fleiss_presence: float
    fleiss_finding: float


@dataclass(frozen=True)
class ReaderStudyResult:
    """Everything a reader study reports; fractions in [0, 1], times in seconds."""

    reads_path: str | None
    truth_path: str | None
    ai: str | None
    n_cases: int
    n_discs: int
    n_positive: int
    n_negative: int
    findings: dict[str, int]
    readers: list[ReaderMetrics]
    comparisons: list[Comparison]
    cochran: list[OmnibusTest]
    agreement: Agreement | None
    seed: int
    n_boot: int
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)


def _reader_metrics(
    name: str,
    is_ai: bool,
    labels: np.ndarray,
    seconds: np.ndarray,
    truth_labels: np.ndarray,
    case_idx: np.ndarray,
    n_cases: int,
    findings: list[str],
    alpha: float,
) -> ReaderMetrics:
    pos_t = truth_labels != NEGATIVE
    pos_r = labels != NEGATIVE
    tp, tn = int(np.sum(pos_t & pos_r)), int(np.sum(~pos_t & ~pos_r))
    per_finding = []
    for f in findings:
        m = truth_labels == f
        per_finding.append(
            FindingMetrics(
                f,
                int(m.sum()),
                proportion(int(np.sum(pos_r[m])), int(m.sum()), alpha),
                proportion(int(np.sum(labels[m] == f)), int(m.sum()), alpha),
            )
        )
    timed = np.bincount(case_idx, weights=~np.isnan(seconds), minlength=n_cases) > 0
    per_case = np.bincount(case_idx, weights=np.nan_to_num(seconds), minlength=n_cases)
    mean_s = float(per_case[timed].mean()) if timed.any() else None
    return ReaderMetrics(
        reader=name,
        is_ai=is_ai,
        sensitivity=proportion(tp, int(pos_t.sum()), alpha),
        specificity=proportion(tn, int((~pos_t).sum()), alpha),
        accuracy=proportion(tp + tn, int(pos_t.size), alpha),
        exact_agreement=proportion(int(np.sum(labels == truth_labels)), int(labels.size), alpha),
        kappa=cohen_kappa(pos_r, pos_t),
        per_finding=per_finding,
        mean_seconds_per_case=mean_s,
        timed_cases=int(timed.sum()),
    )


def _as_table(
    obj: pd.DataFrame | str | Path, loader: Callable[[str | Path], pd.DataFrame]
) -> pd.DataFrame:
    if not isinstance(obj, pd.DataFrame):
        return loader(obj)
    needed = {"case", "site", "label", "positive", "line"}
    needed |= {"reader", "seconds"} if loader is load_reads else set()
    missing = sorted(needed - set(obj.columns))
    if missing:
        raise InputError(
            obj.attrs.get("path"),
            f"table lacks column(s) {', '.join(missing)}; read it with {loader.__name__}()",
        )
    return obj


def run_reader_study(
    reads: pd.DataFrame | str | Path,
    truth: pd.DataFrame | str | Path,
    ai: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
) -> ReaderStudyResult:
    """Compute the whole reader study.

    Args:
        reads, truth: tables from :func:`load_reads` / :func:`load_truth`, or their paths.
        ai: the AI reader's name; ``None`` uses a reader named "AI" when present, and without
            one only per-reader metrics, Cochran's Q and agreement are computed.
        seed: seed of the ``numpy.random.Generator`` drawing the bootstrap resamples.
        n_boot: number of patient-level bootstrap resamples (0 skips the bootstrap).
        alpha: 1 - confidence level of every interval.

    Raises:
        InputError: inconsistent tables (see :func:`check_consistency`), unknown ``ai``.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    reads_df = _as_table(reads, load_reads)
    truth_df = _as_table(truth, load_truth)
    check_consistency(reads_df, truth_df)
    ai_name = resolve_ai(reads_df, ai)
    names, labels, seconds = aligned_calls(reads_df, truth_df)
    t_labels = truth_df["label"].to_numpy(dtype=str)
    pos_t = t_labels != NEGATIVE
    cases = list(dict.fromkeys(truth_df["case"]))
    case_idx = truth_df["case"].map({c: i for i, c in enumerate(cases)}).to_numpy(dtype=np.int64)
    findings = sorted(set(t_labels[pos_t].tolist()))
    metrics = [
        _reader_metrics(
            n, n == ai_name, labels[i], seconds[i], t_labels, case_idx, len(cases), findings, alpha
        )
        for i, n in enumerate(names)
    ]
    correct = (labels != NEGATIVE) == pos_t[None, :]  # (n_readers, n_discs)
    notes: list[str] = []

    comparisons: list[Comparison] = []
    if ai_name is not None and len(names) > 1:
        a = names.index(ai_name)
        weights = case_weights(len(cases), n_boot, np.random.default_rng(seed))
        subsets = {"sensitivity": pos_t, "specificity": ~pos_t, "accuracy": np.ones_like(pos_t)}
        for i, name in enumerate(names):
            if i == a:
                continue
            for metric, mask in subsets.items():
                pa, pr = getattr(metrics[a], metric), getattr(metrics[i], metric)
                diff_case = np.bincount(
                    case_idx,
                    weights=(correct[a] & mask) * 1.0 - (correct[i] & mask),
                    minlength=len(cases),
                )
                den_case = np.bincount(case_idx, weights=mask * 1.0, minlength=len(cases))
                lo, hi, used = percentile_ci(bootstrap_ratio(weights, diff_case, den_case), alpha)
                mc = (
                    mcnemar_exact(correct[a][mask], correct[i][mask])
                    if metric != "accuracy"
                    else None
                )
                c1 = chi2_unpaired(pa.successes, pa.total, pr.successes, pr.total, yates=False)
                c2 = chi2_unpaired(pa.successes, pa.total, pr.successes, pr.total, yates=True)
                comparisons.append(
                    Comparison(
                        reader=name,
                        metric=metric,
                        ai_estimate=pa.estimate,
                        reader_estimate=pr.estimate,
                        difference=pa.estimate - pr.estimate,
                        boot_ci_low=lo,
                        boot_ci_high=hi,
                        boot_resamples=used,
                        mcnemar_b=mc.b if mc else None,
                        mcnemar_c=mc.c if mc else None,
                        mcnemar_p=mc.pvalue if mc else None,
                        holm_p=None,
                        chi2_pearson=c1.statistic,
                        chi2_pearson_p=c1.pvalue,
                        chi2_yates=c2.statistic,
                        chi2_yates_p=c2.pvalue,
                    )
                )
        family = [k for k, c in enumerate(comparisons) if c.mcnemar_p is not None]
        adjusted = holm([comparisons[k].mcnemar_p for k in family], alpha)  # type: ignore[misc]
        for k, p in zip(family, adjusted, strict=True):
            comparisons[k] = replace(comparisons[k], holm_p=float(p))
    elif ai_name is not None:
        notes.append(f"Only one reader ({ai_name}): no AI-vs-reader comparisons.")
    else:
        notes.append(
            "No AI reader (no --ai and no reader named 'AI'): no AI-vs-reader comparisons."
        )

    cochran: list[OmnibusTest] = []
    if len(names) >= 3:
        for metric, mask in (("sensitivity", pos_t), ("specificity", ~pos_t)):
            cochran.append(OmnibusTest(metric, names, cochran_q(correct[:, mask].T)))
    humans = [i for i, n in enumerate(names) if n != ai_name]
    agreement = None
    if len(humans) >= 2:
        agreement = Agreement(
            readers=[names[i] for i in humans],
            fleiss_presence=fleiss((labels[humans] != NEGATIVE).T.astype(np.int64)),
            fleiss_finding=fleiss(labels[humans].T),
        )
    return ReaderStudyResult(
        reads_path=reads_df.attrs.get("path"),
        truth_path=truth_df.attrs.get("path"),
        ai=ai_name,
        n_cases=len(cases),
        n_discs=int(pos_t.size),
        n_positive=int(pos_t.sum()),
        n_negative=int((~pos_t).sum()),
        findings={f: int(np.sum(t_labels == f)) for f in findings},
        readers=metrics,
        comparisons=comparisons,
        cochran=cochran,
        agreement=agreement,
        seed=seed,
        n_boot=n_boot,
        alpha=alpha,
        notes=notes,
    )
