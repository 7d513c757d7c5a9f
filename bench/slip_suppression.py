"""One slip, one box: a second spondylolisthesis box over the same slip dropped, scored by fold.

The detector's post-process suppresses overlapping boxes of one class at IoU 0.45. A slip box
spans a whole motion segment, and one slip is sometimes boxed twice, a level apart, with the
boxes overlapping less than that. Rule (``docs/segments.md``, fixed before it was scored): a
spondylolisthesis box is dropped when a higher-scoring spondylolisthesis box overlaps it at IoU
>= :data:`SUPPRESS_IOU` (:func:`torchvision.ops.nms`). Each fold detector reads its held-out
images (T1 and T2 together where the image has a partner, every box down to
:data:`~lumbardx.models.pretrained.EVAL_CONF`), and the slip class is scored with and without
the rule: COCO AP@0.5 (pycocotools, 101-point) and the image-level AUC (an image's score is
its highest slip score, 0 without a slip box). Paired per-fold differences, folds won:lost.

Usage::

    python bench/slip_suppression.py ../shared/data/yolospine-dev \
        --detectors runs/cv-yolov5n-pairs-verifier/yolov5n \
        --out bench/results/slip_suppression.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import nms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disc_level import add_detector_arguments, read_detector_folds
from machine_info import cpu_name

from lumbardx.clinical.findings import SLIP
from lumbardx.data.boxes import Box
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.segment_crossval import auc
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text

SUPPRESS_IOU = 0.3


def slip_arrays(boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
    """The spondylolisthesis boxes of ``boxes``: ``float32 [N, 4]`` xyxy and ``float32 [N]``
    scores (1 for ground truth)."""
    slips = [b for b in boxes if b.label == SLIP]
    xyxy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in slips], np.float32).reshape(-1, 4)
    scores = np.array([1.0 if b.score is None else b.score for b in slips], np.float32)
    return xyxy, scores


def suppress(xyxy: np.ndarray, scores: np.ndarray, iou: float = SUPPRESS_IOU
             ) -> tuple[np.ndarray, np.ndarray]:
    """The boxes no higher-scoring box overlaps at IoU >= ``iou``, highest score first."""
    if len(xyxy) == 0:
        return xyxy, scores
    # nms drops a box overlapping a kept one at IoU > its threshold; nudge down for ">="
    keep = nms(torch.from_numpy(xyxy), torch.from_numpy(scores), iou - 1e-6).numpy()
    return xyxy[keep], scores[keep]


def score_fold(images: list[tuple[list[Box], list[Box], tuple[int, int]]], rule: bool
               ) -> dict[str, float]:
    """Slip AP@0.5 and image AUC of one fold's images, with or without the rule."""
    gts, dts, image_scores, positive = [], [], [], []
    for i, (truth, pred, (w, h)) in enumerate(images):
        t_xyxy, _ = slip_arrays(truth)
        p_xyxy, p_scores = slip_arrays(pred)
        if rule:
            p_xyxy, p_scores = suppress(p_xyxy, p_scores)
        gts.append(GroundTruth(str(i), w, h, t_xyxy, np.zeros(len(t_xyxy), np.int64)))
        dts.append(Prediction(p_xyxy, p_scores, np.zeros(len(p_xyxy), np.int64)))
        image_scores.append(float(p_scores.max()) if len(p_scores) else 0.0)
        positive.append(len(t_xyxy) > 0)
    ev = coco_evaluate(gts, dts, [SLIP])
    return {"ap50": float(ev.ap50[0]),
            "image_auc": auc(np.array(image_scores), np.array(positive, bool)),
            "slip_boxes": int(sum(len(d.scores) for d in dts))}


def compare(folds: dict[int, list]) -> dict[str, Any]:
    """Per fold both scorings, their means over folds and the paired differences (rule −
    none)."""
    rows = []
    for k, images in folds.items():
        none, rule = score_fold(images, False), score_fold(images, True)
        rows.append({"fold": k, **{f"{m}_none": v for m, v in none.items()},
                     **{f"{m}_rule": v for m, v in rule.items()}})
    out: dict[str, Any] = {"folds": rows, "mean": {}, "paired_rule_minus_none": {}}
    for m in ("ap50", "image_auc"):
        for variant in ("none", "rule"):
            out["mean"][f"{m}_{variant}"] = fold_stat([r[f"{m}_{variant}"] for r in rows]
                                                      ).__dict__
        out["paired_rule_minus_none"][m] = fold_differences(
            [r[f"{m}_rule"] - r[f"{m}_none"] for r in rows])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_arguments(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    folds = read_detector_folds(args)
    result = {"detectors": str(args.detectors), "suppress_iou": SUPPRESS_IOU,
              **compare(folds),
              "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for m in ("ap50", "image_auc"):
        d = result["paired_rule_minus_none"][m]
        print(f"{m}: none {result['mean'][m + '_none']['mean']:.3f}, rule "
              f"{result['mean'][m + '_rule']['mean']:.3f}; rule - none {d['mean']:+.4f} "
              f"[{d['wins']}:{d['losses']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
