"""``lumbardx reader-study READS.csv --truth TRUTH.csv``: the AI against human readers.

Per-reader sensitivity, specificity and accuracy with Wilson CIs, exact McNemar tests of the
AI against each reader (Holm-adjusted), Cochran's Q, patient-bootstrap CIs of the differences,
the unpaired chi-square of published tables, kappa agreement, and a forest plot. Table
formats and the label vocabulary: :mod:`lumbardx.clinical.readerstudy`.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lumbardx.cli.check import problem_lines
from lumbardx.clinical.forest import display_name
from lumbardx.clinical.readerstudy_analysis import ReaderStudyResult, run_reader_study
from lumbardx.clinical.readerstudy_report import write_reader_study
from lumbardx.data.errors import InputError


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f}%"


def _p(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def summary_tables(result: ReaderStudyResult) -> list[Table]:
    """Rich tables: per-reader performance, then (with an AI) the paired comparisons."""
    perf = Table(
        title=f"Reader study: {result.n_cases} cases, {result.n_positive} diseased / "
        f"{result.n_negative} normal discs"
    )
    for col in ("Reader", "Sensitivity", "Specificity", "Accuracy", "Kappa", "Time/case (s)"):
        perf.add_column(col, justify="left" if col == "Reader" else "right")
    for r in result.readers:
        cells = [
            f"{_pct(p.estimate)} {p.fraction}" for p in (r.sensitivity, r.specificity, r.accuracy)
        ]
        time = "-" if r.mean_seconds_per_case is None else f"{r.mean_seconds_per_case:.1f}"
        kappa = "-" if not math.isfinite(r.kappa.kappa) else f"{r.kappa.kappa:.3f}"
        perf.add_row(
            display_name(r.reader, r.is_ai),
            *cells,
            kappa,
            time,
            style="bold red" if r.is_ai else None,
        )
    tables = [perf]
    if result.comparisons:
        comp = Table(title=f"{result.ai} minus each reader (95% patient-bootstrap CI)")
        comp.add_column("Reader")
        comp.add_column("Metric", no_wrap=True)
        comp.add_column("Diff. (95% CI), points", justify="right", no_wrap=True)
        for col in ("McNemar p", "Holm p"):
            comp.add_column(col, justify="right")
        for c in result.comparisons:
            ci = (
                ""
                if not c.boot_resamples
                else f" ({100 * c.boot_ci_low:+.1f}, {100 * c.boot_ci_high:+.1f})"
            )
            comp.add_row(
                c.reader, c.metric, f"{100 * c.difference:+.1f}{ci}", _p(c.mcnemar_p), _p(c.holm_p)
            )
        tables.append(comp)
    return tables


def reader_study(
    reads: Path = typer.Argument(..., help="READS.csv: reader,case,site,call[,seconds]."),
    truth: Path = typer.Option(
        ..., "--truth", help="TRUTH.csv: case,site,truth (reference standard)."
    ),
    ai: str | None = typer.Option(
        None, "--ai", help="The AI reader's name (default: a reader named AI)."
    ),
    out: Path = typer.Option(Path("reader_study"), "--out", help="Folder for the report files."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the patient bootstrap."),
    bootstrap: int = typer.Option(
        2000, "--bootstrap", min=0, help="Bootstrap resamples (0: none)."
    ),
) -> None:
    """Compare the AI with human readers on the same discs (paired tests, patient bootstrap).

    Labels are normal/0 (negative) or 1/a finding name (positive), case-insensitive. Writes
    reader_study.md, reader_study.csv, comparisons.csv, reader_study.json and forest.png.
    """
    console = Console()
    try:
        result = run_reader_study(reads, truth, ai=ai, seed=seed, n_boot=bootstrap)
    except InputError as exc:
        err = Console(stderr=True)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        for line in problem_lines(exc):
            err.print(line, highlight=False)
        raise typer.Exit(code=2) from None
    paths = write_reader_study(result, out)
    for table in summary_tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"Wrote {', '.join(p.name for p in paths.values())} to {out}")
