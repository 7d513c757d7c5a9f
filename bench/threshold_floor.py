"""Release thresholds chosen on disc records grouped from every box, or from the boxes at or
above a floor, scored by fold as diagnosis calls the discs.

The release chooses each class's threshold by F1 on disc records
(:func:`lumbardx.clinical.thresholds.disc_scores`) that group every box the detector keeps in
evaluation (down to :data:`~lumbardx.models.pretrained.EVAL_CONF`). The variant groups only
the boxes at or above :data:`FLOOR` (rule in ``docs/training.md``, fixed before it was scored).
Each fold is called at the thresholds chosen on the other folds' records under each variant;
its ground-truth discs are called as diagnosis calls them
(:func:`lumbardx.clinical.thresholds.diagnosis_discs`). Per fold and pooled: the F1 of
herniation and of spondylolisthesis over the ground-truth discs (a disc is positive when its
truth holds the class, called when its matched disc holds it; a disc nobody matched is not
called) and their mean, and the disc level (not normal) with Wilson 95% intervals. Paired per
fold, floor − every box, folds won:lost.

Usage::

    python bench/threshold_floor.py ../shared/data/yolospine-dev \\
        --detectors runs/cv-yolov5n-pairs-verifier/yolov5n \\
        --out bench/results/threshold_floor.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disc_level import ABNORMAL, add_detector_arguments, counts, point_of, read_detector_folds
from machine_info import cpu_name

from lumbardx.clinical.thresholds import (
    abnormal_discs,
    choose_thresholds,
    diagnosis_discs,
    disc_scores,
    finding_counts,
    thresholds_dict,
)
from lumbardx.data.boxes import Box
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.pretrained import EVAL_CONF

#: Score below which boxes are left out of the variant's records.
FLOOR = 0.05
CLASSES = ("normal", *ABNORMAL)
VARIANTS = {"every_box": 0.0, "floor": FLOOR}

Image = tuple[list[Box], list[Box], tuple[int, int]]  # truth, predicted boxes, (W, H)


def class_counts(discs: list[tuple[frozenset[str], frozenset[str]]], label: str
                 ) -> np.ndarray:
    """``[true positives, false positives, false negatives]`` of ``label`` over ``discs``
    (``(truth, called)`` per ground-truth disc; :func:`finding_counts`)."""
    c = finding_counts(discs, label)
    return np.array([c["called"], c["false_calls"], c["positives"] - c["called"]], np.int64)


def f1(c: np.ndarray) -> float:
    """F1 of ``[tp, fp, fn]`` (0 when there is nothing to call and nothing called)."""
    return float(2 * c[0] / max(2 * c[0] + c[1] + c[2], 1))


def score_variant(folds: dict[int, list[Image]], floor: float) -> dict[str, Any]:
    """Nested thresholds of one variant and its diagnosis calls, per fold and pooled."""
    records = {k: disc_scores(imgs, floor=floor) for k, imgs in folds.items()}
    rows, pooled = [], {c: np.zeros(3, np.int64) for c in ABNORMAL}
    level = []
    for k, imgs in folds.items():
        th = thresholds_dict(choose_thresholds(
            [r for j in folds if j != k for r in records[j]], list(CLASSES), "f1"))
        discs = [d for truth, pred, wh in imgs for d in diagnosis_discs(truth, pred, wh, th)]
        per_class = {c: class_counts(discs, c) for c in ABNORMAL}
        for c in ABNORMAL:
            pooled[c] += per_class[c]
        lv = counts(*abnormal_discs(discs))
        level.append(lv)
        rows.append({"fold": k, "thresholds": th,
                     **{f"f1_{c}": f1(per_class[c]) for c in ABNORMAL},
                     "f1_mean": float(np.mean([f1(per_class[c]) for c in ABNORMAL])),
                     "disc_sensitivity": float(lv[0] / max(lv[1], 1)),
                     "disc_specificity": float(lv[2] / max(lv[3], 1))})
    chosen_all = thresholds_dict(choose_thresholds(
        [r for k in folds for r in records[k]], list(CLASSES), "f1"))
    return {"floor": floor, "folds": rows,
            "pooled": {**{f"f1_{c}": f1(pooled[c]) for c in ABNORMAL},
                       **{f"counts_{c}": [int(v) for v in pooled[c]] for c in ABNORMAL},
                       "disc_level": point_of(np.sum(level, axis=0))},
            "thresholds_all_folds": chosen_all}


METRICS = ("f1_mean", *(f"f1_{c}" for c in ABNORMAL), "disc_sensitivity", "disc_specificity")


def compare(folds: dict[int, list[Image]]) -> dict[str, Any]:
    """Both variants, means over folds, and floor − every box paired by fold."""
    variants = {name: score_variant(folds, floor) for name, floor in VARIANTS.items()}
    a, b = variants["floor"]["folds"], variants["every_box"]["folds"]
    return {"variants": variants,
            "mean": {name: {m: fold_stat([r[m] for r in v["folds"]]).__dict__ for m in METRICS}
                     for name, v in variants.items()},
            "paired_floor_minus_every_box": {
                m: fold_differences([x[m] - y[m] for x, y in zip(a, b, strict=True)])
                for m in METRICS}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_arguments(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    folds = read_detector_folds(args)
    result = {"detectors": str(args.detectors), "candidates": f"every box down to {EVAL_CONF}",
              **compare(folds),
              "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for name, v in result["variants"].items():
        p = v["pooled"]
        print(f"{name:9s} pooled F1 herniation {p['f1_herniation']:.3f}, spondylolisthesis "
              f"{p['f1_spondylolisthesis']:.3f}; disc level "
              f"{100 * p['disc_level']['sensitivity']:.1f}% / "
              f"{100 * p['disc_level']['specificity']:.1f}%; thresholds on all folds "
              f"{v['thresholds_all_folds']}")
    for m, d in result["paired_floor_minus_every_box"].items():
        print(f"floor - every box {m}: {d['mean']:+.4f} [{d['wins']}:{d['losses']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
