"""Test-time scale augmentation: each fold detector reads its held-out images at several input
sizes, the boxes fused, scored by fold against the training size alone.

The detector is trained at 384 px with a scale jitter of +-50 % (``AugmentConfig.scale``) and
read at one size in diagnosis. Reading the same slice at several sizes and averaging the scores
of boxes that agree is an ensemble without training, the way YOLOv5's ``augment=True`` reads at
several scales. Two rules (``docs/segments.md``, fixed before they were scored), on the boxes of
:data:`SIZES` (each down to :data:`~lumbardx.models.pretrained.EVAL_CONF`, T1 and T2 together
where the image has a partner, the verifier applied as in diagnosis):

* ``fused`` (:func:`fuse_sizes`): per class, the highest-scoring box not yet taken and every box
  overlapping it at IoU >= :data:`FUSE_IOU` form a cluster; its box is the score-weighted mean
  and its score the mean over the sizes of each size's best score in the cluster (0 for a size
  with none), so a box every size agrees on keeps its score and one that a single size sees
  loses two thirds of it;
* ``concat`` (:func:`concat_sizes`): every size's boxes together, class-wise NMS at the
  model's own IoU (YOLOv5's test-time augmentation).

Scored per fold against the training size alone (``single``): COCO AP@0.5 per class
(pycocotools, 101-point), the slip image-level AUC (an image's highest slip score), and the disc
level as diagnosis groups boxes (:func:`lumbardx.clinical.thresholds.pooled_diagnosis_calls`) at
the F1 thresholds chosen on the other folds' every-box discs of the same rule (nested).
Paired per-fold differences, folds won:lost.

Usage::

    python bench/scale_tta.py ../shared/data/yolospine-dev \
        --detectors runs/cv-yolov5n-pairs-verifier/yolov5n --out bench/results/scale_tta.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disc_level import ABNORMAL, add_detector_arguments, counts, detector_folds, point_of
from machine_info import cpu_name

from lumbardx.clinical.findings import SLIP, study_class
from lumbardx.clinical.thresholds import (
    choose_thresholds,
    disc_scores,
    pooled_diagnosis_calls,
    thresholds_dict,
)
from lumbardx.data.boxes import Box
from lumbardx.engine.letterbox import letterbox_planes
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.model_input import three_channels
from lumbardx.engine.segment_crossval import auc
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.pretrained import EVAL_CONF, load_detector, set_candidate_floor
from lumbardx.stages.detect import PAD_VALUE

#: Input sizes read (px): the training size and one step of 64 px either side.
SIZES = (320, 384, 448)
#: The training size, the reference every rule is paired against.
BASE = 384
#: IoU at which boxes of one class from the sizes are one cluster (:func:`fuse_sizes`).
FUSE_IOU = 0.55
CLASSES = ("normal", *ABNORMAL)
RULES = ("single", "fused", "concat")

Image = tuple[list[Box], dict[int, list[Box]], tuple[int, int]]  # truth, boxes per size, (W, H)


def detect_at(model: torch.nn.Module, names: list[str], planes: np.ndarray, size: int
              ) -> list[Box]:
    """Boxes of ``model`` (a ``Detector`` in eval mode) on ``planes`` (``uint8 [2, H, W]``,
    T1 and T2) letterboxed to ``size`` px, in image pixels, with study-class names."""
    lb, geo = letterbox_planes(planes, size, PAD_VALUE)
    x = three_channels(torch.from_numpy(lb)[None].float().div_(255.0))  # [1, 3, S, S]
    det = model(x)[0]
    boxes = geo.unmap_boxes(det["boxes"].float().numpy())
    out = []
    for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), det["scores"].tolist(),
                                      det["labels"].tolist()):
        label = study_class(names[int(c)])
        if label and x2 > x1 and y2 > y1:
            out.append(Box(label, x1, y1, x2, y2, score=float(s)))
    return out


def _arrays(boxes: list[Box], label: str) -> tuple[torch.Tensor, torch.Tensor]:
    sel = [b for b in boxes if b.label == label]
    xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in sel], dtype=torch.float32)
    return xyxy.reshape(-1, 4), torch.tensor([b.score for b in sel], dtype=torch.float32)


def fuse_sizes(per_size: list[list[Box]], iou: float = FUSE_IOU) -> list[Box]:
    """Clusters of overlapping same-class boxes across sizes (highest score first, IoU >=
    ``iou`` with it); box: score-weighted mean; score: mean over sizes of each size's best
    score in the cluster."""
    n = len(per_size)
    out: list[Box] = []
    for label in CLASSES:
        parts = [_arrays(boxes, label) for boxes in per_size]
        xyxy = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        size_of = torch.cat([torch.full((len(p[1]),), i) for i, p in enumerate(parts)])
        if len(scores) == 0:
            continue
        order = scores.argsort(descending=True)
        xyxy, scores, size_of = xyxy[order], scores[order], size_of[order]
        overlap = box_iou(xyxy, xyxy) >= iou  # [N, N]
        free = torch.ones(len(scores), dtype=torch.bool)
        for i in range(len(scores)):
            if not free[i]:
                continue
            members = overlap[i] & free
            free &= ~members
            s, w = scores[members], size_of[members]
            best = torch.zeros(n).scatter_reduce(0, w, s, reduce="amax")
            box = (xyxy[members] * s[:, None]).sum(0) / s.sum()
            out.append(Box(label, *map(float, box), score=float(best.mean())))
    return out


def concat_sizes(per_size: list[list[Box]], iou: float) -> list[Box]:
    """Every size's boxes together, class-wise NMS at ``iou``."""
    boxes = [b for bs in per_size for b in bs]
    if not boxes:
        return []
    xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=torch.float32)
    scores = torch.tensor([b.score for b in boxes], dtype=torch.float32)
    groups = torch.tensor([CLASSES.index(b.label) for b in boxes])
    return [boxes[i] for i in batched_nms(xyxy, scores, groups, iou).tolist()]


def read_fold(k: int, ds: Any, pairs: Any, fold_of: dict[str, int], detectors: Path
              ) -> tuple[list[Image], float]:
    """Fold ``k``'s held-out images read at every size of :data:`SIZES`, and the model's NMS
    IoU."""
    m = load_detector(detectors / f"fold{k}" / "last.pt", "cpu", backend="torch")
    set_candidate_floor(m.model, EVAL_CONF, m.backend)
    model = m.model.eval()
    out = []
    for i, rec in enumerate(ds.records):
        if fold_of.get(rec.image_id) != k:
            continue
        sample = ds[i]
        with torch.inference_mode():
            per_size = {s: detect_at(model, m.class_names, pairs[i].image, s) for s in SIZES}
        truth = [Box(study_class(ds.class_names[int(c)]), *map(float, b))
                 for b, c in zip(sample.boxes, sample.labels, strict=True)
                 if study_class(ds.class_names[int(c)])]
        h, w = sample.image.shape
        out.append((truth, per_size, (w, h)))
    return out, float(model.postprocess.iou_thresh)


def apply_rule(rule: str, images: list[Image], nms_iou: float
               ) -> list[tuple[list[Box], list[Box], tuple[int, int]]]:
    """``(truth, boxes, (W, H))`` per image under ``rule`` (:data:`RULES`)."""
    combine: Callable[[list[list[Box]]], list[Box]] = {
        "single": lambda ps: ps[SIZES.index(BASE)],
        "fused": fuse_sizes,
        "concat": lambda ps: concat_sizes(ps, nms_iou),
    }[rule]
    return [(truth, combine([per_size[s] for s in SIZES]), wh) for truth, per_size, wh in images]


def box_scores(images: list[tuple[list[Box], list[Box], tuple[int, int]]]) -> dict[str, float]:
    """AP@0.5 per class and the slip image AUC of one fold's images."""
    gts, dts, image_scores, positive = [], [], [], []

    def arrays(boxes: list[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xyxy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32).reshape(-1, 4)
        scores = np.array([1.0 if b.score is None else b.score for b in boxes], np.float32)
        return xyxy, scores, np.array([CLASSES.index(b.label) for b in boxes], np.int64)

    for i, (truth, pred, (w, h)) in enumerate(images):
        t_xyxy, _, t_lab = arrays(truth)
        gts.append(GroundTruth(str(i), w, h, t_xyxy, t_lab))
        dts.append(Prediction(*arrays(pred)))
        slips = [b.score for b in pred if b.label == SLIP]
        image_scores.append(max(slips, default=0.0))
        positive.append(any(b.label == SLIP for b in truth))
    ev = coco_evaluate(gts, dts, list(CLASSES))
    return {**{f"ap50_{c}": float(ev.ap50[j]) for j, c in enumerate(CLASSES)},
            "map50": float(np.mean(ev.ap50)),
            "slip_image_auc": auc(np.array(image_scores), np.array(positive, bool))}


def score_rule(folds: dict[int, list], rule: str, nms_iou: dict[int, float]) -> dict[str, Any]:
    """:func:`score_folds` of ``rule``'s boxes."""
    return score_folds({k: apply_rule(rule, imgs, nms_iou[k]) for k, imgs in folds.items()})


def score_folds(images: dict[int, list[tuple[list[Box], list[Box], tuple[int, int]]]]
                ) -> dict[str, Any]:
    """Per-fold box scores (:func:`box_scores`) and the nested disc level (diagnosis grouping,
    each fold at the F1 thresholds of the other folds' every-box discs, pooled) of one reading
    of the folds: ``images[k]`` holds ``(truth, boxes, (W, H))`` per held-out image of fold
    ``k``."""
    records = {k: disc_scores(imgs) for k, imgs in images.items()}
    per_fold, disc_counts = [], []
    for k in images:
        th = thresholds_dict(choose_thresholds(
            [r for j in images if j != k for r in records[j]], list(CLASSES), "f1"))
        c = counts(*pooled_diagnosis_calls(images[k], th))
        disc_counts.append(c)
        per_fold.append({"fold": k, **box_scores(images[k]), "thresholds": th,
                         "disc_sensitivity": float(c[0] / max(c[1], 1)),
                         "disc_specificity": float(c[2] / max(c[3], 1))})
    return {"folds": per_fold, "disc_level_pooled": point_of(np.sum(disc_counts, axis=0))}


METRICS = ("ap50_spondylolisthesis", "slip_image_auc", "ap50_herniation", "ap50_normal", "map50",
           "disc_sensitivity", "disc_specificity")


def compare(folds: dict[int, list], nms_iou: dict[int, float]) -> dict[str, Any]:
    """Every rule scored, means over folds, and each rule paired by fold against ``single``."""
    rules = {r: score_rule(folds, r, nms_iou) for r in RULES}
    out: dict[str, Any] = {"rules": rules, "mean": {}, "paired_vs_single": {}}
    for r, res in rules.items():
        out["mean"][r] = {m: fold_stat([f[m] for f in res["folds"]]).__dict__ for m in METRICS}
        if r != "single":
            out["paired_vs_single"][r] = {
                m: fold_differences([f[m] - g[m] for f, g in
                                     zip(res["folds"], rules["single"]["folds"], strict=True)])
                for m in METRICS}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_arguments(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ds, pairs, fold_of, ks = detector_folds(args)
    folds, nms_iou = {}, {}
    for k in ks:
        folds[k], nms_iou[k] = read_fold(k, ds, pairs, fold_of, args.detectors)
        print(f"fold {k}: {len(folds[k])} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {"detectors": str(args.detectors), "sizes": list(SIZES), "base": BASE,
              "fuse_iou": FUSE_IOU, "candidates": f"every box down to {EVAL_CONF}",
              **compare(folds, nms_iou),
              "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for r in RULES:
        mean = result["mean"][r]
        line = ", ".join(f"{m} {mean[m]['mean']:.3f}" for m in METRICS)
        print(f"{r:7s} {line}")
    for r, diffs in result["paired_vs_single"].items():
        line = ", ".join(f"{m} {d['mean']:+.3f} [{d['wins']}:{d['losses']}]"
                         for m, d in diffs.items())
        print(f"{r} - single: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
