"""Cross-validate the segment reader on the patient-grouped folds, and compare variants.

Trains :class:`lumbardx.models.segment_reader.SegmentReader` on four folds and scores the fifth
(:mod:`lumbardx.engine.segment_crossval`) for every fold of ``bench/folds/``; out-of-fold
predictions and weights go to ``--out`` (``runs/...``, resumable fold by fold), the summary to
``--results`` (JSON). With ``--compare OTHER.json`` the per-fold metrics are paired with another
variant's summary on the same folds (mean difference, 95% t-interval, folds won).

Usage::

    python bench/segment_crossval.py ../shared/data/yolospine-dev --out runs/segcv-synth \
        --results bench/results/segment_crossval_synth.json [--set synthetic_slip=0] \
        [--epochs 20] [--folds 0,1,2,3,4] [--compare bench/results/segment_crossval_real.json] \
        [--single-slice]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name

from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.pairs import SequencePairs
from lumbardx.engine.segment_crossval import run_fold, summarise
from lumbardx.engine.segment_training import (SegmentTraining, item_from_sample,
                                              training_settings)
from lumbardx.engine.table1 import fold_differences
from lumbardx.io import atomic_write_text
from lumbardx.models.segment_reader import SegmentReaderConfig

FOLDS = Path(__file__).resolve().parent / "folds" / "yolospine-dev-k5-seed0.csv"


def parse_set(cfg: SegmentTraining, pairs: list[str]) -> SegmentTraining:
    """``key=value`` overrides of :class:`SegmentTraining` fields (numbers), and of the
    reader's architecture as ``config.size=ROWSxCOLS``, ``config.width=N`` or
    ``config.embed=N`` (:class:`~lumbardx.models.segment_reader.SegmentReaderConfig`)."""
    types = {f.name: f.type for f in fields(SegmentTraining)}
    for kv in pairs:
        key, _, value = kv.partition("=")
        if key.startswith("config."):
            cfg = replace(cfg, config=_set_config(cfg.config, key[len("config."):], kv))
            continue
        if key not in types or key == "config":
            raise SystemExit(f"--set {kv}: unknown field {key!r}")
        cast = int if isinstance(getattr(cfg, key), int) else float
        cfg = replace(cfg, **{key: cast(value)})
    return cfg


def _set_config(config: SegmentReaderConfig, key: str, kv: str) -> SegmentReaderConfig:
    """``config`` with one architecture field of ``--set config.KEY=VALUE`` replaced."""
    value = kv.partition("=")[2]
    if key == "size":
        m = re.fullmatch(r"(\d+)x(\d+)", value)
        if not m or min(int(m[1]), int(m[2])) < 16:
            raise SystemExit(f"--set {kv}: size is ROWSxCOLS, each at least 16")
        return replace(config, size=(int(m[1]), int(m[2])))
    if key in ("width", "embed"):
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--set {kv}: a positive integer")
        return replace(config, **{key: int(value)})
    raise SystemExit(f"--set {kv}: settable reader fields are size, width and embed")


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Paired per-fold differences ``a - b`` of every metric both summaries have."""
    fb = {f["fold"]: f for f in b["folds"]}
    out = {}
    for key, va in a["folds"][0].items():
        if key == "fold" or not isinstance(va, float):
            continue
        d = [f[key] - fb[f["fold"]][key] for f in a["folds"]
             if f["fold"] in fb and isinstance(fb[f["fold"]].get(key), float)]
        if d:
            out[key] = fold_differences(d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", type=Path, action="append", default=[])
    ap.add_argument("--limit", type=int, default=None, help="first N images only (dry runs)")
    ap.add_argument("--single-slice", action="store_true",
                    help="train and score on each image's own slice alone (no T1+T2 pairs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = parse_set(SegmentTraining(), args.overrides)
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(args.data, classes="all", cache=True)
    pairs = SequencePairs(ds)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    source = ds if args.single_slice else pairs  # a lone slice fills both planes
    items = [item_from_sample(source[i], ds.class_names) for i in range(n)]
    with args.folds_csv.open(newline="") as fh:
        folds = {r["image"]: int(r["fold"]) for r in csv.DictReader(fh)}
    t0 = time.perf_counter()
    for k in [int(x) for x in args.folds.split(",")]:
        run_fold(items, folds, k, cfg, args.out, log=lambda m: print(m, flush=True))
    summary = summarise(args.out, items, folds)
    summary.update({"data": args.data.name, "folds_csv": args.folds_csv.name,
                    "training": training_settings(cfg),
                    "reader": asdict(cfg.config), "images": n,
                    "inputs": "slice" if args.single_slice else "T1+T2",
                    "wall_s_this_run": round(time.perf_counter() - t0, 1),
                    "machine": {"cpu": cpu_name(), "threads": args.threads}})
    write_results(summary, args.results, args.compare)
    return 0


def write_results(summary: dict[str, Any], results: Path, others: list[Path]) -> None:
    """Pair ``summary`` with each other summary in ``others`` (``paired`` by file stem), write
    it to ``results`` (JSON) and print its headline metrics."""
    for other in others:
        summary.setdefault("paired", {})[other.stem] = compare(
            summary, json.loads(other.read_text()))
    atomic_write_text(results, json.dumps(summary, indent=1, default=float))
    print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    """The headline metrics of a summary (mean ± SD over folds) and the nested disc level."""
    for key in ("auc_spondylolisthesis", "image_auc_spondylolisthesis",
                "image_sens_at_spec90_spondylolisthesis", "ap50_spondylolisthesis",
                "auc_herniation", "auc_stenosis", "auc_degeneration", "auc_abnormal"):
        m = summary["mean"].get(key)
        if m:
            print(f"{key:42s} {m['mean']:.3f} ± {m['sd']:.3f}")
    dl = summary["disc_level"]
    print(f"disc level (nested Youden): sensitivity {dl['sensitivity']:.3f} "
          f"specificity {dl['specificity']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
