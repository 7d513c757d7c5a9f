"""Does reading a patient's T1 and T2 slices together help? Fusion of paired predictions.

A lumbar MRI study holds a T1- and a T2-weighted sagittal series. In ``yolospine-dev`` the
mid-sagittal T1 and T2 slices of a patient are co-registered (identical boxes), so the
detections on one can confirm or contradict the other. This benchmark scores held-out
predictions (``eval/predictions.json`` of ``lumbardx train --fold`` / ``crossval`` runs, one file
per fold) before and after fusing each image with its partner:

* ``mean``: a box's score becomes the mean of its own and the best same-class partner box's
  score (IoU >= ``--iou``, 0 when the partner has none); partner boxes without a match are
  added with half their score. This is a two-reader average where silence counts as 0.
* ``max``: as ``mean`` but the larger score is kept (and unmatched partner boxes keep theirs).

Per-class AP@0.5 / mAP@0.5 (pycocotools, COCO 101-point, :func:`coco_evaluate`) on the images
that have a partner, and on all images. Images without a partner keep their predictions.

Usage::

    python bench/pair_fusion.py ../shared/data/yolospine-dev \
        runs/cv/yolov5n/fold*/eval/predictions.json --out bench/results/pair_fusion.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from lumbardx.clinical.reads import load_predictions as read_coco_predictions
from lumbardx.data.dataset import LumbarDataset
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.io import atomic_write_text

RULES = ("mean", "max")


def load_predictions(paths: Sequence[Path], class_names: Sequence[str]
                     ) -> dict[str, Prediction]:
    """``image_id -> Prediction`` from COCO-style prediction files, read and checked by
    :func:`lumbardx.clinical.reads.load_predictions` (study class names)."""
    out: dict[str, Prediction] = {}
    for path in paths:
        boxes, _ = read_coco_predictions(path)
        for name, bs in boxes.items():
            out[name] = Prediction(
                np.array([[b.x1, b.y1, b.x2, b.y2] for b in bs], np.float32).reshape(-1, 4),
                np.array([b.score for b in bs], np.float32),
                np.array([class_names.index(b.label) for b in bs], np.int64))
    return out


def held_out_set(data: Path, prediction_files: Sequence[Path]
                 ) -> tuple[LumbarDataset, dict[str, Prediction], dict[str, GroundTruth]]:
    """The dataset (study classes), its held-out predictions (:func:`load_predictions`) and
    the ground truth of every predicted image, both by image id.

    Raises:
        SystemExit: a predicted image is not in ``data``.
    """
    ds = LumbarDataset(data, classes="study")
    preds = load_predictions(prediction_files, list(ds.class_names))
    recs = {r.image_id: r for r in ds.records}
    missing = sorted(set(preds) - set(recs))
    if missing:
        raise SystemExit(f"{len(missing)} predicted images are not in {data}: {missing[:3]}")
    gts = {i: GroundTruth(i, recs[i].width, recs[i].height, recs[i].boxes, recs[i].labels)
           for i in preds}
    return ds, preds, gts


def fuse(own: Prediction, partner: Prediction, rule: str, iou: float = 0.5) -> Prediction:
    """``own`` rescored with ``partner`` (see the module docstring); boxes stay ``own``'s, and
    partner boxes without a same-class match are appended."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    scores = own.scores.copy()
    used = np.zeros(len(partner.scores), bool)
    if len(own.scores) and len(partner.scores):
        ious = box_iou(torch.from_numpy(own.boxes), torch.from_numpy(partner.boxes)).numpy()
        ious[own.labels[:, None] != partner.labels[None, :]] = 0.0
        best = ious.argmax(1)
        hit = ious[np.arange(len(best)), best] >= iou
    else:
        best = np.zeros(len(own.scores), np.int64)
        hit = np.zeros(len(own.scores), bool)
    other = np.where(hit, partner.scores[best] if len(partner.scores) else 0.0, 0.0)
    scores = (scores + other) / 2 if rule == "mean" else np.maximum(scores, other)
    used[best[hit]] = True
    extra = ~used
    extra_scores = partner.scores[extra] / 2 if rule == "mean" else partner.scores[extra]
    return Prediction(np.concatenate([own.boxes, partner.boxes[extra]]),
                      np.concatenate([scores, extra_scores]).astype(np.float32),
                      np.concatenate([own.labels, partner.labels[extra]]))


def partners(ds: LumbarDataset, ids: set[str]) -> dict[str, str]:
    """``image_id -> image_id`` of the same patient's other sequence (T1 <-> T2), for patients
    with exactly one T1 and one T2 image among ``ids``."""
    by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rec in ds.records:
        if rec.image_id in ids and rec.sequence in ("T1", "T2"):
            by_patient[rec.patient][rec.sequence].append(rec.image_id)
    out = {}
    for seqs in by_patient.values():
        if len(seqs["T1"]) == 1 and len(seqs["T2"]) == 1:
            a, b = seqs["T1"][0], seqs["T2"][0]
            out[a], out[b] = b, a
    return out


def _scores(m, names: Sequence[str]) -> dict:
    return {"ap50": {n: float(v) for n, v in zip(names, m.ap50)}, "map50": float(m.map50),
            "map50_95": float(m.map50_95)}


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("predictions", type=Path, nargs="+")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    ds, preds, truth = held_out_set(args.data, args.predictions)
    names = list(ds.class_names)
    pair = partners(ds, set(preds))
    result: dict = {"data": args.data.name, "prediction_files": [str(x) for x in
                                                                   args.predictions],
                    "images": len(preds), "paired_images": len(pair), "iou": args.iou}
    for subset, ids in (("paired", sorted(pair)), ("all", sorted(preds))):
        gts = [truth[i] for i in ids]
        row = {"images": len(ids), "none": _scores(coco_evaluate(gts, [preds[i] for i in ids],
                                                                 names), names)}
        for rule in RULES:
            fused = [fuse(preds[i], preds[pair[i]], rule, args.iou) if i in pair else preds[i]
                     for i in ids]
            row[rule] = _scores(coco_evaluate(gts, fused, names), names)
        result[subset] = row
    text = json.dumps(result, indent=1)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    for subset in ("paired", "all"):
        for rule in ("none", *RULES):
            s = result[subset][rule]
            print(f"{subset:6s} {rule:4s} mAP50 {s['map50']:.3f} " + " ".join(
                f"{k} {v:.3f}" for k, v in s["ap50"].items()))
    return result


if __name__ == "__main__":
    main()
