"""``lumbardx data ...``: check, convert and split annotated datasets."""

from __future__ import annotations

import typer

from lumbardx.cli.check import check
from lumbardx.cli.convert import convert
from lumbardx.cli.folds import folds

app = typer.Typer(no_args_is_help=True, help="Check, convert and split annotated datasets.")
app.command("check", help="List images, patients, boxes per class and every problem.")(check)
app.command("convert", help="Convert between Pascal VOC, YOLO txt and COCO JSON.")(convert)
app.command("folds", help="Patient-grouped, class-stratified cross-validation folds.")(folds)
