"""The study's Table 1 on one GPU, in a fixed time: YOLOv3, YOLOv5s and PP-YOLOv2 (ResNet50-vd-DCN)
cross-validated on the five patient-grouped folds of ``bench/folds/``.

Steps (everything on ``--device``; the training set lives there,
:mod:`lumbardx.engine.device_loader`; bf16 autocast and channels-last on CUDA):

1. **Pipeline speed**: augmented batches per second of the device pipeline against the
   DataLoader pipeline on this machine (``bench/device_pipeline_speed.py``).
2. **Calibration**: for each model, ``--calibrate-steps`` training steps (after warm-up) on
   fold 0's training images with the model's recipe: seconds per training image and peak
   device memory.
3. **Plan** (``--calibrate-only`` stops here): each model gets ``--budget-s / len(models)``
   seconds of training. Folds train ``jobs`` at a time in separate processes (as many as the
   device memory holds at 1.5 x the calibrated peak, at most ``--jobs``), assumed to share the
   device with no gain from running side by side (the conservative case): an epoch of ``jobs``
   folds takes ``jobs x training images x seconds per image``, and the epochs are the time of
   one round of folds over that, between ``--min-epochs`` and ``--max-epochs``. Each fold also
   gets the recipe's ``time_limit_s`` (its round's time x 1.15), so a wrong estimate ends a fold
   early instead of the lease.
4. **Cross-validation** of each model (:func:`lumbardx.engine.crossval.crossval`, the folds of
   ``--folds-csv``, scored on the final weights), evaluation only after the last epoch.
5. **Table 1**: ``table1.{md,json,csv}`` of the three models (and the shipped model's
   cross-validation, ``--compare-with``, on the same folds), and ``table1_gpu.{json,md}``:
   device, versions, calibration, plan, epochs trained per fold, wall time.

A model that fails (calibration or cross-validation) is reported and the others go on; the
summary and Table 1 are rewritten into ``--results`` after every step, so a run stopped at the
lease's limit still leaves what it finished.

``--dry-run`` runs every step at tiny scale on the CPU (a patient-grouped subset of the data,
128 px, one epoch, two folds at a time): the check that the prepared GPU command works.

Usage (``bench/table1_gpu.sh`` prepares the data and wheels and calls this)::

    python bench/table1_gpu.py DATA --out OUT --device cuda --budget-s 400
    python bench/table1_gpu.py ../shared/data/yolospine-dev --out /tmp/t1-dry --dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import platform
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_pipeline_speed import measure as pipeline_speed
from machine_info import cpu_name

from lumbardx import __version__
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.folds import split
from lumbardx.engine.checkpoint import build_detector
from lumbardx.engine.crossval import crossval, make_recipe
from lumbardx.engine.device_loader import DeviceTrainLoader
from lumbardx.engine.loader import multiscale_size, to_model_input
from lumbardx.engine.optim import build_optimizer
from lumbardx.engine.recipes import Recipe
from lumbardx.engine.table1 import ModelFolds, read_comparison, summarize, write_table1
from lumbardx.io import atomic_write_text

HERE = Path(__file__).resolve().parent
FOLDS = HERE / "folds" / "yolospine-dev-k5-seed0.csv"
SHIPPED_CV = HERE / "results" / "crossval_yolov5n_pairs_cpu.json"
MODELS = ("yolov3", "yolov5s", "ppyolov2")
#: per-process batch on the GPU: twice each recipe's reference batch (YOLOv5 accumulates to
#: its nominal 64; the Paddle recipes scale their learning rate to the batch)
BATCH = {"yolov3": 16, "yolov5s": 32, "ppyolov2": 24}
PAPER_MAP50 = {"yolov3": 70.64, "yolov5s": 86.66, "ppyolov2": 90.08}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(model_name: str, train_set: Any, recipe: Recipe, device: torch.device,
              steps: int, warmup: int = 3) -> dict[str, Any]:
    """Seconds per training image of ``model_name`` with ``recipe`` (device pipeline, the
    recipe's multi-scale sizes, bf16 on CUDA) and peak device memory (bytes, CUDA only)."""
    names = list(train_set.class_names)
    model = build_detector(model_name, len(names), recipe.image_size).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    opt = build_optimizer(model, recipe)
    loader = DeviceTrainLoader(train_set, recipe, 0, device, num_classes=len(names))
    loader.set_epoch(0)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else \
        contextlib.nullcontext
    model.train()
    n, t0, it = 0, 0.0, iter(loader)
    for i in range(warmup + steps):
        try:
            images, targets = next(it)
        except StopIteration:
            loader.set_epoch(i)
            it = iter(loader)
            images, targets = next(it)
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        x, t = to_model_input(images, targets, device, multiscale_size(recipe, 0, 0, i))
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = model(x, t)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            n += images.shape[0]
    _sync(device)
    seconds = time.perf_counter() - t0
    out = {"model": model_name, "batch_size": recipe.batch_size, "steps": steps,
           "images": n, "seconds": round(seconds, 3), "s_per_image": seconds / max(n, 1),
           "params": sum(p.numel() for p in model.parameters())}
    if cuda:
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    del model, opt, loader
    if cuda:
        torch.cuda.empty_cache()
    return out


def plan(cal: dict[str, Any], budget_s: float, n_models: int, k: int, train_images: int,
         max_jobs: int, device: torch.device, min_epochs: int, max_epochs: int) -> dict[str, Any]:
    """Epochs, concurrent folds and per-fold time limit of one model (module docstring)."""
    share = budget_s / n_models
    jobs = max(1, min(max_jobs, k))
    if device.type == "cuda" and "peak_memory_bytes" in cal:
        total = torch.cuda.get_device_properties(device).total_memory
        jobs = max(1, min(jobs, int(0.85 * total // (1.5 * cal["peak_memory_bytes"] + 1.5e9))))
    rounds = math.ceil(k / jobs)
    per_fold = share / rounds
    epoch_s = train_images * cal["s_per_image"] * jobs  # folds side by side share the device
    epochs = int(per_fold // max(epoch_s, 1e-9))
    return {"share_s": share, "jobs": jobs, "rounds": rounds, "epoch_s_estimate": epoch_s,
            "epochs": max(min_epochs, min(max_epochs, epochs)),
            "time_limit_s": round(per_fold * 1.15, 1),
            "s_for_max_epochs": round(rounds * max_epochs * epoch_s, 1)}


def dry_run_data(data: Path, out: Path, patients: int = 24) -> Path:
    """A small copy of ``data`` under ``out`` for the tiny-scale run: the images of the first
    ``patients`` patients of ``patients.csv`` and their annotation files (same stem, any
    folder), every top-level file (``data.yaml``, ``classes.txt``...), ``patients.csv``
    filtered."""
    dst = out / "dry-data"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    with (data / "patients.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep_patients = sorted({r["patient"] for r in rows})[:patients]
    kept = [r for r in rows if r["patient"] in keep_patients]
    stems = {Path(r["image"]).stem for r in kept}
    for path in data.rglob("*"):
        rel = path.relative_to(data)
        if not path.is_file() or rel.name == "patients.csv":
            continue
        if len(rel.parts) == 1 or path.stem in stems:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)
    with (dst / "patients.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(kept)
    return dst


def _versions(device: torch.device) -> dict[str, Any]:
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "lumbardx": __version__, "cpu": cpu_name()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        v.update({"device": p.name, "device_memory_gb": round(p.total_memory / 2**30, 1),
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "bf16": torch.cuda.is_bf16_supported()})
    else:
        v["device"] = f"CPU ({cpu_name()})"
    return v


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Table 1 on one device", "",
             f"Device: {result['versions']['device']}; torch {result['versions']['torch']}; "
             f"lumbardx {result['versions']['lumbardx']}; wall time "
             f"{result['wall_s']:.0f} s (budget {result['budget_s']:.0f} s of training); "
             f"stage: {result.get('stage', '-')}.", "",
             "| model | mAP@0.5 (mean +- SD over folds) | 95% CI | paper | epochs (planned) "
             "| folds side by side | s / training image |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in result["models"]:
        r = result["per_model"].get(m, {})
        s = r.get("map50") or {}
        cell = (f"{100 * s['mean']:.1f} +- {100 * s['sd']:.1f}" if s.get("mean") is not None
                and s.get("sd") is not None else "-")
        ci = (f"{100 * s['ci_low']:.1f} to {100 * s['ci_high']:.1f}"
              if s.get("ci_low") is not None else "-")
        lines.append(f"| {m} | {cell} | {ci} | {PAPER_MAP50.get(m, '-')} | "
                     f"{r.get('epochs_trained', '-')} ({r.get('plan', {}).get('epochs', '-')}) | "
                     f"{r.get('plan', {}).get('jobs', '-')} | "
                     f"{r.get('calibration', {}).get('s_per_image', float('nan')):.4f} |")
    for m in result["models"]:
        r = result["per_model"].get(m, {})
        for what in ([r["error"]] if r.get("error") else []) + [
                f"{key}: {err}" for key, err in (r.get("failures") or {}).items()]:
            lines.append(f"\n**{m} did not finish**: {what}")
    lines += ["", "Per class, paired differences and the shipped model: `table1.md` beside "
              "this file. Trained from scratch (no COCO pretraining), on this data set, in "
              "this time budget: the paper's models were pretrained and trained for hundreds "
              "of epochs.", ""]
    return "\n".join(lines)


def _map50(row: ModelFolds, class_names: list[str]) -> dict[str, float | None]:
    """mAP@0.5 of a Table 1 row over its folds: mean, SD and 95% interval (``None`` where
    undefined)."""
    s = summarize(row, class_names).get("map50")
    if s is None:
        return {}
    return {k: (None if v is None or not math.isfinite(v) else v)
            for k, v in (("mean", s.mean), ("sd", s.sd), ("ci_low", s.ci_low),
                         ("ci_high", s.ci_high))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="working folder (checkpoints)")
    ap.add_argument("--results", type=Path, default=None,
                    help="where table1_gpu.{json,md} and table1.{md,json,csv} are written "
                         "after each step (default: --out; figures stay in --out/table1)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budget-s", type=float, default=400.0,
                    help="seconds of training for all models together")
    ap.add_argument("--imgsz", type=int, default=384)
    ap.add_argument("--jobs", type=int, default=5, help="most folds trained side by side")
    ap.add_argument("--calibrate-steps", type=int, default=12)
    ap.add_argument("--min-epochs", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--compare-with", type=Path, default=SHIPPED_CV)
    ap.add_argument("--calibrate-only", action="store_true",
                    help="measure and plan (steps 1-3), train nothing")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny scale on the CPU: a data subset, 128 px, 1 epoch")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    data, folds_csv, k = args.data, args.folds_csv, 5
    if args.dry_run:
        args.device, args.imgsz, args.jobs = "cpu", 128, 2
        args.calibrate_steps, args.max_epochs, args.min_epochs = 2, 1, 1
        data, folds_csv, k = dry_run_data(args.data, args.out), None, 3
        torch.set_num_threads(1)
    device = torch.device(args.device)
    versions = _versions(device)
    print(json.dumps(versions), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(data, classes="study", cache=True)
    # 1. pipeline speed on this device (the same images, no model)
    speed = pipeline_speed(ds, replace(make_recipe("yolov5s", {"image_size": args.imgsz}),
                                       batch_size=32), device, workers=0,
                           batches=2 if args.dry_run else 8, repeats=1 if args.dry_run else 3)
    print("pipeline:", json.dumps(speed), flush=True)
    # 2. calibration on fold 0's training images
    if folds_csv is not None:
        train_idx, _ = split(ds, 0, folds_csv)
    else:
        train_idx = list(range(len(ds) * (k - 1) // k))
    train_set = ds.subset(train_idx)
    per_model: dict[str, Any] = {m: {} for m in models}
    overrides: dict[str, dict[str, Any]] = {}
    rows: list[Any] = []
    names = list(ds.class_names)
    results = args.results or args.out
    results.mkdir(parents=True, exist_ok=True)

    def write(stage: str) -> dict[str, Any]:
        """table1_gpu.{json,md} (and Table 1 once a model has folds) as they stand."""
        if rows:
            shown = list(rows)
            if not args.dry_run and args.compare_with.is_file():
                shown += read_comparison(args.compare_with, names)
            files = write_table1(shown, names, args.out / "table1",
                                 [f"{m}: {json.dumps(o)}" for m, o in overrides.items()],
                                 extra={"versions": versions})
            for key in ("md", "json", "csv"):  # the figures stay in --out
                shutil.copy2(files[key], results / files[key].name)
            for r in rows:
                per_model[r.name]["map50"] = _map50(r, names)
        result = {"what": "Table 1 (YOLOv3, YOLOv5s, PP-YOLOv2) cross-validated on one device",
                  "stage": stage, "dry_run": args.dry_run, "versions": versions,
                  "data": str(args.data),
                  "folds_csv": str(folds_csv) if folds_csv else "made for the dry-run subset",
                  "models": models, "budget_s": args.budget_s, "image_size": args.imgsz,
                  "pipeline_speed": speed, "per_model": per_model,
                  "wall_s": round(time.perf_counter() - t_start, 1)}
        atomic_write_text(results / "table1_gpu.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(results / "table1_gpu.md", _markdown(result))
        return result

    # 2. calibration and plan; a model that fails is reported and the others go on
    for m in models:
        try:
            recipe = make_recipe(m, {"image_size": args.imgsz,
                                     "batch_size": 4 if args.dry_run else BATCH.get(m, 16)})
            cal = calibrate(m, train_set, replace(recipe, pipeline="device"), device,
                            args.calibrate_steps)
        except Exception as err:  # noqa: BLE001 - one model must not cost the others
            per_model[m]["error"] = f"calibration: {type(err).__name__}: {err}"
            print(f"{m}: {per_model[m]['error']}\n{traceback.format_exc()}", flush=True)
            continue
        p = plan(cal, args.budget_s, len(models), k, len(train_idx), args.jobs, device,
                 args.min_epochs, args.max_epochs)
        print(f"{m}: calibration {json.dumps(cal)}; plan {json.dumps(p)}", flush=True)
        per_model[m].update({"calibration": cal, "plan": p})
        overrides[m] = {"image_size": args.imgsz, "batch_size": recipe.batch_size,
                        "epochs": p["epochs"], "pipeline": "device", "num_workers": 0,
                        "eval_interval": p["epochs"], "time_limit_s": p["time_limit_s"]}
    write("calibrated")
    if args.calibrate_only:
        return 0
    # 3. cross-validation, model by model; Table 1 rewritten after each
    for m in overrides:
        cv_dir = args.out / m
        cv_dir.mkdir(parents=True, exist_ok=True)
        if folds_csv is not None:
            shutil.copy2(folds_csv, cv_dir / "folds.csv")
        t0 = time.perf_counter()
        try:
            res = crossval(data, [m], k=k, recipe_overrides=overrides[m], out_dir=cv_dir,
                           device=args.device, jobs=per_model[m]["plan"]["jobs"],
                           resume=folds_csv is not None, progress=False,
                           log=lambda msg: print(msg, flush=True))
        except Exception as err:  # noqa: BLE001 - reported, the next model goes on
            per_model[m]["error"] = f"cross-validation: {type(err).__name__}: {err}"
            print(f"{m}: {per_model[m]['error']}\n{traceback.format_exc()}", flush=True)
            write(f"{m} failed")
            continue
        per_model[m]["wall_s"] = round(time.perf_counter() - t0, 1)
        per_model[m]["failures"] = {f"{mm} fold {f}": e for (mm, f), e in res.failures.items()}
        folds = res.rows[0].folds
        per_model[m]["epochs_trained"] = [f.get("epochs") for f in folds]
        per_model[m]["train_seconds"] = [round(f.get("train_seconds", 0.0), 1) for f in folds]
        rows.append(res.rows[0])
        write(f"{m} done")
    # 4. the final Table 1 (+ the shipped model on the same folds)
    result = write("done")
    print(_markdown(result), flush=True)
    failed = [m for m in models if per_model[m].get("error") or per_model[m].get("failures")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
