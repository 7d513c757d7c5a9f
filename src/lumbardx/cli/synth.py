"""``lumbardx synth OUT``: generate synthetic sagittal lumbar MRI with exact ground truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lumbardx.data.errors import InputError


def synth(
    out: Path = typer.Argument(..., help="Output folder (created if missing)."),
    n: int = typer.Option(8, "--n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Master seed; the same seed gives identical files."),
    dicom: bool = typer.Option(False, "--dicom",
                               help="Also write each case as a sagittal MR series."),
    t1: bool = typer.Option(False, "--t1", help="With --dicom, write each study as a T2 series "
                            "and a co-registered T1 series (STUDY/t2/, STUDY/t1/)."),
    p_listhesis: float = typer.Option(0.2, "--p-listhesis", min=0.0, max=1.0,
                                      help="Probability of a spondylolisthesis per case."),
    p_herniation: float = typer.Option(0.22, "--p-herniation", min=0.0, max=1.0,
                                       help="Base probability of a herniation per disc "
                                       "(times a level weight)."),
    p_sacrum_visible: float = typer.Option(0.85, "--p-sacrum-visible", min=0.0, max=1.0,
                                           help="Probability that the sacrum is in view."),
) -> None:
    """Generate synthetic T2 mid-sagittal lumbar spine images with boxes and exact truth."""
    from lumbardx.synth import SynthConfig, generate_dataset

    console = Console()
    cfg = SynthConfig(p_listhesis=p_listhesis, p_herniation=p_herniation,
                      p_sacrum_visible=p_sacrum_visible)
    counts: Counter[str] = Counter()
    grades: Counter[str] = Counter()
    failures: list[tuple[str, Exception]] = []
    with Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("cases", total=n)

        def done(_: int, case: object) -> None:
            counts.update(b.label for b in case.annotation.boxes)  # type: ignore[attr-defined]
            truth = case.truth  # type: ignore[attr-defined]
            grades.update(li["grade"] for li in truth["listheses"])
            bar.advance(task)

        def failed(name: str, err: Exception) -> None:
            failures.append((name, err))
            console.print(f"[red]{name}: {err}")
            bar.advance(task)

        try:
            if t1 and not dicom:
                raise InputError(None, "--t1 needs --dicom (it adds a T1 series to each DICOM "
                                       "study)")
            written = generate_dataset(out, n, seed, dicom=dicom, config=cfg, t1=t1,
                                       on_case=done, on_error=failed)
        except InputError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
    table = Table(title=f"{len(written)} synthetic cases in {out}")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    for label in ("normal", "herniation", "spondylolisthesis"):
        table.add_row(label, str(counts[label]))
    console.print(table)
    if grades:
        console.print("Meyerding grades: " + ", ".join(f"{g}: {grades[g]}" for g in sorted(grades)))
    console.print(f"Index: {out / 'manifest.json'}, {out / 'ground_truth.csv'}")
    if failures:
        console.print(f"[red]{len(failures)} case(s) failed[/red]")
        raise typer.Exit(1)
