"""Reader studies, output: the Markdown report, its methods text, CSV rows, JSON, forest plot.

Writes a :class:`lumbardx.clinical.readerstudy_analysis.ReaderStudyResult` (see
:func:`write_reader_study` for the files); input formats are described in
:mod:`lumbardx.clinical.readerstudy`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbardx.clinical.forest import display_name, plot_forest
from lumbardx.clinical.readerstudy_analysis import Comparison, ReaderStudyResult
from lumbardx.clinical.stats import Proportion, finite_or_none


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
