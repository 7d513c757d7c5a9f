"""``lumbardx data check DIR``: images, patients, boxes per class and every problem of a dataset.

Everything that comes from the dataset (paths, class and sequence names, problem messages) is
printed through :func:`printable`: as plain text, never as Rich markup, with control characters
and bytes that are not UTF-8 shown as escapes, so that a hostile file name or class name can
neither crash the output nor rewrite the terminal.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lumbardx.data.check import CheckReport, check_dataset
from lumbardx.data.errors import InputError


def _escape(char: str) -> str:
    """A control character or lone surrogate as an escape; a surrogate that stands for a byte of
    a non-UTF-8 file name (Python's ``surrogateescape``) is shown as that byte, ``\\xff``."""
    if 0xDC80 <= ord(char) <= 0xDCFF:
        return f"\\x{ord(char) - 0xDC00:02x}"
    return ascii(char)[1:-1]


def printable(text: object) -> Text:
    """``str(text)`` as Rich text to print literally: no markup, and control characters (escape
    sequences, line breaks) and text that is not valid Unicode written as escapes."""
    return Text("".join(
        _escape(c) if unicodedata.category(c) in ("Cc", "Cs") else c for c in str(text)
    ))


def problem_lines(err: Exception) -> list[Text]:
    """``"  - problem"`` lines (:func:`printable`) for every problem of a refused file, when
    the error holds several (:attr:`InputError.problems`), so that they are fixed in one round;
    none otherwise (the message already names the one)."""
    problems = err.problems if isinstance(err, InputError) else []
    return [Text("  - ") + printable(p) for p in problems] if len(problems) > 1 else []


def report_tables(report: CheckReport) -> list[Table]:
    """Rich tables: summary, boxes per class, image sizes, sequences, problems by kind and the
    full problem list (one row per problem, with its file)."""
    summary = Table("", "", title=printable(f"Dataset {report.root}"), show_header=False)
    summary.add_row("annotation format", report.format)
    summary.add_row("images", f"{report.images:,}")
    grouping = {"csv": "from patients table", "pattern": "from file names", "none": "unknown"}
    summary.add_row("patients", f"{report.patients:,} ({grouping[report.patient_source]})")
    summary.add_row("boxes", f"{report.boxes:,}")
    summary.add_row("errors / warnings", f"{len(report.errors)} / {len(report.warnings)}")
    tables = [summary]

    classes = Table("class", "boxes", title="Boxes per class")
    for name, n in report.boxes_per_class.items():
        classes.add_row(printable(name), f"{n:,}")
    for name, n in report.dropped_per_class.items():
        dropped = printable(f"{name} (dropped by the class mapping)")
        dropped.stylize("dim")
        classes.add_row(dropped, f"{n:,}")
    tables.append(classes)

    sizes = Table("size (W x H, pixels)", "images", title="Image sizes")
    for size, n in report.image_sizes.items():
        sizes.add_row(size, f"{n:,}")
    tables.append(sizes)

    if report.sequences:
        sequences = Table("sequence", "images", title="Sequences")
        for name, n in sorted(report.sequences.items()):
            sequences.add_row(printable(name), f"{n:,}")
        tables.append(sequences)

    if report.problems:
        kinds = Table("kind", "severity", "count", title="Problems by kind")
        severity = {p.kind: p.severity for p in report.problems if p.severity == "warning"}
        severity.update({p.kind: p.severity for p in report.problems if p.severity == "error"})
        for kind, n in sorted(report.problems_by_kind().items()):
            style = "red" if severity[kind] == "error" else "yellow"
            kinds.add_row(kind, Text(severity[kind], style=style), str(n))
        tables.append(kinds)
        listing = Table("severity", "kind", "file", "problem", title="Problems")
        for p in report.problems:
            style = "red" if p.severity == "error" else "yellow"
            where = "" if p.path is None else _relative(p.path, report.root)
            listing.add_row(Text(p.severity, style=style), p.kind, printable(where),
                            printable(p.message))
        tables.append(listing)
    return tables


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def check(
    root: Path = typer.Argument(..., help="Dataset folder (VOC, YOLO or COCO layout)."),
    classes: str = typer.Option(
        "all", "--classes", help="Class mapping: all|study|study+ddd|study+ddd-ignore."),
    patients: Path | None = typer.Option(
        None,
        "--patients",
        help="Patients CSV (image, patient[, sequence]); default DIR/patients.csv.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    patient_pattern: str | None = typer.Option(
        None, "--patient-pattern", help="Regex with a group (?P<patient>...) on file names."
    ),
    allow_warnings: bool = typer.Option(
        False, "--allow-warnings", help="Exit 0 when only warnings (e.g. empty labels) remain."
    ),
) -> None:
    """List images, patients, boxes per class, image sizes and every problem with its file.

    Every image is decoded, so truncated or corrupt files are found. Exit code 0 when the
    dataset is clean, 1 when any problem was found (with --allow-warnings, only errors count:
    an empty label can be a legitimate "no findings" image) or the folder cannot be checked.
    """
    console = Console()
    try:
        report = check_dataset(root, classes=classes, patients=patients,
                               patient_pattern=patient_pattern)
    except (InputError, ValueError) as err:
        console.print("[bold red]error:[/] ", end="")
        console.print(printable(err), highlight=False, soft_wrap=True)
        for line in problem_lines(err):
            console.print(line, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    for table in report_tables(report):
        console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        console.print(printable(f"Report written to {json_out}"), highlight=False)
    failed = bool(report.errors) or (not allow_warnings and bool(report.warnings))
    if failed:
        console.print(f"[bold red]{len(report.errors)} error(s), {len(report.warnings)} "
                      "warning(s)[/]")
        raise typer.Exit(code=1)
    verdict = "no problems" if not report.problems else f"{len(report.warnings)} warning(s)"
    console.print(f"[bold green]OK[/]: {verdict}")
