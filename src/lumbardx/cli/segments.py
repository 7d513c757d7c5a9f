"""``lumbardx segments crossval | train | ensemble | stack | threshold``: the segment reader
(:mod:`lumbardx.models.segment_reader`, stage :mod:`lumbardx.stages.segments`).

``crossval`` trains the reader on k-1 patient-grouped folds and scores the held-out fold, for
every fold (out-of-fold predictions and weights under ``--out``; resumable fold by fold);
``train`` trains it on the whole dataset and writes the checkpoint diagnosis loads, with the
calibration, decision thresholds and level-check cut taken from a finished ``crossval``
folder (:mod:`lumbardx.engine.segment_release`); ``ensemble`` writes several trained readers
as one (:class:`~lumbardx.models.segment_reader.SegmentEnsemble`), released from their
cross-validations' averaged out-of-fold predictions (``bench/segment_ensemble.py``); ``stack``
adds stacked disc calls (:mod:`lumbardx.engine.stacking`) fitted by
``bench/segment_combined.py --stack-release`` to a checkpoint; ``threshold`` sets one
finding's decision threshold (e.g. the F1 cut of the discs diagnosis reads,
``bench/extra_findings.py``) and records the change and its evidence in the checkpoint.

Exit codes: 0 done; 2 nothing done (unusable input).
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from lumbardx.cli.train import _input_errors

app = typer.Typer(no_args_is_help=True)

_EPOCHS = typer.Option(25, "--epochs", min=1, help="Training epochs.")
_SEED = typer.Option(0, "--seed", help="Random seed.")
_THREADS = typer.Option(None, "--threads", min=1, help="CPU threads (torch.set_num_threads).")
_SLIP_REPEAT = typer.Option(1, "--slip-repeat", min=1, help="Repeat sampling: an image with an "
                            "annotated slip is drawn this many times an epoch (measured: no "
                            "gain alone, docs/segments.md).")


def _items(data: Path, console: Console) -> list:
    """Every image of ``data`` (all classes, T1/T2 partners paired) as segment items."""
    from lumbardx.data.dataset import LumbarDataset
    from lumbardx.data.pairs import SequencePairs
    from lumbardx.engine.segment_training import item_from_sample

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(data, classes="all", cache=True)
    pairs = SequencePairs(ds)
    items = [item_from_sample(pairs[i], ds.class_names) for i in range(len(ds))]
    n_discs = sum(int(it.frames.shape[0]) for it in items)
    console.print(f"{len(items)} images ({pairs.paired} with a T1/T2 partner), {n_discs} discs")
    return items


@app.command("crossval")
def crossval(
    data: Path = typer.Argument(..., help="Annotated dataset (all classes are used)."),
    out: Path = typer.Option(..., "--out", help="Folder for the folds' weights and "
                             "predictions (resumed when present)."),
    folds_csv: Path = typer.Option(..., "--folds-csv", help="Patient-grouped folds "
                                   "(lumbardx data folds)."),
    folds: str = typer.Option("", "--folds", help="Comma-separated folds to run (default all)."),
    epochs: int = _EPOCHS,
    seed: int = _SEED,
    threads: int | None = _THREADS,
    slip_repeat: int = _SLIP_REPEAT,
) -> None:
    """Cross-validate the segment reader; writes OUT/summary.json."""
    import torch

    from lumbardx.engine.segment_crossval import run_fold, summarise
    from lumbardx.engine.segment_training import SegmentTraining
    from lumbardx.io import atomic_write_text

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    with _input_errors(console):
        items = _items(data, console)
        with folds_csv.open(newline="") as fh:
            assignment = {r["image"]: int(r["fold"]) for r in csv.DictReader(fh)}
        ks = sorted(set(assignment.values())) if not folds else \
            [int(x) for x in folds.split(",")]
        cfg = replace(SegmentTraining(), epochs=epochs, seed=seed, slip_repeat=slip_repeat)
        for k in ks:
            run_fold(items, assignment, k, cfg, out,
                     log=lambda m: console.print(m, markup=False, highlight=False))
        summary = summarise(out, items, assignment)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float))
    for key in ("image_auc_spondylolisthesis", "auc_spondylolisthesis", "ap50_spondylolisthesis",
                "auc_herniation", "auc_stenosis", "auc_degeneration", "auc_level_check"):
        m = summary["mean"].get(key)
        if m:
            console.print(f"{key:32s} {m['mean']:.3f} (SD {m['sd']:.3f}, n {m['n']})")
    console.print(f"summary: {out / 'summary.json'}")


@app.command("train")
def train(
    data: Path = typer.Argument(..., help="Annotated dataset (all classes are used)."),
    out: Path = typer.Option(..., "--out", help="Segment reader checkpoint to write."),
    crossval_dir: Path = typer.Option(..., "--crossval", help="A finished 'lumbardx segments "
                                      "crossval' folder: calibration, thresholds, level cut."),
    epochs: int = _EPOCHS,
    seed: int = _SEED,
    threads: int | None = _THREADS,
    slip_repeat: int = _SLIP_REPEAT,
    tag: str = typer.Option("segment-reader", "--tag", help="Version tag shown in reports."),
    training_data: str = typer.Option("", "--training-data", help="What it was trained on."),
    slip_call: str = typer.Option("detector", "--slip-call", help="Who calls "
                                  "spondylolisthesis in diagnosis: detector (the reader's "
                                  "probability is reported beside it) or reader."),
    max_unflagged: float = typer.Option(0.01, "--max-unflagged", min=0.0, max=1.0,
                                        help="Level cut: the share of the cross-validation's "
                                        "simulated miscounts allowed to pass unflagged."),
    slip_measure: str = typer.Option("corners", "--slip-measure", help="slip_percent from the "
                                     "vertebral corners (corners) or the reader's offset "
                                     "(reader)."),
) -> None:
    """Train the segment reader on all of DATA and write a checkpoint for diagnosis."""
    import torch

    from lumbardx.engine.segment_training import (SegmentTraining, train_segment_reader,
                                                  training_settings)

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    with _input_errors(console):
        settings, templates = _release_settings(console, crossval_dir, slip_call, slip_measure,
                                                max_unflagged)
        items = _items(data, console)
        cfg = replace(SegmentTraining(), epochs=epochs, seed=seed, slip_repeat=slip_repeat)
        model = train_segment_reader(
            items, cfg, log=lambda m: console.print(m, markup=False, highlight=False))
        _release(model, settings, templates, out, tag=tag, slip_call=slip_call,
                 slip_measure=slip_measure, training_data=training_data or str(data.name),
                 training=training_settings(cfg))
    console.print(f"thresholds {settings['thresholds']}, level cut {settings['level_cut']:.3f}")
    console.print(f"written: {out}")


def _release_settings(console: Console, crossval_dir: Path, slip_call: str, slip_measure: str,
                      max_unflagged: float) -> tuple[dict[str, Any], list]:
    """The release settings (:func:`lumbardx.engine.segment_release.release_settings`) and the
    folds' slip-box templates of a finished cross-validation folder; exits with code 2 on
    unknown ``--slip-call`` / ``--slip-measure`` values or a folder without predictions."""
    from lumbardx.engine.segment_release import load_out_of_fold, release_settings

    if slip_call not in ("detector", "reader") or slip_measure not in ("corners", "reader"):
        console.print("[red]error:[/red] --slip-call detector|reader, --slip-measure "
                      "corners|reader")
        raise typer.Exit(2)
    try:
        rows, checks, templates = load_out_of_fold(crossval_dir)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return release_settings(rows, checks, max_unflagged=max_unflagged), templates


def _release(model: Any, settings: dict[str, Any], templates: list, out: Path, *,
             training: Any, **meta: str) -> None:
    """Write ``model`` (a reader or an ensemble) with its release settings
    (:func:`lumbardx.engine.segment_release.release_settings`), the slip-box template (median
    of the folds') and ``meta`` (tag, slip_call, slip_measure, training_data) as the
    checkpoint diagnosis loads."""
    import numpy as np

    from lumbardx.engine.checkpoint import save_checkpoint

    model.config.calibration = settings["calibration"]
    ck = model.checkpoint()
    ck.update({"thresholds": settings["thresholds"],
               "slip_box": [float(v) for v in np.median(np.array(templates), axis=0)],
               "level_cut": settings["level_cut"], "training": training, **meta,
               "evidence": {k: v for k, v in settings.items()
                            if k not in ("calibration", "thresholds", "level_cut")}})
    save_checkpoint(ck, out)


def _segment_checkpoint(path: Path) -> tuple[dict[str, Any], Any]:
    """The raw checkpoint dictionary of a segment reader (or ensemble) file and the model it
    holds.

    Raises:
        InputError: the file cannot be read as one.
    """
    import torch

    from lumbardx.data.errors import InputError
    from lumbardx.models.segment_reader import load_segment_reader

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return raw, load_segment_reader(raw)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a segment reader checkpoint ({exc})") from exc


@app.command("ensemble")
def ensemble(
    members: list[Path] = typer.Argument(..., help="Segment reader checkpoints (lumbardx "
                                         "segments train), one per member."),
    out: Path = typer.Option(..., "--out", help="Ensemble checkpoint to write."),
    crossval_dir: Path = typer.Option(..., "--crossval", help="The members' cross-validations "
                                      "averaged (bench/segment_ensemble.py --out): "
                                      "calibration, thresholds, level cut."),
    tag: str = typer.Option("segment-reader-ensemble", "--tag", help="Version tag shown in "
                            "reports."),
    slip_call: str = typer.Option("detector", "--slip-call", help="detector|reader."),
    slip_measure: str = typer.Option("corners", "--slip-measure", help="corners|reader."),
    max_unflagged: float = typer.Option(0.01, "--max-unflagged", min=0.0, max=1.0,
                                        help="Level cut: share of simulated miscounts left "
                                        "unflagged."),
) -> None:
    """Read with several trained segment readers as one (their logits averaged) and write the
    checkpoint diagnosis loads, released from the averaged out-of-fold predictions."""

    from lumbardx.data.errors import InputError
    from lumbardx.models.segment_reader import SegmentEnsemble, SegmentReader

    console = Console()
    with _input_errors(console):
        settings, templates = _release_settings(console, crossval_dir, slip_call, slip_measure,
                                                max_unflagged)
        readers, trainings = [], []
        for path in members:
            raw, reader = _segment_checkpoint(path)
            if not isinstance(reader, SegmentReader):
                raise InputError(path, "is an ensemble already: give its members")
            readers.append(reader)
            trainings.append(raw.get("training"))
        try:
            model = SegmentEnsemble(readers)
        except ValueError as exc:
            raise InputError(None, str(exc)) from exc
        _release(model, settings, templates, out, tag=tag, slip_call=slip_call,
                 slip_measure=slip_measure, training_data=str(raw.get("training_data", "")),
                 training=trainings)
    console.print(f"{len(readers)} members; thresholds {settings['thresholds']}, "
                  f"level cut {settings['level_cut']:.3f}")
    console.print(f"written: {out}")


@app.command("stack")
def stack(
    weights: Path = typer.Argument(..., help="A segment checkpoint (segments train / ensemble)."),
    calls: Path = typer.Option(..., "--calls", help="Stacked disc calls as JSON "
                               "(bench/segment_combined.py --stack-release)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (may be WEIGHTS)."),
) -> None:
    """Add stacked disc calls to a segment checkpoint: diagnosis then calls herniation and
    spondylolisthesis per disc from the detector's scores and the reader's logits together
    (lumbardx.stages.stacked; findings.json segment_reader.disc_call = "stacked")."""

    from lumbardx.data.errors import InputError
    from lumbardx.engine.checkpoint import save_checkpoint
    from lumbardx.engine.stacking import StackedCalls

    console = Console()
    with _input_errors(console):
        raw, _ = _segment_checkpoint(weights)
        try:
            fitted = StackedCalls.from_dict(json.loads(calls.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(calls, f"not stacked disc calls ({exc})") from exc
        raw["stacked"] = fitted.to_dict()
        tag = str(raw.get("tag", "segment-reader"))
        raw["tag"] = tag if tag.endswith("+stacked") else tag + "+stacked"
        save_checkpoint(raw, out)
    console.print(f"stacked calls for {', '.join(fitted.weights)}; thresholds "
                  + ", ".join(f"{k} {v:.3f}" for k, v in fitted.thresholds.items()))
    console.print(f"written: {out}")


@app.command("threshold")
def threshold(
    weights: Path = typer.Argument(..., help="A segment checkpoint (segments train / ensemble)."),
    finding: str = typer.Option(..., "--finding", help="The finding whose threshold is set "
                                "(one the checkpoint calls: spondylolisthesis, stenosis, "
                                "degeneration)."),
    value: float = typer.Option(..., "--value", min=0.0, max=1.0, help="The new threshold "
                                "(calibrated probability)."),
    evidence: str = typer.Option(..., "--evidence", help="Where the value comes from (kept in "
                                 "the checkpoint and shown by this command)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (may be WEIGHTS)."),
    tag: str | None = typer.Option(None, "--tag", help="New version tag shown in reports "
                                   "(default: the checkpoint's own)."),
) -> None:
    """Set one finding's decision threshold in a segment checkpoint; the old value, the new
    one and the evidence are appended to the checkpoint's ``evidence.threshold_changes``."""

    from lumbardx.data.errors import InputError
    from lumbardx.engine.checkpoint import save_checkpoint

    console = Console()
    with _input_errors(console):
        raw, _ = _segment_checkpoint(weights)
        thresholds = dict(raw.get("thresholds") or {})
        if finding not in thresholds:
            raise InputError(weights, f"has no threshold for {finding!r} (it has "
                             f"{', '.join(sorted(thresholds)) or 'none'})")
        old = float(thresholds[finding])
        thresholds[finding] = float(value)
        raw["thresholds"] = thresholds
        raw["evidence"] = dict(raw.get("evidence") or {})
        raw["evidence"]["threshold_changes"] = [
            *raw["evidence"].get("threshold_changes", []),
            {"finding": finding, "from": old, "to": float(value), "evidence": evidence}]
        if tag:
            raw["tag"] = tag
        save_checkpoint(raw, out)
    console.print(f"{finding}: threshold {old:.3f} -> {value:.3f} ({evidence})")
    console.print(f"written: {out}")
