"""Training runs and k-fold cross-validation of detectors (the study's Table 1).

A *run* (:func:`train_and_evaluate`) builds a registered detector, re-fits the YOLOv5 anchors
to the training boxes (AutoAnchor, as ultralytics/yolov5 v7.0 ``train.py`` does by default),
trains it with :func:`lumbardx.engine.trainer.train` and evaluates a checkpoint on the
validation images with figures in ``<run>/eval``: the best epoch for a training run, the final
epoch for a cross-validation fold, whose held-out images must not choose the model. Re-fitted
anchors are buffers of the model, so ``last.pt`` / ``best.pt`` hold them with the weights;
``run.json`` records the settings, the anchors and the lumbardx version.

:func:`run_fold` is one cross-validation fold: train on the other folds, evaluate on ``fold``
and write ``result.json`` (the fold dict of :mod:`lumbardx.engine.table1`). :func:`crossval`
runs every (model, fold) -- in this process or in ``jobs`` worker processes -- and writes
Table 1. Layout of ``DIR``::

    folds.csv  crossval.json  table1.md  table1.csv  table1.json  pr_<model>.png
    <model>/fold<k>/{last.pt, best.pt, results.csv, run.json, result.json, eval/}

``folds.csv`` is written first (patient-grouped, class-stratified, :func:`make_folds`) and
reused on resume; a fold with ``result.json`` is finished and skipped on resume, a fold with
``last.pt`` continues from it.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbardx import __version__
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.data.folds import make_folds, read_folds_csv, split, write_folds_csv
from lumbardx.data.pairs import SequencePairs
from lumbardx.engine.checkpoint import (
    LoadedDetector,
    build_detector,
    check_model_name,
    load_checkpoint,
    load_weights,
    rebuild_detector,
    weights_from_checkpoint,
)
from lumbardx.engine.evaluate import EvalResult, evaluate
from lumbardx.engine.recipes import Recipe, recipe_for
from lumbardx.engine.table1 import ModelFolds, read_comparison, write_table1
from lumbardx.engine.trainer import TrainResult, train
from lumbardx.io import atomic_write_text
from lumbardx.models.detector import Detector

RESULT_FILE = "result.json"
#: A fold that failed leaves its traceback here; removed once the fold finishes.
ERROR_FILE = "error.txt"
RUN_FILE = "run.json"
SETTINGS_FILE = "crossval.json"
FOLDS_FILE = "folds.csv"
# Settings that must match when a cross-validation is resumed (the rest may change).
RESUME_KEYS = ("classes", "k", "seed", "recipe_overrides", "autoanchor", "eval_batch", "select")
# Recipe settings that leave the trained weights unchanged (how often the held-out fold is
# scored during training: for the log and best.pt only): with ``select="last"`` a resumed
# cross-validation may change them.
LOG_ONLY_SETTINGS = ("eval_interval",)
# Which weights of a run are evaluated: the final ones, or the best epoch on the evaluation set.
SELECT_CHOICES = ("last", "best")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_recipe(model_name: str, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """The model's recipe (:func:`recipe_for`, small-data defaults) with ``overrides``.

    ``image_size``, ``batch_size`` and ``epochs`` go through :func:`recipe_for` (which rescales
    LR milestones to the epochs); every other key is a :class:`Recipe` field (``augment``: a
    dict of :class:`AugmentConfig` fields, merged). Unknown keys raise :class:`InputError`.
    """
    check_model_name(model_name)
    o = dict(overrides or {})
    base = recipe_for(model_name, image_size=int(o.pop("image_size", 640)),
                      batch_size=o.pop("batch_size", None), epochs=o.pop("epochs", None))
    data = base.to_dict()
    if isinstance(o.get("augment"), Mapping):
        data["augment"] = {**data["augment"], **o.pop("augment")}
    try:
        return Recipe.from_dict({**data, **o})
    except (TypeError, ValueError) as err:
        raise InputError(None, f"recipe settings for {model_name}: {err}") from None


def load_dataset(data: str | Path, classes: str | Mapping[str, str] = "study",
                 patients: Path | None = None) -> LumbarDataset:
    """:class:`LumbarDataset` of ``data``, with an :class:`InputError` for a missing folder."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    ds = LumbarDataset(root, classes=classes, patients=patients)
    if len(ds) == 0:
        raise InputError(root, "no usable annotated image (run 'lumbardx data check')")
    return ds


def load_detector(weights: str | Path, device: str | torch.device = "cpu") -> LoadedDetector:
    """Rebuild the detector of a ``lumbardx train`` checkpoint (no training data needed):
    :func:`~lumbardx.engine.checkpoint.rebuild_detector` on ``resolve_device(device)``.

    Raises:
        InputError: naming the file when it is unreadable, lacks the model name or class names,
            or its weights do not fit the named model.
    """
    path = Path(weights)
    return rebuild_detector(load_checkpoint(path), path, resolve_device(device))


def fit_anchors(model: Detector, train_set: Sequence[Any], image_size: int,
                seed: int = 0) -> dict[str, Any] | None:
    """YOLOv5 AutoAnchor on the training boxes (v7.0 ``utils/autoanchor.py``); the anchors are
    replaced when the re-fit has a higher best possible recall. ``None`` for other models (the
    Paddle recipes keep their anchors) or without boxes. Returns the check as a dict."""
    anchors = getattr(model.postprocess, "anchors", None)
    if not model.name.startswith("yolov5") or not isinstance(anchors, torch.Tensor):
        return None
    from lumbardx.models.autoanchor import check_anchors, label_wh
    from lumbardx.models.yolov5 import set_anchors

    records = getattr(train_set, "records", None)
    if records is None:
        return None
    wh = label_wh([r.boxes for r in records], [(r.width, r.height) for r in records], image_size)
    if len(wh) == 0:
        return None
    check = check_anchors(wh, anchors, image_size=image_size, seed=seed)
    if check.refitted:
        set_anchors(model, check.anchors)
    return {"refitted": check.refitted, "bpr_before": check.bpr_before,
            "bpr_after": check.bpr_after, "anchors": check.anchors}


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def input_view(dataset: Any, sequence_pairs: bool) -> Any:
    """``dataset`` as a detector reads it: its T1/T2 pairs
    (:class:`~lumbardx.data.pairs.SequencePairs`) for a recipe with ``sequence_pairs``, else
    itself.

    Raises:
        InputError: pairs are asked for but no image has a partner (sequences unknown, or no
            patient with matching T1 and T2 boxes).
    """
    if dataset is None or not sequence_pairs or isinstance(dataset, SequencePairs):
        return dataset
    pairs = SequencePairs(dataset)
    if len(pairs) and pairs.paired == 0:
        raise InputError(getattr(dataset, "root", None),
                         "sequence_pairs: no image has a T1/T2 partner (the same patient's "
                         "other sequence with the same boxes); give a patients CSV with a "
                         "'sequence' column")
    return pairs


def train_and_evaluate(
    model_name: str,
    train_set: Any,
    val_set: Any | None,
    recipe: Recipe,
    out_dir: str | Path,
    device: str | torch.device = "auto",
    seed: int = 0,
    resume: bool = False,
    weights: Path | None = None,
    autoanchor: bool = True,
    eval_batch: int = 1,
    progress: bool = True,
    run_info: Mapping[str, Any] | None = None,
    select: str = "best",
) -> tuple[TrainResult, EvalResult | None]:
    """Train ``model_name`` on ``train_set`` into ``out_dir`` and evaluate it on ``val_set``
    (figures, metrics and COCO predictions in ``out_dir / "eval"``).

    ``select`` names the weights evaluated: ``"best"`` (``best.pt``, the epoch with the best
    ``val_set`` mAP@0.5: right when ``val_set`` is a validation set) or ``"last"`` (the final
    weights: right when ``val_set`` is a test fold, which must not choose the epoch).

    ``weights`` (a local checkpoint) are loaded where names and shapes match, before
    AutoAnchor (``TrainResult.weights_report`` says what was loaded). ``eval_batch`` is the
    batch of the final evaluation, so ``ms_per_image`` is the time per
    image at that batch (1: one image at a time, as a reading workstation runs it; the same
    for every model). ``resume`` continues from ``out_dir / "last.pt"``; without it a folder
    that already holds a run is refused. ``run_info`` is added to ``run.json``.

    Raises:
        InputError: unknown model, a folder holding another run, unusable data or weights.
    """
    if select not in SELECT_CHOICES:
        raise InputError(None, f"select must be one of {', '.join(SELECT_CHOICES)}, not "
                               f"{select!r}")
    out = Path(out_dir)
    if not resume and (out / "last.pt").exists():
        raise InputError(out, "already holds a training run (last.pt); resume it or choose "
                              "another output folder")
    if resume and not (out / "last.pt").is_file():
        raise InputError(out / "last.pt", "nothing to resume: checkpoint file not found")
    names = list(train_set.class_names)
    pairs = recipe.sequence_pairs
    train_set, val_set = input_view(train_set, pairs), input_view(val_set, pairs)
    torch.manual_seed(seed)  # the initial weights too are a function of the seed
    model = build_detector(model_name, len(names), recipe.image_size)
    report = None
    if weights is not None and not resume:  # before AutoAnchor, as YOLOv5 train.py
        report = load_weights(model, weights)
    anchors = None if resume or not autoanchor else fit_anchors(model, train_set,
                                                                recipe.image_size, seed)
    dev = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    info = {"model": model_name, "class_names": names, "image_size": recipe.image_size,
            "recipe": recipe.to_dict(), "seed": seed, "device": str(dev),
            "train_images": len(train_set), "val_images": len(val_set) if val_set else 0,
            "weights": str(weights) if weights else None, "lumbardx_version": __version__,
            **dict(run_info or {})}
    if not resume or not (out / RUN_FILE).is_file():
        info["autoanchor"] = anchors
        _write_json(out / RUN_FILE, info)
    res = train(model, train_set, val_set, recipe, out, dev, resume=resume, seed=seed,
                progress=progress, final_eval=False)
    res.weights_report = report
    if val_set is None:
        return res, None
    chosen = res.last if select == "last" else (res.best or res.last)
    model.load_state_dict(weights_from_checkpoint(load_checkpoint(chosen)))
    ev = evaluate(model, val_set, dev, recipe.image_size, eval_batch, names,
                  out_dir=out / "eval", pad_value=recipe.augment.pad_value)
    return res, ev


def _training_seconds(run_dir: Path) -> float:
    from lumbardx.engine.reporting import ResultsCsv

    total = 0.0
    for row in ResultsCsv(run_dir / "results.csv").rows():
        try:
            total += float(row.get("time_s") or 0.0)
        except ValueError:
            pass
    return total


def fold_scores(ev: EvalResult) -> dict[str, Any]:
    """The held-out scores a fold's ``result.json`` records from its evaluation: class names,
    AP@0.5 and AP@0.5:0.95 per class, mAPs, interpolation, ms per image, image and box counts,
    confusion matrix, the PR curve (``precision [101][K]``, ``recall [101]``) and skipped
    images."""
    d = ev.to_dict()
    return {key: d[key] for key in ("class_names", "ap50", "ap50_95", "map50", "map50_95",
                                    "interpolation", "ms_per_image", "num_images", "num_gt",
                                    "confusion")} | {
        "precision": ev.precision.tolist(), "recall": ev.recall.tolist(),
        "skipped": d["skipped"]}


def run_fold(
    data: str | Path,
    model_name: str,
    fold: int,
    folds_csv: str | Path,
    recipe_overrides: Mapping[str, Any] | None,
    out_dir: str | Path,
    device: str = "auto",
    seed: int = 0,
    *,
    classes: str | Mapping[str, str] = "study",
    patients: Path | None = None,
    resume: bool = True,
    autoanchor: bool = True,
    eval_batch: int = 1,
    progress: bool = True,
    select: str = "last",
) -> dict[str, Any]:
    """Train ``model_name`` on every fold but ``fold`` of ``folds_csv`` and evaluate on ``fold``.

    The held-out fold is a test fold: by default (``select="last"``) the final weights are
    scored, so nothing about the model is chosen on the data that scores it. The epoch that
    scored best on the fold (``best.pt``) is scored too and kept apart, under
    ``selected_on_fold``, as the optimistic figure a "best epoch" protocol would report.

    Args:
        out_dir: this fold's run folder (``crossval`` uses ``DIR/<model>/fold<k>``).
        recipe_overrides: see :func:`make_recipe` (e.g. ``{"epochs": 300, "image_size": 384}``).
        resume: return the stored result when ``out_dir`` holds ``result.json`` and continue
            from ``last.pt`` when it holds one; without it such a folder is refused.

    Returns:
        The fold dict written to ``out_dir / "result.json"``: ``model, fold, ap50 {class: AP},
        ap50_95, map50, map50_95, ms_per_image, eval_batch, precision [101][K], recall [101],
        num_gt, train_images, val_images, epochs`` (trained; fewer than ``epochs_planned`` when
        the recipe's ``time_limit_s`` stopped it) ``, best_map50, train_seconds, device,
        weights``.
    """
    out = Path(out_dir)
    if resume and (out / RESULT_FILE).is_file():
        return read_result(out / RESULT_FILE)
    ds = load_dataset(data, classes, patients)
    train_idx, val_idx = split(ds, fold, Path(folds_csv))
    if not train_idx or not val_idx:
        raise InputError(Path(folds_csv), f"fold {fold} leaves no training or no validation "
                                          "image")
    recipe = make_recipe(model_name, recipe_overrides)
    res, ev = train_and_evaluate(
        model_name, ds.subset(train_idx), ds.subset(val_idx), recipe, out, device, seed,
        resume=resume and (out / "last.pt").is_file(), autoanchor=autoanchor,
        eval_batch=eval_batch, progress=progress, select=select,
        run_info={"data": str(Path(data).resolve()), "fold": fold,
                  "folds_csv": str(Path(folds_csv).resolve())})
    assert ev is not None
    on_fold = None
    if select == "last" and res.best is not None:
        best_ckpt = load_checkpoint(res.best)
        best = rebuild_detector(best_ckpt, res.best, resolve_device(device))
        bev = evaluate(best.model, input_view(ds.subset(val_idx), recipe.sequence_pairs),
                       resolve_device(device), best.image_size,
                       eval_batch, best.class_names, pad_value=best.pad_value)
        on_fold = {"epoch": int(best_ckpt["epoch"]) + 1, "ap50": bev.ap50,
                   "map50": bev.map50, "map50_95": bev.map50_95,
                   "note": "epoch chosen by this fold's mAP@0.5: optimistic"}
    result = {
        "model": model_name, "fold": int(fold), **fold_scores(ev), "eval_batch": eval_batch,
        "train_images": len(train_idx), "val_images": len(val_idx), "epochs": res.epochs_done,
        "epochs_planned": recipe.epochs,
        "best_map50": res.best_map50 if math.isfinite(res.best_map50) else None,
        "train_seconds": _training_seconds(out), "device": str(resolve_device(device)),
        "weights": str(res.last if select == "last" else (res.best or res.last)),
        "select": select, "selected_on_fold": on_fold,
    }
    _write_json(out / RESULT_FILE, result)
    return result


def read_result(path: Path) -> dict[str, Any]:
    """A fold's ``result.json`` (:class:`InputError` naming the file when unusable)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the fold result: {err}") from None
    if not isinstance(obj, dict) or "fold" not in obj or "map50" not in obj:
        raise InputError(path, "not a fold result (needs 'fold' and 'map50')")
    return obj


FOLD_LOG = "train.log"


def exit_with_parent() -> None:
    """In a worker process: end it as soon as the process that started it is gone.

    A cross-validation stopped by a signal to its main process alone (``kill``, a job
    scheduler's stop) would otherwise leave its fold trainings running on, and a resumed run
    would then train the same fold twice into one folder. A daemon thread waits on the
    parent's sentinel (:func:`multiprocessing.parent_process`) and exits with status 1; the
    fold's checkpoints are written atomically, so the last whole epoch is what a resume
    finds. Nothing happens in a process that no multiprocessing parent started."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _fold_job(kwargs: dict[str, Any], threads: int) -> dict[str, Any]:
    """Worker-process entry: run one fold with its progress (one line per epoch) appended to
    ``<fold folder>/train.log``, as folds side by side cannot share a terminal; errors come
    back as text (InputError does not survive pickling). The worker ends with its parent
    (:func:`exit_with_parent`)."""
    exit_with_parent()
    torch.set_num_threads(threads)
    log_file = Path(kwargs["out_dir"]) / FOLD_LOG
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        try:
            return run_fold(**{**kwargs, "progress": True})
        except Exception as err:  # noqa: BLE001 - reported, the other folds go on
            return {"error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc()}


@dataclass
class CrossvalResult:
    """What :func:`crossval` did.

    Attributes:
        out_dir: the cross-validation folder; folds_csv: its ``folds.csv``.
        class_names: the classes scored.
        rows: Table 1 rows (models in the order given, then peers).
        files: Table 1 files by name (:func:`~lumbardx.engine.table1.write_table1`).
        ran: (model, fold) trained and evaluated by this call.
        reused: (model, fold) finished by an earlier call (skipped on resume).
        failures: (model, fold) -> error of the folds that failed (the others went on).
    """

    out_dir: Path
    folds_csv: Path
    class_names: list[str]
    rows: list[ModelFolds]
    files: dict[str, Path]
    ran: list[tuple[str, int]] = field(default_factory=list)
    reused: list[tuple[str, int]] = field(default_factory=list)
    failures: dict[tuple[str, int], str] = field(default_factory=dict)


def _resumed_as(key: str, value: Any, settings: Mapping[str, Any]) -> Any:
    """A setting as a resume compares it: the recipe overrides without
    :data:`LOG_ONLY_SETTINGS` when the final weights are scored (``select="last"``)."""
    if key == "recipe_overrides" and settings.get("select") == "last":
        return {k: v for k, v in dict(value or {}).items() if k not in LOG_ONLY_SETTINGS}
    return value


def _prepare_folder(out: Path, ds: LumbarDataset, settings: dict[str, Any], resume: bool,
                    say: Callable[[str], None]) -> Path:
    """Check ``out`` against ``resume``; write (or check and reuse) folds and settings."""
    folds_csv, settings_file = out / FOLDS_FILE, out / SETTINGS_FILE
    if not resume and (folds_csv.exists() or settings_file.exists()):
        raise InputError(out, "already holds a cross-validation; resume it (--resume) or "
                              "choose another output folder")
    if resume and settings_file.is_file():
        try:
            old = json.loads(settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(settings_file, f"cannot read the settings: {err}") from None
        diff = [f"{k}: {old.get(k)!r} before, {settings[k]!r} now" for k in RESUME_KEYS
                if _resumed_as(k, old.get(k), settings) != _resumed_as(k, settings[k], settings)]
        if diff:
            raise InputError(settings_file, "resume needs the settings of the first call; "
                                            + "; ".join(diff))
        settings["models"] = list(dict.fromkeys([*old.get("models", []), *settings["models"]]))
    out.mkdir(parents=True, exist_ok=True)
    if resume and folds_csv.is_file():
        assign = read_folds_csv(folds_csv)
        if assign.k != settings["k"]:
            raise InputError(folds_csv, f"holds {assign.k} folds, not {settings['k']}")
        split(ds, 0, assign)  # every image of the dataset must have a fold
        say(f"reusing the folds of {folds_csv}")
    else:
        assign = make_folds(ds, settings["k"], settings["seed"])
        write_folds_csv(assign, folds_csv)
        for message in assign.warnings:
            say(f"warning: {message}")
        say(f"folds written to {folds_csv}")
    _write_json(settings_file, settings)
    return folds_csv


def crossval(
    data: str | Path,
    models: Sequence[str],
    k: int = 5,
    classes: str = "study",
    recipe_overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path = "runs/crossval",
    device: str = "auto",
    seed: int = 0,
    jobs: int = 1,
    resume: bool = False,
    compare_with: Sequence[str | Path] = (),
    patients: Path | None = None,
    autoanchor: bool = True,
    eval_batch: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    select: str = "last",
    only_folds: Sequence[int] | None = None,
) -> CrossvalResult:
    """k-fold cross-validation of ``models`` on ``data`` and the study's Table 1.

    For each model and fold: train on the other ``k - 1`` folds, evaluate on the held-out fold
    (:func:`run_fold`). ``jobs > 1`` runs that many folds at a time in worker processes (spawned;
    each gets ``cpu_count // jobs`` threads and writes its progress to the fold folder's
    ``train.log``; useful on a large GPU; a script that calls this with ``jobs > 1`` needs the
    usual ``if __name__ == "__main__":`` guard). A failing fold is reported
    and the others go on; Table 1 lists it as not finished. ``select`` chooses the weights scored
    on each held-out fold (:func:`run_fold`; ``"last"``, the default, chooses nothing on the
    fold that scores it). ``compare_with`` adds further rows: peers' results or the models of
    another cross-validation's ``table1.json`` (:func:`read_comparison`); Table 1 pairs every
    two rows on the folds both scored, so compare only results on the same folds. ``log``
    receives progress messages. ``only_folds`` trains only those of the ``k`` folds (the others
    are left for another call, on this machine or another one with a copy of the folder, and
    their finished results are still read): a cross-validation spread over sittings or
    machines, put together by a last call with ``resume``.

    Raises:
        InputError: unknown model, bad recipe override, unusable dataset or peer file, ``out_dir``
            holding another cross-validation (without ``resume``) or other settings (with it).
    """
    say = log or (lambda message: None)
    if not models:
        raise InputError(None, "no model given")
    if jobs < 1:
        raise InputError(None, f"jobs must be at least 1, not {jobs}")
    if select not in SELECT_CHOICES:
        raise InputError(None, f"select must be one of {', '.join(SELECT_CHOICES)}, not "
                               f"{select!r}")
    wanted = set(range(k)) if only_folds is None else set(only_folds)
    if not wanted or not wanted <= set(range(k)):
        raise InputError(None, f"folds to train must lie in 0..{k - 1}, not "
                               f"{sorted(only_folds or [])}")
    overrides = dict(recipe_overrides or {})
    recipes = {m: make_recipe(m, overrides) for m in models}  # checks names and overrides
    out = Path(out_dir)
    ds = load_dataset(data, classes, patients)
    names = list(ds.class_names)
    peers = [row for p in compare_with for row in read_comparison(p, names)]
    settings = {"data": str(Path(data).resolve()), "models": list(models), "classes": classes,
                "k": k, "seed": seed, "recipe_overrides": overrides, "autoanchor": autoanchor,
                "eval_batch": eval_batch, "select": select, "lumbardx_version": __version__}
    folds_csv = _prepare_folder(out, ds, settings, resume, say)

    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in models}
    outcome = CrossvalResult(out, folds_csv, names, [], {})
    pending: list[dict[str, Any]] = []
    for m in models:
        for f in range(k):
            run_dir = out / m / f"fold{f}"
            if (run_dir / RESULT_FILE).is_file():
                results[m][f] = read_result(run_dir / RESULT_FILE)
                outcome.reused.append((m, f))
                say(f"{m} fold {f}: finished before, skipped")
                continue
            if f not in wanted:
                say(f"{m} fold {f}: not finished, left for another call")
                continue
            pending.append(dict(data=str(Path(data)), model_name=m, fold=f,
                                folds_csv=str(folds_csv), recipe_overrides=overrides,
                                out_dir=str(run_dir), device=device, seed=seed, classes=classes,
                                patients=patients, resume=True, autoanchor=autoanchor,
                                eval_batch=eval_batch, progress=progress, select=select))

    def finish(kw: dict[str, Any], res: dict[str, Any]) -> None:
        key = (kw["model_name"], kw["fold"])
        if "error" in res:
            outcome.failures[key] = res["error"]
            Path(kw["out_dir"]).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(kw["out_dir"]) / ERROR_FILE,
                              res.get("traceback", res["error"]))
            say(f"{key[0]} fold {key[1]} failed: {res['error']}")
            return
        results[key[0]][key[1]] = res
        outcome.ran.append(key)
        (Path(kw["out_dir"]) / ERROR_FILE).unlink(missing_ok=True)  # of an earlier attempt
        say(f"{key[0]} fold {key[1]}: mAP@0.5 {_fmt(res.get('map50'))}, "
            f"mAP@0.5:0.95 {_fmt(res.get('map50_95'))}")

    if jobs == 1 or len(pending) <= 1:
        for kw in pending:
            say(f"{kw['model_name']} fold {kw['fold']}: training on the other {k - 1} folds")
            try:
                res = run_fold(**kw)
            except Exception as err:  # noqa: BLE001 - reported, the other folds go on
                res = {"error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()}
            finish(kw, res)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_fold_job, kw, threads): kw for kw in pending}
            say(f"{len(pending)} fold trainings, {jobs} at a time; each fold's progress in "
                f"{out}/<model>/fold<k>/{FOLD_LOG}")
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())

    for m in models:
        failed = {f: e for (mm, f), e in outcome.failures.items() if mm == m}
        outcome.rows.append(ModelFolds(m, [results[m][f] for f in sorted(results[m])],
                                       failed=failed))
    outcome.rows += peers
    outcome.files = write_table1(outcome.rows, names, out, _notes(ds, settings, recipes,
                                                                  outcome.rows),
                                 extra={"settings": settings})
    return outcome


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _notes(ds: LumbarDataset, settings: dict[str, Any], recipes: Mapping[str, Recipe],
           rows: Sequence[ModelFolds]) -> list[str]:
    """Method lines under Table 1: data, folds, recipes, timing conditions, peers."""
    notes = [f"Data: {settings['data']} ({len(ds)} images, {len(ds.patients())} patients, "
             f"classes '{settings['classes']}'); {settings['k']} patient-grouped, "
             f"class-stratified folds (seed {settings['seed']}, folds.csv)."]
    changed = {k: v for k, v in settings["recipe_overrides"].items()
               if k not in ("image_size", "epochs", "batch_size", "num_workers")}
    for m, r in recipes.items():
        notes.append(f"{m}: recipe {r.name}, {r.epochs} epoch(s), {r.image_size} px, batch "
                     f"{r.batch_size}, optimizer {r.optimizer}, lr0 {r.lr0:g}, close_mosaic "
                     f"{r.close_mosaic}, seed {settings['seed']}, AutoAnchor "
                     f"{'on' if settings['autoanchor'] and m.startswith('yolov5') else 'off'}"
                     + (f"; settings changed from the recipe: {json.dumps(changed)}"
                        if changed else "") + ".")
    if settings.get("select") == "best":
        notes.append("Weights scored: the epoch with the best mAP@0.5 on the held-out fold "
                     "itself (optimistic: the fold that scores the model also chose it).")
    else:
        notes.append("Weights scored: the final epoch of each fold's training (nothing is "
                     "chosen on the held-out fold).")
        for row in rows:
            best = [f["selected_on_fold"]["map50"] for f in row.folds
                    if isinstance(f.get("selected_on_fold"), Mapping)
                    and f["selected_on_fold"].get("map50") is not None]
            if row.source == "lumbardx" and best:
                notes.append(f"{row.name}: choosing each fold's best epoch on the fold itself "
                             f"would report mAP@0.5 {np.mean(best):.3f} over {len(best)} "
                             "fold(s) (optimistic; not in the table).")
    for row in rows:
        devices = sorted({str(f.get("device")) for f in row.folds if f.get("device")})
        if row.source == "lumbardx" and devices:
            notes.append(f"{row.name}: time per image at batch {settings['eval_batch']} on "
                         f"{', '.join(devices)} (forward + post-processing, warm-up excluded)"
                         + ("; WARNING: folds timed on different devices" if len(devices) > 1
                            else "") + ".")
        elif row.source.startswith("table"):
            notes.append(f"{row.name}: {row.source}, an earlier cross-validation (same folds "
                         "only if it used this folds.csv).")
        elif row.source != "lumbardx":
            notes.append(f"{row.name}: {row.source}; scores and times from the peer's own "
                         "script (same folds only if it was given this folds.csv).")
    return notes
