"""Training progress (Rich) and the per-epoch ``results.csv``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lumbardx.io import atomic_write_text


def make_progress(console: Console | None = None, enabled: bool = True) -> Progress:
    """A Rich progress bar: epoch, bar, batches done, elapsed, ETA and the running losses."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


def format_losses(losses: dict[str, float]) -> str:
    """``"loss 1.234 box 0.1 ..."`` for the progress bar."""
    return " ".join(f"{k} {v:.4f}" for k, v in losses.items())


class ResultsCsv:
    """One row per epoch in ``results.csv``. The columns are those of the rows written, in
    order of first appearance: a row with new columns (validation metrics on the first epoch
    evaluated, when ``eval_interval`` > 1) widens the file, earlier rows leave them empty.
    Every write replaces the file atomically (:func:`lumbardx.io.atomic_write_text`).

    On resume, :meth:`truncate_after` drops rows of epochs the checkpoint did not reach, so
    an interrupted epoch is not listed twice.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        if not self.path.is_file():
            return [], []
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _write(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        out = io.StringIO(newline="")
        w = csv.DictWriter(out, fieldnames=header)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in header} for r in rows)
        atomic_write_text(self.path, out.getvalue())

    def truncate_after(self, epoch: int) -> None:
        """Keep only rows with ``epoch <= epoch``."""
        header, rows = self._read()
        if not header:
            return
        self._write(header, [r for r in rows if int(r["epoch"]) <= epoch])

    def append(self, row: dict[str, Any]) -> None:
        """Append ``row``; keys not yet columns become columns (earlier rows empty there),
        columns the row lacks are left empty."""
        header, rows = self._read()
        header += [k for k in row if k not in header]
        self._write(header, [*rows, row])

    def rows(self) -> list[dict[str, str]]:
        """All rows as strings."""
        return self._read()[1]
