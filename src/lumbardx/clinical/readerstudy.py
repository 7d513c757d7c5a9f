"""Reader studies: read the reads and truth tables, validate them, compute, write the report.

Input tables (CSV, comma separated, UTF-8, header row; column names case-insensitive, extra
columns ignored):

* READS: ``reader,case,site,call`` and optional ``seconds``. One row per reader and disc.
* TRUTH: ``case,site,truth``. One row per disc (the reference standard, e.g. expert consensus).

``case`` is the patient (the unit of clustering), ``site`` names the disc within the case (a
level such as ``L4-L5`` or any id). Identifiers are compared exactly after trimming spaces.

Label vocabulary of ``call`` and ``truth`` (case-insensitive, spaces trimmed):

* negative: ``normal``, ``0``, ``negative`` (and the study's aliases such as ``normal disc``);
* positive, finding not named: ``1``, ``positive``, ``abnormal`` (all become ``abnormal``);
* positive, named finding: any name made of letters, words separated by a space, ``-`` or ``_``
  (``herniation``, ``spondylolisthesis``, ``stenosis``...); the study's aliases are merged
  (``bulge`` -> ``herniation``, ``slip`` -> ``spondylolisthesis``, see
  :data:`lumbardx.data.classes.STUDY_ALIASES`).
* refused as ambiguous: ``true``, ``false``, ``yes``, ``no``, ``none``, ``nan``, ``na``,
  ``null``, ``unknown``, ``missing``; anything else with digits or punctuation is refused too.

A disc is positive when its label is not ``normal``.

Time per case (``seconds``): a reader's seconds are summed over that reader's rows of the case
(so a time given once per case goes on one row, with the other rows blank; a time given per
disc is added up). Cases where all of the reader's rows are blank are not timed; the mean is
over timed cases.

Every inconsistency raises :class:`lumbardx.data.errors.InputError` naming the file and the
row or column. The statistics are in :mod:`lumbardx.clinical.stats`; the methods text in the
report explains them. Reproducing Ke et al. (2025) Table 3: its "chi-square (P < 0.05)" holds
for every comparison only without Yates' correction (15-year surgeon, specificity: P = 0.029
uncorrected, 0.057 corrected), so the paper most likely used the uncorrected Pearson test.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbardx.clinical.forest import display_name, plot_forest
from lumbardx.clinical.stats import (
    CochranQResult,
    KappaResult,
    Proportion,
    bootstrap_ratio,
    case_weights,
    chi2_unpaired,
    cochran_q,
    cohen_kappa,
    finite_or_none,
    fleiss,
    holm,
    mcnemar_exact,
    percentile_ci,
    proportion,
)
from lumbardx.data.classes import STUDY_ALIASES
from lumbardx.data.errors import InputError

READS_COLUMNS: tuple[str, ...] = ("reader", "case", "site", "call")
TRUTH_COLUMNS: tuple[str, ...] = ("case", "site", "truth")
NEGATIVE = "normal"
UNSPECIFIED = "abnormal"
AMBIGUOUS: frozenset[str] = frozenset(
    {"true", "false", "yes", "no", "none", "nan", "na", "null", "unknown", "missing"}
)
VOCABULARY_HELP = (
    "accepted labels (case-insensitive): normal/0/negative; 1/positive/abnormal; "
    "or a finding name made of letters (e.g. herniation, spondylolisthesis)"
)
_NAME = re.compile(r"[a-z]+(?:[ _-][a-z]+)*")
_SHOW = 5  # how many offending rows/discs an error message lists


def parse_label(raw: str) -> str | None:
    """The canonical label of a ``call``/``truth`` value, or ``None`` when it is refused.

    Returns ``"normal"`` (negative), ``"abnormal"`` (positive, finding not named) or the
    lower-case finding name (study aliases merged).
    """
    key = " ".join(str(raw).strip().lower().split())
    if key in ("0", "normal", "negative"):
        return NEGATIVE
    if key in ("1", "positive", "abnormal"):
        return UNSPECIFIED
    if key in STUDY_ALIASES:
        return STUDY_ALIASES[key]
    if key in AMBIGUOUS or not _NAME.fullmatch(key):
        return None
    return key


def _read_rows(
    path: Path, required: tuple[str, ...], what: str
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV as ``(line number, {lower-case column: stripped value})``."""
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"{what} file is not UTF-8 text ({exc.reason})") from exc
    if not text.strip():
        raise InputError(
            path, f"{what} file is empty; expected a header with columns {', '.join(required)}"
        )
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(path, f"header repeats column(s) {', '.join(dupes)}")
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            path,
            f"missing column(s) {', '.join(missing)} in the header (found: {', '.join(header)}); "
            f"a {what} table needs {', '.join(required)}",
        )
    rows: list[tuple[int, dict[str, str]]] = []
    for cells in reader:
        if not any(f.strip() for f in cells):
            continue
        line = reader.line_num
        if len(cells) != len(header):
            raise InputError(
                path, f"row {line}: {len(cells)} fields but the header has {len(header)}"
            )
        row = {h: f.strip() for h, f in zip(header, cells, strict=True)}
        for col in required:
            if not row[col]:
                raise InputError(path, f"row {line}, column '{col}': empty value")
        rows.append((line, row))
    if not rows:
        raise InputError(path, f"{what} file has a header but no data rows")
    return header, rows


def _label(path: Path, line: int, column: str, raw: str) -> str:
    label = parse_label(raw)
    if label is None:
        raise InputError(
            path, f"row {line}, column '{column}': unknown label {raw!r}; {VOCABULARY_HELP}"
        )
    return label


def _check_duplicates(path: Path, df: pd.DataFrame, keys: list[str]) -> None:
    dup = df[df.duplicated(keys, keep=False)]
    if dup.empty:
        return
    first = dup.groupby(keys, sort=False)["line"].apply(list).head(_SHOW)
    parts = []
    for key, lines in first.items():
        where = ", ".join(f"{k} {v}" for k, v in zip(keys, key, strict=True))
        parts.append(f"rows {', '.join(map(str, lines))} ({where})")
    raise InputError(path, f"duplicate rows for the same {'/'.join(keys)}: {'; '.join(parts)}")


def load_reads(path: str | Path) -> pd.DataFrame:
    """Read and validate a READS table.

    Returns a DataFrame with one row per call and columns ``line`` (CSV line number),
    ``reader``, ``case``, ``site``, ``call`` (as written), ``label`` (canonical, see
    :func:`parse_label`), ``positive`` (bool) and ``seconds`` (float, ``nan`` when blank or
    absent). ``df.attrs["path"]`` holds the file path.
    """
    path = Path(path)
    header, rows = _read_rows(path, READS_COLUMNS, "reads")
    has_seconds = "seconds" in header
    records = []
    for line, row in rows:
        label = _label(path, line, "call", row["call"])
        seconds = math.nan
        if has_seconds and row["seconds"]:
            try:
                seconds = float(row["seconds"])
            except ValueError:
                raise InputError(
                    path, f"row {line}, column 'seconds': {row['seconds']!r} is not a number"
                ) from None
            if not math.isfinite(seconds) or seconds < 0:
                raise InputError(
                    path, f"row {line}, column 'seconds': {row['seconds']!r} is not a time >= 0"
                )
        records.append(
            (
                line,
                row["reader"],
                row["case"],
                row["site"],
                row["call"],
                label,
                label != NEGATIVE,
                seconds,
            )
        )
    df = pd.DataFrame.from_records(
        records, columns=["line", "reader", "case", "site", "call", "label", "positive", "seconds"]
    )
    _check_duplicates(path, df, ["reader", "case", "site"])
    df.attrs["path"] = str(path)
    return df


def load_truth(path: str | Path) -> pd.DataFrame:
    """Read and validate a TRUTH table.

    Returns a DataFrame with columns ``line``, ``case``, ``site``, ``truth`` (as written),
    ``label`` and ``positive``; ``df.attrs["path"]`` holds the file path.
    """
    path = Path(path)
    _, rows = _read_rows(path, TRUTH_COLUMNS, "truth")
    records = [
        (line, row["case"], row["site"], row["truth"], _label(path, line, "truth", row["truth"]))
        for line, row in rows
    ]
    df = pd.DataFrame.from_records(records, columns=["line", "case", "site", "truth", "label"])
    df["positive"] = df["label"] != NEGATIVE
    _check_duplicates(path, df, ["case", "site"])
    df.attrs["path"] = str(path)
    return df


def _listing(items: Iterable[str], total: int) -> str:
    shown = list(items)[:_SHOW]
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    return "; ".join(shown) + more


def check_consistency(reads: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Refuse reads of discs absent from the truth, and readers missing calls for some discs.

    Raises:
        InputError: naming the reads file, the offending rows or the reader and discs.
    """
    rpath = reads.attrs.get("path")
    tname = Path(truth.attrs.get("path", "truth")).name
    truth_keys = set(zip(truth["case"], truth["site"], strict=True))
    unknown = reads[[k not in truth_keys for k in zip(reads["case"], reads["site"], strict=True)]]
    if not unknown.empty:
        where = (f"row {r.line} (case {r.case}, site {r.site})" for r in unknown.itertuples())
        raise InputError(
            rpath,
            f"{len(unknown)} row(s) name a disc missing from the truth file {tname}: "
            + _listing(where, len(unknown)),
        )
    for reader, group in reads.groupby("reader", sort=False):
        have = set(zip(group["case"], group["site"], strict=True))
        lacking = [
            (c, s) for c, s in zip(truth["case"], truth["site"], strict=True) if (c, s) not in have
        ]
        if lacking:
            raise InputError(
                rpath,
                f"reader {reader!r} has no call for {len(lacking)} of {len(truth)} discs in "
                f"{tname}: " + _listing((f"case {c}, site {s}" for c, s in lacking), len(lacking)),
            )


def resolve_ai(reads: pd.DataFrame, ai: str | None) -> str | None:
    """The AI reader's name: ``ai`` if given (must be a reader), else a reader named "AI"."""
    readers = list(dict.fromkeys(reads["reader"]))
    if ai is not None:
        if ai not in readers:
            raise InputError(
                reads.attrs.get("path"),
                f"--ai {ai!r} is not a reader in this file (readers: {', '.join(readers)})",
            )
        return ai
    if "AI" in readers:
        return "AI"
    matches = [r for r in readers if r.lower() == "ai"]
    return matches[0] if len(matches) == 1 else None


def aligned_calls(
    reads: pd.DataFrame, truth: pd.DataFrame
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each reader's labels in truth row order.

    Returns ``(readers, labels, seconds)``: readers in order of first appearance; ``labels``
    ``(n_readers, n_discs)`` str; ``seconds`` ``(n_readers, n_discs)`` float (``nan`` blank).
    """
    readers = list(dict.fromkeys(reads["reader"]))
    order = {k: i for i, k in enumerate(zip(truth["case"], truth["site"], strict=True))}
    labels = np.empty((len(readers), len(truth)), dtype=object)
    seconds = np.full((len(readers), len(truth)), np.nan)
    ridx = {r: i for i, r in enumerate(readers)}
    for row in reads.itertuples():
        j = order[(row.case, row.site)]
        labels[ridx[row.reader], j] = row.label
        seconds[ridx[row.reader], j] = row.seconds
    return readers, labels.astype(str), seconds


# --------------------------------------------------------------------------- analysis


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


# --------------------------------------------------------------------------- output


def result_to_dict(result: ReaderStudyResult) -> dict[str, Any]:
    """The result as JSON-ready nested dicts: numbers stay numbers, ``nan`` becomes ``None``,
    every proportion also carries its ``fraction`` string (``"194/198"``)."""

    def conv(x: Any) -> Any:
        if isinstance(x, Proportion):
            return {**{k: conv(v) for k, v in asdict(x).items()}, "fraction": x.fraction}
        if is_dataclass(x) and not isinstance(x, type):
            return {f.name: conv(getattr(x, f.name)) for f in fields(x)}
        if isinstance(x, dict):
            return {str(k): conv(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [conv(v) for v in x]
        if isinstance(x, bool | np.bool_):
            return bool(x)
        if isinstance(x, int | np.integer):
            return int(x)
        if isinstance(x, float | np.floating):
            return finite_or_none(float(x))
        return x

    return conv(result)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _cell(p: Proportion) -> str:
    if p.total == 0:
        return "n/a (0 discs)"
    return f"{_pct(p.estimate)} ({p.fraction}; {100 * p.ci_low:.1f}-{100 * p.ci_high:.1f})"


def _p(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return "< 0.001" if x < 0.001 else f"{x:.3f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def methods_text(result: ReaderStudyResult) -> str:
    """The methods paragraph of the report (tests, intervals, time rule, reporting standards)."""
    level = f"{100 * (1 - result.alpha):g}%"
    n_tests = sum(c.mcnemar_p is not None for c in result.comparisons)
    parts = [
        "Each disc (case and site) is positive when its reference label is not normal. "
        "Sensitivity, specificity and accuracy are given with counts and Wilson score "
        f"{level} confidence intervals (which treat discs as independent).",
    ]
    if result.comparisons:
        parts.append(
            f"The AI ({result.ai}) was compared with each reader on the same discs by the exact "
            "McNemar test on the diseased discs (sensitivity) and on the normal discs "
            f"(specificity); p-values are Holm-adjusted over these {n_tests} tests. Because discs "
            f"cluster within patients, the {level} intervals of the AI-minus-reader differences "
            "are percentile intervals of a bootstrap that resamples the "
            f"{result.n_cases} patients with replacement ({result.n_boot} resamples, numpy "
            f"Generator seed {result.seed})."
        )
    if result.cochran:
        parts.append(
            "Cochran's Q tests whether all readers share one sensitivity (diseased discs) and "
            "one specificity (normal discs)."
        )
    parts.append(
        "Agreement: Cohen's kappa of each reader with the reference on presence/absence, and "
        "Fleiss' kappa among the human readers. Mean time per case sums a reader's seconds over "
        "the case's rows and averages over the cases with a time recorded."
    )
    if result.comparisons:
        parts.append(
            "The unpaired chi-square on each 2x2 table of correct/incorrect counts (Pearson, "
            "without and with Yates' correction) is listed only to reproduce published tables; "
            "it ignores the pairing of readers and the clustering of discs and is not used for "
            "inference. The uncorrected Pearson test is most likely what Ke et al. (2025) used: "
            "their P < 0.05 for every comparison of Table 3 holds only without the correction."
        )
    parts.append(
        "Report the study following STARD 2015 (diagnostic accuracy) and CLAIM (AI in medical "
        "imaging): patient selection and flow, reference standard, reader experience and "
        "blinding, and these intervals."
    )
    return " ".join(parts)


def render_markdown(result: ReaderStudyResult) -> str:
    """The human-readable report ``reader_study.md``."""
    findings = ", ".join(f"{k} {v}" for k, v in result.findings.items()) or "none"
    out = [
        "# Reader study",
        "",
        f"- Reads: `{result.reads_path}`; truth: `{result.truth_path}`",
        f"- {result.n_cases} cases, {result.n_discs} discs: {result.n_positive} positive, "
        f"{result.n_negative} normal; findings: {findings}",
        f"- AI reader: {result.ai or 'none'}; readers: "
        + ", ".join(r.reader for r in result.readers),
        "",
        "## Diagnostic performance",
        "",
        "Percent (count; 95% Wilson CI).",
        "",
    ]
    rows = []
    for r in result.readers:
        time = "n/a"
        if r.mean_seconds_per_case is not None:
            time = f"{r.mean_seconds_per_case:.1f} ({r.timed_cases} cases)"
        name = f"**{display_name(r.reader, r.is_ai)}**" if r.is_ai else r.reader
        cells = [_cell(p) for p in (r.sensitivity, r.specificity, r.accuracy, r.exact_agreement)]
        rows.append([name, *cells, _num(r.kappa.kappa), time])
    header = ["Reader", "Sensitivity", "Specificity", "Accuracy", "Exact label"]
    out += _md_table([*header, "Cohen's kappa", "Mean time per case (s)"], rows)
    if result.findings:
        out += [
            "",
            "## Per finding",
            "",
            "Of the discs with each reference finding: called "
            "positive / called exactly that finding.",
            "",
        ]
        rows = [
            [r.reader]
            + [
                f"{_pct(f.detected.estimate)} ({f.detected.fraction}) / "
                f"{_pct(f.exact.estimate)} ({f.exact.fraction})"
                for f in r.per_finding
            ]
            for r in result.readers
        ]
        out += _md_table(["Reader"] + [f"{f} (n={n})" for f, n in result.findings.items()], rows)
    if result.comparisons:
        out += [
            "",
            f"## {result.ai} against each reader",
            "",
            "Difference = AI minus reader (percentage points) with its 95% patient-bootstrap CI. "
            "McNemar b: discs only the AI got right; c: discs only the reader got right.",
            "",
        ]
        rows = []
        for c in result.comparisons:
            diff = f"{100 * c.difference:+.2f}"
            if c.boot_resamples:
                diff += f" [{100 * c.boot_ci_low:+.2f}, {100 * c.boot_ci_high:+.2f}]"
            bc = "-" if c.mcnemar_b is None else f"{c.mcnemar_b}/{c.mcnemar_c}"
            rows.append(
                [
                    c.reader,
                    c.metric,
                    _pct(c.ai_estimate),
                    _pct(c.reader_estimate),
                    diff,
                    bc,
                    _p(c.mcnemar_p),
                    _p(c.holm_p),
                    _p(c.chi2_pearson_p),
                    _p(c.chi2_yates_p),
                ]
            )
        header = ["Reader", "Metric", "AI", "Reader", "Difference [95% CI]", "McNemar b/c"]
        header += ["McNemar p", "Holm p", "chi-square p (Pearson)", "chi-square p (Yates)"]
        out += _md_table(header, rows)
    if result.cochran:
        out += ["", "## Across all readers (Cochran's Q)", ""]
        rows = [
            [
                f"{o.metric} ({o.result.n_items} discs)",
                _num(o.result.statistic),
                str(o.result.df),
                _p(o.result.pvalue),
            ]
            for o in result.cochran
        ]
        out += _md_table(["Discs", "Q", "df", "p"], rows)
    if result.agreement is not None:
        a = result.agreement
        out += [
            "",
            "## Agreement among human readers (Fleiss' kappa)",
            "",
            f"- Readers: {', '.join(a.readers)}",
            f"- Presence/absence: {_num(a.fleiss_presence, 3)}; "
            f"exact finding label: {_num(a.fleiss_finding, 3)}",
        ]
    out += ["", "## Methods", "", methods_text(result), ""]
    if result.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(out)


def reader_rows(result: ReaderStudyResult) -> pd.DataFrame:
    """One row per reader (``reader_study.csv``): fractions in [0, 1], counts, CIs, kappa, time."""
    rows = []
    for r in result.readers:
        row: dict[str, Any] = {"reader": r.reader, "is_ai": r.is_ai}
        for name in ("sensitivity", "specificity", "accuracy", "exact_agreement"):
            p: Proportion = getattr(r, name)
            row.update(
                {
                    name: p.estimate,
                    f"{name}_successes": p.successes,
                    f"{name}_total": p.total,
                    f"{name}_ci_low": p.ci_low,
                    f"{name}_ci_high": p.ci_high,
                }
            )
        row.update(
            {
                "kappa": r.kappa.kappa,
                "kappa_ci_low": r.kappa.ci_low,
                "kappa_ci_high": r.kappa.ci_high,
                "mean_seconds_per_case": r.mean_seconds_per_case,
                "timed_cases": r.timed_cases,
            }
        )
        for f in r.per_finding:
            row[f"sensitivity_{f.finding}"] = f.detected.estimate
            row[f"exact_{f.finding}"] = f.exact.estimate
        rows.append(row)
    return pd.DataFrame(rows)


def write_reader_study(result: ReaderStudyResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``reader_study.md``, ``reader_study.csv``, ``comparisons.csv``,
    ``reader_study.json`` and ``forest.png`` into ``out_dir`` (created if needed).

    Returns the written paths by file name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        n: out / n
        for n in (
            "reader_study.md",
            "reader_study.csv",
            "comparisons.csv",
            "reader_study.json",
            "forest.png",
        )
    }
    paths["reader_study.md"].write_text(render_markdown(result), encoding="utf-8")
    reader_rows(result).to_csv(paths["reader_study.csv"], index=False)
    comp = pd.DataFrame(
        [asdict(c) for c in result.comparisons], columns=[f.name for f in fields(Comparison)]
    )
    comp.insert(0, "ai", result.ai)
    comp = comp.astype({"mcnemar_b": "Int64", "mcnemar_c": "Int64"})
    comp.to_csv(paths["comparisons.csv"], index=False)
    data = {**result_to_dict(result), "methods": methods_text(result)}
    paths["reader_study.json"].write_text(
        json.dumps(data, indent=2, allow_nan=False), encoding="utf-8"
    )
    plot_forest(result, paths["forest.png"])
    return paths
