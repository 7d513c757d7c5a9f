"""``lumbardx reads-from-predictions PREDS.json DATA --reader AI --out DIR``.

Turns a model's predictions on a labelled set into the READS and TRUTH tables of a reader
study (disc level; rules in :mod:`lumbardx.clinical.reads`), so that the model can be compared
with human readers by ``lumbardx reader-study``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from lumbardx.clinical.reads import reads_from_predictions as build_reads
from lumbardx.clinical.reads import write_reads
from lumbardx.clinical.thresholds import DEFAULT_THRESHOLDS, load_thresholds
from lumbardx.data.errors import InputError


def reads_from_predictions(
    preds: Path = typer.Argument(..., help="Predictions JSON (COCO style: images, categories, "
                                 "annotations with bbox [x,y,w,h] px and score)."),
    data: Path = typer.Argument(..., help="Labelled dataset folder (YOLO, VOC or COCO)."),
    reader: str = typer.Option("AI", "--reader", help="Reader name written in reads.csv."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for reads.csv and truth.csv."),
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help="Per-class thresholds JSON chosen on validation data "
        "(lumbardx.clinical.thresholds); default 0.25 for every class."),
) -> None:
    """Write reads.csv (reader,case,site,call) and truth.csv (case,site,truth) per disc."""
    console = Console(stderr=True)
    try:
        thr = load_thresholds(thresholds) if thresholds is not None else dict(DEFAULT_THRESHOLDS)
        result = build_reads(preds, data, reader=reader, thresholds=thr)
    except InputError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    for problem in result.problems:
        console.print(f"[yellow]problem:[/yellow] {problem}")
    for line in result.skipped:
        console.print(f"skipped: {line}")
    if not result.reads:
        console.print("[red]error:[/red] no disc could be read (see the messages above)")
        raise typer.Exit(1)
    reads_path, truth_path = write_reads(result, out)
    positive = sum(r["truth"] != "normal" for r in result.truth)
    console.print(
        f"{result.images} images, {len(result.truth)} discs ({positive} diseased); "
        f"thresholds {', '.join(f'{k} {v:.3g}' for k, v in thr.items())}; "
        f"{result.unmatched_predictions} predicted discs matched no reference disc")
    console.print(f"wrote {reads_path} and {truth_path}")
