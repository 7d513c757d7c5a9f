"""``lumbardx train | evaluate | predict | crossval``: train detectors, score them, run them.

Exit codes: 0 done; 1 done with failures (unreadable images in ``predict``, failed folds in
``crossval``); 2 nothing done (unusable input: missing folder, unknown model, bad checkpoint).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lumbardx import __version__
from lumbardx.data.classes import CLASSES_HELP, STUDY_CLASSES
from lumbardx.cli.check import problem_lines
from lumbardx.data.errors import InputError

if TYPE_CHECKING:  # torch and the engine load only when a command runs
    import torch

    from lumbardx.engine.crossval import CrossvalResult, LoadedDetector
    from lumbardx.engine.evaluate import EvalResult

SIDECAR_SUFFIXES = frozenset({".txt", ".xml", ".json", ".csv", ".yaml", ".yml", ".md", ".pt",
                              ".pth", ".onnx", ".npy", ".npz", ".log", ".py", ".html", ".pdf"})
PREDICT_CHUNK = 32  # images decoded and held in memory at a time


@contextmanager
def _input_errors(console: Console) -> Iterator[None]:
    """Show warnings on ``console`` as they come; print an :class:`InputError` (or a bad
    setting's ``ValueError``) and exit with code 2."""
    previous = warnings.showwarning

    def show(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        console.print(Text.assemble(("warning: ", "yellow"), str(message)), soft_wrap=True)

    warnings.showwarning = show
    try:
        yield
    except (InputError, ValueError) as err:
        console.print(Text.assemble(("error: ", "bold red"), str(err)), soft_wrap=True)
        for line in problem_lines(err):
            console.print(line, soft_wrap=True)
        raise typer.Exit(code=2) from None
    finally:
        warnings.showwarning = previous


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def eval_table(result: EvalResult, title: str) -> Table:
    """Rich table of an :class:`~lumbardx.engine.evaluate.EvalResult`: AP@0.5 and AP@0.5:0.95
    per class (%, COCO 101-point), ground-truth boxes, then mAP and time per image."""
    table = Table("class", "boxes", "AP@0.5 (%)", "AP@0.5:0.95 (%)", title=title)
    for name in result.class_names:
        table.add_row(name, str(result.num_gt.get(name, 0)), _pct(result.ap50[name]),
                      _pct(result.ap50_95[name]))
    table.add_row("all (mAP)", str(sum(result.num_gt.values())), _pct(result.map50),
                  _pct(result.map50_95), style="bold")
    table.caption = (f"{result.num_images} images; COCO 101-point interpolation; "
                     f"{result.ms_per_image:.1f} ms per image")
    return table


SET_HELP = ("Recipe setting KEY=VALUE (repeat), e.g. optimizer=adamw, lr0=0.0014, "
            "close_mosaic=10, augment.mixup=0.1; keys are lumbardx.engine.recipes.Recipe "
            "fields.")


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["lr0=0.002", "augment.mixup=0.1"]`` -> ``{"lr0": 0.002, "augment": {"mixup": 0.1}}``.

    Values are read as YAML scalars or lists (``0.002``, ``true``, ``adamw``, ``[320, 448]``).
    Unknown keys are refused later by :func:`lumbardx.engine.crossval.make_recipe`.

    Raises:
        InputError: an item without ``=`` or with an unreadable value.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(None, f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise InputError(None, f"--set {item!r}: unreadable value ({err})") from None
        if key.startswith("augment."):
            out.setdefault("augment", {})[key.removeprefix("augment.")] = value
        else:
            out[key] = value
    return out


def _recipe_overrides(epochs: int | None, imgsz: int, batch: int | None,
                      workers: int | None, settings: Sequence[str] = ()) -> dict[str, Any]:
    o: dict[str, Any] = parse_settings(settings)
    o["image_size"] = imgsz
    for key, value in (("epochs", epochs), ("batch_size", batch), ("num_workers", workers)):
        if value is not None:
            o[key] = value
    return o


def train(
    data: Path = typer.Argument(..., help="Annotated dataset folder (VOC, YOLO or COCO)."),
    model: str = typer.Option("yolov5s", "--model", help="Detector (see 'lumbardx models')."),
    classes: str = typer.Option("study", "--classes", help=CLASSES_HELP),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Default: the recipe's."),
    imgsz: int = typer.Option(384, "--imgsz", help="Training / evaluation size (x32 px)."),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Default: the recipe's."),
    fold: int | None = typer.Option(None, "--fold", help="Validate on this fold (0-based)."),
    folds_csv: Path | None = typer.Option(None, "--folds-csv",
                                          help="Folds from 'lumbardx data folds'; default: "
                                               "made now (-k, --seed), saved in the run."),
    k: int = typer.Option(5, "-k", help="Number of folds when --folds-csv is not given."),
    val: Path | None = typer.Option(None, "--val", help="Separate validation dataset folder."),
    out: Path | None = typer.Option(None, "--out", help="Run folder; default runs/MODEL."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    weights: Path | None = typer.Option(None, "--weights", help="Start from these weights."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling, augmentation and folds."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Data loader workers."),
    autoanchor: bool = typer.Option(True, "--autoanchor/--no-autoanchor",
                                    help="Re-fit YOLOv5 anchors to the training boxes."),
    eval_batch: int = typer.Option(1, "--eval-batch", min=1,
                                   help="Batch of the final evaluation (sets the timing)."),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Train a detector; with --fold, train on the other folds and validate on that one.

    Writes OUT/last.pt, best.pt (with model name, classes, image size, anchors and recipe),
    results.csv, run.json and the evaluation of best.pt in OUT/eval.
    """
    from lumbardx.data.folds import make_folds, split, write_folds_csv
    from lumbardx.engine import crossval as cv

    console = Console()
    if fold is not None and val is not None:
        console.print("[bold red]error:[/] give --fold or --val, not both")
        raise typer.Exit(code=2)
    run = out or Path("runs") / (model if fold is None else f"{model}-fold{fold}")
    with _input_errors(console):
        if not resume and (run / "last.pt").exists():
            raise InputError(run, "already holds a training run (last.pt); resume it "
                                  "(--resume) or choose another --out")
        recipe = cv.make_recipe(model, _recipe_overrides(epochs, imgsz, batch, workers,
                                                         settings))
        ds = cv.load_dataset(data, classes)
        train_set, val_set, info = ds, None, {"data": str(data.resolve())}
        if fold is not None:
            if folds_csv is None:
                folds_csv = run / "folds.csv"
                if not (resume and folds_csv.is_file()):
                    write_folds_csv(make_folds(ds, k, seed), folds_csv)
            train_idx, val_idx = split(ds, fold, folds_csv)
            train_set, val_set = ds.subset(train_idx), ds.subset(val_idx)
            info.update(fold=fold, folds_csv=str(folds_csv.resolve()))
        elif val is not None:
            val_set = cv.load_dataset(val, classes)
            if val_set.class_names != ds.class_names:
                raise InputError(val, f"classes {val_set.class_names} differ from the training "
                                      f"classes {ds.class_names}")
            info["val"] = str(val.resolve())
        else:
            console.print("[yellow]no --fold or --val: training without validation "
                          "(best.pt is not written)")
        console.print(f"{model}: {len(train_set)} training, {len(val_set or [])} validation "
                      f"images, {recipe.epochs} epochs at {recipe.image_size} px -> {run}")
        res, ev = cv.train_and_evaluate(model, train_set, val_set, recipe, run, device, seed,
                                        resume=resume, weights=weights, autoanchor=autoanchor,
                                        eval_batch=eval_batch, run_info=info)
    if res.weights_report is not None:
        console.print(res.weights_report.summary(), markup=False, soft_wrap=True)
    for key, problem in res.skipped.items():
        console.print(Text.assemble(("skipped: ", "yellow"), f"{key}: {problem}"),
                      soft_wrap=True)
    if ev is not None:
        console.print(eval_table(ev, f"{model}: best.pt on the validation images"))
    console.print(f"Weights: {res.last}" + (f", {res.best}" if res.best else ""))


def evaluate(
    weights: Path = typer.Argument(..., help="Checkpoint written by 'lumbardx train'."),
    data: Path = typer.Argument(..., help="Annotated dataset folder."),
    fold: int | None = typer.Option(None, "--fold", help="Evaluate on this fold only."),
    folds_csv: Path | None = typer.Option(None, "--folds-csv", help="Folds table for --fold."),
    classes: str | None = typer.Option(None, "--classes",
                                       help="study|study+ddd|study+ddd-ignore|all; "
                                            "default: the "
                                            "checkpoint's classes."),
    out: Path | None = typer.Option(None, "--out", help="Output folder; default next to "
                                                        "WEIGHTS (eval_DATA)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per forward (sets the timing)."),
) -> None:
    """Score a checkpoint: AP@0.5 per class, mAP@0.5 (COCO 101-point), mAP@0.5:0.95, PR
    curves, confusion matrix and inference time per image."""
    from lumbardx.data.folds import split
    from lumbardx.engine import crossval as cv
    from lumbardx.engine.evaluate import evaluate as run_eval

    console = Console()
    with _input_errors(console):
        det = cv.load_detector(weights, cv.resolve_device(device))
        ds = cv.load_dataset(data, classes or _class_mapping(det.class_names))
        if ds.class_names != det.class_names:
            raise InputError(data, f"dataset classes {ds.class_names} differ from the model's "
                                   f"{det.class_names}")
        if fold is not None:
            if folds_csv is None:
                raise InputError(None, "--fold needs --folds-csv")
            ds = ds.subset(split(ds, fold, folds_csv)[1])
        ds = cv.input_view(ds, det.sequence_pairs)  # as it was trained
        dest = out or weights.parent / (f"eval_{data.name}" + ("" if fold is None
                                                               else f"_fold{fold}"))
        res = run_eval(det.model, ds, cv.resolve_device(device), det.image_size, batch,
                       det.class_names, out_dir=dest, pad_value=det.pad_value)
    for key, problem in res.skipped.items():
        console.print(Text.assemble(("skipped: ", "yellow"), f"{key}: {problem}"),
                      soft_wrap=True)
    console.print(eval_table(res, f"{det.model_name} ({weights.name}) on {data}"))
    console.print(f"Figures and metrics in {dest}")


def _class_mapping(names: Sequence[str]) -> str | dict[str, str]:
    """``"study"`` for the study's classes, else an identity mapping of ``names``."""
    return "study" if list(names) == list(STUDY_CLASSES) else {n: n for n in names}


def find_images(root: Path) -> list[Path]:
    """Files under ``root`` (recursive, sorted) that may be images: everything but hidden files
    and known side-car files (labels, tables, checkpoints). Unknown formats are tried and
    reported by the reader."""
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and p.suffix.lower() not in SIDECAR_SUFFIXES:
            found.append(p)
    return found


def predict_folder(
    det: LoadedDetector,
    root: Path,
    device: str | torch.device = "cpu",
    batch: int = 8,
    min_score: float = 0.0,
    on_error: Callable[[Path, str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Detections for every image under ``root`` as one COCO-style object.

    Returns:
        ``(coco, failed)``: ``coco`` has ``info``, ``images`` (``id``, ``file_name`` relative to
        ``root``, ``width``, ``height``), ``categories`` (``id`` = class index + 1, ``name``) and
        ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in
        original image pixels, ``area``, ``score``, ``iscrowd``); ``failed`` maps each unreadable
        file to its problem (``on_error(path, problem)`` is called too).
    """
    import numpy as np

    from lumbardx.data.images import read_image
    from lumbardx.engine.evaluate import predict
    from lumbardx.engine.metrics import GroundTruth, predictions_to_coco_json

    files = find_images(root)
    gts: list[GroundTruth] = []
    preds: list[Any] = []
    failed: dict[str, str] = {}
    empty_b, empty_l = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    for start in range(0, len(files), PREDICT_CHUNK):
        images = []
        for path in files[start:start + PREDICT_CHUNK]:
            try:
                img = read_image(path).display
            except InputError as err:
                failed[str(path)] = err.problem
                if on_error is not None:
                    on_error(path, err.problem)
                continue
            images.append(img)
            gts.append(GroundTruth(path.relative_to(root).as_posix(), img.shape[1],
                                   img.shape[0], empty_b, empty_l))
        for p in predict(det.model, images, det.image_size, device, batch, det.pad_value):
            keep = p.scores >= min_score
            preds.append(type(p)(p.boxes[keep], p.scores[keep], p.labels[keep]))
    coco = predictions_to_coco_json(gts, preds, det.class_names)
    coco["info"] = {"description": f"lumbardx predict: {det.model_name}",
                    "weights": str(det.path), "image_size": det.image_size,
                    "min_score": min_score, "bbox": "[x, y, w, h] original image pixels",
                    "lumbardx_version": __version__}
    return coco, failed


def predict(
    weights: Path = typer.Argument(..., help="Checkpoint written by 'lumbardx train'."),
    folder: Path = typer.Argument(..., help="Folder of PNG / JPEG / DICOM images (recursive)."),
    out: Path = typer.Option(..., "--out", help="COCO-style JSON file to write."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per forward."),
    min_score: float = typer.Option(0.0, "--min-score", min=0.0, max=1.0,
                                    help="Drop detections scoring below this."),
) -> None:
    """Detect findings in every image of FOLDER; unreadable files are reported and skipped
    (exit code 1 when any failed)."""
    from lumbardx.engine import crossval as cv

    console = Console()
    with _input_errors(console):
        if not folder.is_dir():
            raise InputError(folder, "image folder not found")
        dev = cv.resolve_device(device)
        det = cv.load_detector(weights, dev)
        coco, failed = predict_folder(
            det, folder, dev, batch, min_score,
            lambda p, why: console.print(Text.assemble(("unreadable: ", "red"), f"{p}: {why}"),
                                          soft_wrap=True))
        if not coco["images"] and not failed:
            raise InputError(folder, "no image files found")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco, indent=1), encoding="utf-8")
    counts = Counter(a["category_id"] for a in coco["annotations"])
    table = Table("class", "detections", title=f"{len(coco['images'])} images -> {out}")
    for c in coco["categories"]:
        table.add_row(c["name"], str(counts[c["id"]]))
    console.print(table)
    if failed:
        console.print(f"[red]{len(failed)} file(s) could not be read and were skipped")
        raise typer.Exit(code=1)


def print_table1(console: Console, res: CrossvalResult) -> None:
    """Table 1 of a cross-validation on the terminal (mean ± SD over folds), then the paired
    mAP@0.5 difference of every two rows and where the files are."""
    from lumbardx.engine.table1 import paired_comparison, summarize

    table = Table("model", "folds", *(f"AP@0.5 {c}" for c in res.class_names), "mAP@0.5",
                  "mAP@0.5:0.95", "ms/image", title="Table 1 (%, mean ± SD over folds)")
    for row in res.rows:
        st = summarize(row, res.class_names)
        cells = [f"{100 * s.mean:.2f} ± {100 * s.sd:.2f}" if s.n > 1 else _pct(s.mean)
                 for key, s in st.items() if key != "ms_per_image"]
        ms = st["ms_per_image"]
        table.add_row(row.name, str(len(row.folds)), *cells,
                      "-" if ms.n == 0 else f"{ms.mean:.1f}")
    console.print(table)
    rows = res.rows
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            d = paired_comparison(a, b, res.class_names)["map50"]
            if d.diff.n >= 2:
                console.print(f"mAP@0.5, {a.name} - {b.name}: {100 * d.diff.mean:+.2f} points "
                              f"(95% paired t-interval {100 * d.diff.ci_low:+.2f} to "
                              f"{100 * d.diff.ci_high:+.2f}; folds won {d.wins_a}:{d.wins_b}, "
                              f"{d.diff.n} folds)", markup=False, highlight=False)
    console.print(f"Table 1: {res.files['md']}, {res.files['csv']}, {res.files['json']}")


def _fold_list(text: str | None) -> list[int] | None:
    """``--only-folds``: comma-separated fold numbers (None: every fold)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(None, f"--only-folds takes fold numbers like 2,3,4, not {text!r}"
                         ) from None


def crossval(
    data: Path = typer.Argument(..., help="Annotated dataset folder (with patients)."),
    models: str = typer.Option("yolov3,yolov5s,ppyolov2", "--models", help="Comma-separated."),
    folds: int = typer.Option(5, "--folds", min=2, help="Number of patient-grouped folds."),
    classes: str = typer.Option("study", "--classes", help=CLASSES_HELP),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Default: the recipe's."),
    imgsz: int = typer.Option(384, "--imgsz", help="Training / evaluation size (x32 px)."),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Default: the recipe's."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N."),
    out: Path = typer.Option(Path("runs/crossval"), "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, sampling and augmentation."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Fold trainings run in parallel."),
    resume: bool = typer.Option(False, "--resume", help="Reuse folds.csv, skip finished folds."),
    compare_with: list[Path] = typer.Option([], "--compare-with",
                                            help="Rows to add (repeat): a peer's results.json "
                                                 "or another cross-validation's table1.json "
                                                 "(same folds)."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Data loader workers."),
    autoanchor: bool = typer.Option(True, "--autoanchor/--no-autoanchor",
                                    help="Re-fit YOLOv5 anchors to each training split."),
    eval_batch: int = typer.Option(1, "--eval-batch", min=1,
                                   help="Batch of the fold evaluations (sets the timing)."),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
    select: str = typer.Option("last", "--select",
                               help="Weights scored on each held-out fold: last (final epoch; "
                                    "nothing chosen on the test fold) or best (the fold's best "
                                    "epoch: optimistic)."),
    only_folds: str | None = typer.Option(None, "--only-folds",
                                          help="Train only these folds, e.g. 2,3,4 (the rest "
                                               "another time or on another machine; "
                                               "--resume puts the table together)."),
) -> None:
    """K-fold cross-validation of each model and the study's Table 1 (table1.md / .csv /
    .json, mean +- SD and 95% t-interval over folds, mean PR curves per model)."""
    from lumbardx.engine import crossval as cv

    console = Console()
    names = [m.strip() for m in models.split(",") if m.strip()]
    with _input_errors(console):
        chosen = _fold_list(only_folds)
        res = cv.crossval(data, names, folds, classes,
                          _recipe_overrides(epochs, imgsz, batch, workers, settings), out,
                          device, seed,
                          jobs, resume, compare_with, autoanchor=autoanchor,
                          eval_batch=eval_batch, select=select, only_folds=chosen,
                          log=lambda m: console.print(m, markup=False, highlight=False))
    print_table1(console, res)
    if res.failures:
        console.print(f"[red]{len(res.failures)} fold(s) failed (see error.txt in their "
                      "folders); rerun with --resume")
        raise typer.Exit(code=1)
