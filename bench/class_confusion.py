"""Where does a class lose its AP? Misses and false positives of one class, by what they overlap.

For held-out predictions (``eval/predictions.json`` of ``lumbardx train --fold`` / ``crossval``
runs, one file per fold) and one class ``C`` (default ``spondylolisthesis``):

* **ground-truth boxes of C**: how many some prediction of *any* class localises (IoU >= 0.5),
  how many a prediction *of C* localises, and the score of the best such C prediction
  (0 when there is none): a class can be found in the right place yet scored too low;
* **false positives of C** (no C box with IoU >= 0.5): which ground-truth class they sit on
  (the class of the best-overlapping box when its IoU >= 0.5, else ``background``), counted at
  every score and above the median score of the true C detections;
* **AP without each confusion**: C's AP@0.5 after dropping the false positives that sit on one
  other class, an upper bound of what separating C from that class would give.

AP is COCO 101-point AP@0.5 (pycocotools, :func:`lumbardx.engine.metrics.coco_evaluate`), on
all predicted images.

Usage::

    python bench/class_confusion.py ../shared/data/yolospine-dev \
        runs/cv/yolov5n/fold*/eval/predictions.json --out bench/results/class_confusion.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_fusion import held_out_set

from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.io import atomic_write_text

BACKGROUND = "background"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return box_iou(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()


def analyse(gts: Sequence[GroundTruth], preds: Sequence[Prediction], names: Sequence[str],
            target: str, iou: float = 0.5) -> dict:
    """The analysis of the module docstring for class ``target``; ``gts[i]`` and ``preds[i]``
    are the same image (boxes in pixels ``x1, y1, x2, y2``)."""
    c = list(names).index(target)
    found_any, found_as_c, best_scores = 0, 0, []
    fps: list[tuple[float, str]] = []  # (score, class the false positive sits on)
    on_class: list[np.ndarray] = []  # per image: which C predictions are false, on what
    for gt, pr in zip(gts, preds):
        g_boxes = np.asarray(gt.boxes, np.float32).reshape(-1, 4)
        g_labels = np.asarray(gt.labels, np.int64)
        is_c = pr.labels == c
        ious = _iou(g_boxes, pr.boxes)  # (gt, pred)
        for j in np.flatnonzero(g_labels == c):
            hits = ious[j] >= iou
            found_any += bool(hits.any())
            mine = hits & is_c
            found_as_c += bool(mine.any())
            best_scores.append(float(pr.scores[mine].max()) if mine.any() else 0.0)
        sits = np.full(len(pr.labels), "", object)
        for k in np.flatnonzero(is_c):
            col = ious[:, k] if len(g_boxes) else np.zeros(0)
            if ((g_labels == c) & (col >= iou)).any():
                continue  # a true detection (or a duplicate of one)
            j = int(col.argmax()) if len(col) else -1
            where = names[g_labels[j]] if j >= 0 and col[j] >= iou else BACKGROUND
            sits[k] = where
            fps.append((float(pr.scores[k]), where))
        on_class.append(sits)

    scores = np.asarray(best_scores)
    detected = scores[scores > 0]
    median_true = float(np.median(detected)) if len(detected) else float("nan")
    ap = coco_evaluate(gts, preds, names).ap50[c]
    without = {}
    for other in sorted({w for _, w in fps}):
        kept = [Prediction(pr.boxes[sits != other], pr.scores[sits != other],
                           pr.labels[sits != other]) for pr, sits in zip(preds, on_class)]
        without[other] = float(coco_evaluate(gts, kept, names).ap50[c])
    return {
        "class": target, "iou": iou, "ground_truth_boxes": len(best_scores),
        "localised_by_any_class": found_any, "localised_as_class": found_as_c,
        "true_score_quantiles": {q: float(np.quantile(scores, float(q))) if len(scores)
                                 else float("nan") for q in ("0.25", "0.5", "0.75", "0.9")},
        "median_score_of_true_detections": median_true,
        "false_positives": dict(Counter(w for _, w in fps)),
        "false_positives_above_median_true": dict(Counter(
            w for s, w in fps if np.isfinite(median_true) and s > median_true)),
        "ap50": float(ap), "ap50_without_false_positives_on": without,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("predictions", type=Path, nargs="+")
    p.add_argument("--class", dest="target", default="spondylolisthesis")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    ds, preds, truth = held_out_set(args.data, args.predictions)
    names = list(ds.class_names)
    if args.target not in names:
        raise SystemExit(f"--class {args.target!r} is not one of {names}")
    ids = sorted(preds)
    gts = [truth[i] for i in ids]
    result = {"data": args.data.name, "prediction_files": [str(x) for x in args.predictions],
              "images": len(ids), **analyse(gts, [preds[i] for i in ids], names, args.target,
                                            args.iou)}
    text = json.dumps(result, indent=1)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
