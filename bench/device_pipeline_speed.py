"""Training batches per second: the device-resident pipeline against the DataLoader pipeline.

Both build the same augmented batches (``images uint8 [B, C, S, S]``, ``targets [M, 6]``) of a
recipe from the same training images; only batch building is timed (no model). Measured, in
the same run and on the same images:

* ``workers`` -- :func:`lumbardx.engine.loader.build_train_loader` (the CPU pipeline, PIL per
  sample) with ``--workers`` DataLoader processes (0: in the main process), batches moved to
  ``--device``;
* ``device`` -- :class:`lumbardx.engine.device_loader.DeviceTrainLoader` with the training set
  on ``--device`` (batches built there by tensor operations; CUDA synchronised per batch).

Reported per recipe: images per second of each (median of ``--repeats`` passes over
``--batches`` batches, after one warm-up batch) and their ratio. On a CPU the two compete for
the same cores; the device path is built for a GPU, where the images never leave it.

Usage::

    python bench/device_pipeline_speed.py ../shared/data/yolospine-dev \
        --out bench/results/device_pipeline_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name

from lumbardx import __version__
from lumbardx.data.dataset import LumbarDataset
from lumbardx.engine.device_loader import DeviceTrainLoader
from lumbardx.engine.loader import build_train_loader, set_loader_epoch
from lumbardx.engine.recipes import Recipe, recipe_for
from lumbardx.io import atomic_write_text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(loader: Any, device: torch.device, batches: int, repeats: int,
                      seed: int = 0) -> float:
    """Median images/s of ``repeats`` passes of ``batches`` batches each (one batch of warm-up
    first; epochs follow one another as the sampler runs out), batches moved to ``device``."""
    epoch = 0
    set_loader_epoch(loader, epoch, seed)
    it = iter(loader)

    def batch() -> int:
        nonlocal epoch, it
        try:
            images, targets = next(it)
        except StopIteration:  # a small set: go on with the next epoch
            epoch += 1
            set_loader_epoch(loader, epoch, seed)
            it = iter(loader)
            images, targets = next(it)
        images, targets = images.to(device), targets.to(device)
        return int(images.shape[0])

    batch()  # warm-up
    _sync(device)
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        for _ in range(batches):
            n += batch()
        _sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure(dataset: Any, recipe: Recipe, device: torch.device, workers: int, batches: int,
            repeats: int) -> dict[str, Any]:
    """Images/s of both pipelines for ``recipe`` on ``dataset`` (see the module docstring)."""
    names = list(dataset.class_names)
    cpu = build_train_loader(dataset, replace(recipe, num_workers=workers), seed=0,
                             pin_memory=device.type == "cuda", num_classes=len(names))
    t0 = time.perf_counter()
    dev = DeviceTrainLoader(dataset, recipe, 0, device, num_classes=len(names))
    _sync(device)
    load_s = time.perf_counter() - t0
    w = images_per_second(cpu, device, batches, repeats)
    d = images_per_second(dev, device, batches, repeats)
    return {"recipe": recipe.name, "image_size": recipe.image_size,
            "batch_size": recipe.batch_size, "workers": workers,
            "workers_images_per_s": round(w, 1), "device_images_per_s": round(d, 1),
            "device_over_workers": round(d / w, 2), "device_set_seconds": round(load_s, 2),
            "device_set_mb": round(dev.data.nbytes() / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="yolov5s,ppyolov2",
                    help="recipes of these models (comma-separated)")
    ap.add_argument("--imgsz", type=int, default=384)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(args.data, classes="study", cache=True)
    rows = []
    for m in args.models.split(","):
        recipe = replace(recipe_for(m, image_size=args.imgsz), batch_size=args.batch)
        row = {"model": m, **measure(ds, recipe, device, args.workers, args.batches,
                                     args.repeats)}
        print(json.dumps(row))
        rows.append(row)
    result = {
        "what": "augmented training batches per second: device-resident pipeline vs the "
                "DataLoader (PIL) pipeline, same images and recipe, no model",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": cpu_name(), "torch_threads": args.threads, "torch": torch.__version__,
        "lumbardx": __version__, "data": str(args.data), "images": len(ds),
        "batches": args.batches, "repeats": args.repeats, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
