"""``lumbardx data folds DIR --out folds.csv``: patient-grouped, class-stratified folds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lumbardx.data.classes import CLASSES_HELP
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.data.folds import FoldAssignment, make_folds, write_folds_csv


def fold_table(dataset: LumbarDataset, assign: FoldAssignment) -> Table:
    """Rich table: per fold the patients, images and boxes per class (and the totals)."""
    table = Table("fold", "patients", "images", *dataset.class_names,
                  title=f"{assign.k} folds (seed {assign.seed}), grouped by patient")
    folds = np.asarray(assign.folds)
    n_classes = len(dataset.class_names)
    for f in [*range(assign.k), None]:
        idx = np.arange(len(dataset)) if f is None else np.flatnonzero(folds == f)
        recs = [dataset.records[i] for i in idx]
        counts = np.zeros(n_classes, dtype=np.int64)
        for rec in recs:
            counts += np.bincount(rec.labels, minlength=n_classes)
        table.add_row(
            "all" if f is None else str(f),
            f"{len({r.patient for r in recs}):,}",
            f"{len(recs):,}",
            *(f"{int(c):,}" for c in counts),
            style="bold" if f is None else None,
        )
    return table


def folds(
    root: Path = typer.Argument(..., help="Dataset folder (VOC, YOLO or COCO layout)."),
    k: int = typer.Option(5, "-k", help="Number of folds."),
    out: Path = typer.Option(..., "--out", help="CSV to write (image, patient, fold 0-based)."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed gives the same folds."),
    classes: str = typer.Option("study", "--classes", help=CLASSES_HELP),
    patients: Path | None = typer.Option(
        None,
        "--patients",
        help="Patients CSV (image, patient[, sequence]); default DIR/patients.csv.",
    ),
    patient_pattern: str | None = typer.Option(
        None, "--patient-pattern", help="Regex with a group (?P<patient>...) on file names."
    ),
) -> None:
    """Split DIR into K folds: no patient in two folds, classes balanced across folds.

    Exit code 1 when the dataset cannot be read or split; images left out of the dataset
    (unusable annotations) are listed and have no fold.
    """
    console = Console()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = LumbarDataset(root, classes=classes, patients=patients,
                                    patient_pattern=patient_pattern)
        assign = make_folds(dataset, k=k, seed=seed)
    except (InputError, ValueError) as err:
        console.print("[bold red]error:[/] ", end="")
        console.print(str(err), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    for w in caught:
        console.print(Text.assemble(("warning: ", "yellow"), str(w.message)))
    for problem in dataset.problems:
        console.print(Text.assemble(("problem: ", "yellow"), str(problem)))
    write_folds_csv(assign, out)
    console.print(fold_table(dataset, assign))
    for message in assign.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), message))
    console.print(f"Folds written to {out}", markup=False, highlight=False)
