"""``lumbardx data convert SRC DST --to voc|yolo|coco``: convert an annotated dataset.

Paths, class names and problems are printed through :func:`lumbardx.cli.check.printable`
(literal text, control characters and non-UTF-8 bytes escaped), one problem per line.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lumbardx.cli.check import printable
from lumbardx.data.convert import FORMATS, ConvertSummary, convert_dataset
from lumbardx.data.errors import InputError

MAX_PROBLEMS_SHOWN = 50


def _print_summary(summary: ConvertSummary, console: Console) -> None:
    console.print(
        Text.assemble(
            "Converted ", (summary.source_format, "bold"), " -> ", (summary.target_format, "bold"),
            " into ", printable(summary.dst),
            f": {summary.images} images, {summary.labelled} with labels, "
            f"{sum(summary.boxes_per_class.values())} boxes.",
        ),
        soft_wrap=True,
    )
    table = Table("class", "boxes", title="Boxes per class")
    for name in summary.class_names:
        table.add_row(printable(name), str(summary.boxes_per_class.get(name, 0)))
    console.print(table)
    if summary.problems:
        console.print(f"[bold red]{len(summary.problems)} problem(s):[/]")
        for problem in summary.problems[:MAX_PROBLEMS_SHOWN]:
            console.print(printable(f"  {problem}"), highlight=False, soft_wrap=True)
        if len(summary.problems) > MAX_PROBLEMS_SHOWN:
            console.print(f"  ... and {len(summary.problems) - MAX_PROBLEMS_SHOWN} more")


def convert(
    src: Path = typer.Argument(..., help="Dataset folder to read (VOC, YOLO or COCO layout)."),
    dst: Path = typer.Argument(..., help="New dataset folder to write (must be empty)."),
    to: str = typer.Option(..., "--to", help="voc|yolo|coco"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a non-empty DST, replacing files of the same name."
    ),
) -> None:
    """Convert SRC to another annotation format in DST; images are copied to DST/images.

    Exit code 0 when every image converted, 1 when some file had a problem (listed) or the
    conversion could not start.
    """
    if to not in FORMATS:
        raise typer.BadParameter(f"{to!r}: use one of {', '.join(FORMATS)}", param_hint="--to")
    console = Console()
    try:
        summary = convert_dataset(src, dst, to, overwrite=overwrite)
    except InputError as e:
        console.print("[bold red]error:[/] ", end="")
        console.print(printable(e), highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    _print_summary(summary, console)
    if summary.problems:
        raise typer.Exit(code=1)
