"""Training progress (Rich) and the per-epoch ``results.csv``."""

from __future__ import annotations

import csv
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
    """Appends one row per epoch to ``results.csv``; columns are fixed by the first row.

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

    def truncate_after(self, epoch: int) -> None:
        """Keep only rows with ``epoch <= epoch``."""
        header, rows = self._read()
        if not header:
            return
        keep = [r for r in rows if int(r["epoch"]) <= epoch]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)

    def append(self, row: dict[str, Any]) -> None:
        """Append ``row`` (new keys after the first row are ignored, missing ones empty)."""
        header, _ = self._read()
        new = not header
        if new:
            header = list(row)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in header})

    def rows(self) -> list[dict[str, str]]:
        """All rows as strings."""
        return self._read()[1]
