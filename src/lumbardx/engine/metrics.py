"""Detection metrics with pycocotools: AP per class, mAP@0.5, mAP@0.5:0.95, confusion matrix.

AP is COCO's: precision is made monotone (each value replaced by the maximum precision at any
higher recall) and sampled at the 101 recall points ``0, 0.01, ..., 1`` (**101-point
interpolation**, as YOLOv5 ``val.py`` and COCO; not VOC2007's 11-point). Ground truth and
detections are turned into in-memory ``pycocotools.coco.COCO`` objects; category ids are the
class index + 1 (COCO reserves 0), image ids are 1-based positions. Boxes are xyxy in original
image pixels (``lumbardx.data.boxes``); COCO ``bbox`` is ``[x, y, w, h]`` in the same frame.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.ops import box_iou

if TYPE_CHECKING:
    from pycocotools.coco import COCO


@dataclass
class GroundTruth:
    """The reference boxes of one image (original pixels, xyxy ``float32 [N, 4]``)."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class Prediction:
    """Detections of one image: boxes xyxy ``float32 [K, 4]`` original pixels, scores
    ``float32 [K]`` in [0, 1], labels ``int64 [K]`` class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class CocoMetrics:
    """Results of :func:`coco_evaluate`.

    Attributes:
        ap50: AP@0.5 per class (``nan`` for a class without ground truth).
        ap50_95: AP averaged over IoU 0.5:0.05:0.95 per class.
        map50, map50_95: means over classes with ground truth (COCO ``stats[1]``, ``stats[0]``).
        precision: ``float64 [101, K]`` interpolated precision at IoU 0.5 on the recall grid
            (-1 where a class has no ground truth).
        recall_grid: ``float64 [101]`` recall points.
    """

    ap50: np.ndarray
    ap50_95: np.ndarray
    map50: float
    map50_95: float
    precision: np.ndarray
    recall_grid: np.ndarray


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _images(gts: Sequence[GroundTruth]) -> list[dict]:
    return [{"id": i + 1, "file_name": g.image_id, "width": int(g.width), "height": int(g.height)}
            for i, g in enumerate(gts)]


def _categories(class_names: Sequence[str]) -> list[dict]:
    return [{"id": k + 1, "name": n, "supercategory": "spine"} for k, n in enumerate(class_names)]


def predictions_to_coco_json(
    gts: Sequence[GroundTruth], predictions: Sequence[Prediction], class_names: Sequence[str]
) -> dict:
    """One self-contained COCO-style result object.

    Returns:
        ``{"images": [{id, file_name, width, height}], "categories": [{id, name}],
        "annotations": [{id, image_id, category_id, bbox: [x, y, w, h] pixels, area, score,
        iscrowd}]}``; category id = class index + 1.
    """
    anns = []
    for i, p in enumerate(predictions):
        for box, score, label in zip(p.boxes, p.scores, p.labels):
            xywh = _xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                         "bbox": xywh, "area": xywh[2] * xywh[3], "score": float(score),
                         "iscrowd": 0})
    return {"images": _images(gts), "categories": _categories(class_names), "annotations": anns}


def ground_truth_to_coco_json(gts: Sequence[GroundTruth], class_names: Sequence[str]) -> dict:
    """The ground truth as a COCO dataset dict (same ids as :func:`predictions_to_coco_json`)."""
    anns = []
    for i, g in enumerate(gts):
        for box, label in zip(g.boxes, g.labels):
            xywh = _xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                         "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    return {"images": _images(gts), "categories": _categories(class_names), "annotations": anns}


def _coco(dataset: dict) -> COCO:
    from pycocotools.coco import COCO  # imported here: prediction alone does not need it

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(
    gts: Sequence[GroundTruth],
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    max_dets: int = 100,
) -> CocoMetrics:
    """COCO bbox evaluation (``COCOeval``, area range "all", ``max_dets`` per image)."""
    from pycocotools.cocoeval import COCOeval

    if len(gts) != len(predictions):
        raise ValueError(f"{len(gts)} images but {len(predictions)} predictions")
    gt = _coco(ground_truth_to_coco_json(gts, class_names))
    dt = _coco(predictions_to_coco_json(gts, predictions, class_names))
    ev = COCOeval(gt, dt, iouType="bbox")
    ev.params.maxDets = [1, 10, max_dets]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [T=10, R=101, K]; area all, max_dets
    nk = len(class_names)
    ap50 = np.full(nk, np.nan)
    ap = np.full(nk, np.nan)
    for k in range(nk):
        p50 = prec[0, :, k]
        if (p50 > -1).any():
            ap50[k] = p50[p50 > -1].mean()
            pk = prec[:, :, k]
            ap[k] = pk[pk > -1].mean()
    return CocoMetrics(
        ap50=ap50,
        ap50_95=ap,
        map50=float(max(ev.stats[1], 0.0)) if np.isfinite(ap50).any() else float("nan"),
        map50_95=float(max(ev.stats[0], 0.0)) if np.isfinite(ap).any() else float("nan"),
        precision=prec[0].astype(np.float64),
        recall_grid=np.asarray(ev.params.recThrs, np.float64),
    )


def confusion_matrix(
    gts: Sequence[GroundTruth],
    predictions: Sequence[Prediction],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> np.ndarray:
    """``int64 [K + 1, K + 1]``: rows true class, columns predicted class; index ``K`` is
    background (row ``K``: false positives; column ``K``: missed boxes).

    Detections with ``score >= score_threshold`` are matched to ground truth regardless of
    class, greedily by decreasing IoU, each box at most once, when IoU > ``iou_threshold``
    (YOLOv5 ``utils/metrics.py`` ``ConfusionMatrix``).
    """
    k = num_classes
    m = np.zeros((k + 1, k + 1), np.int64)
    for g, p in zip(gts, predictions):
        keep = p.scores >= score_threshold
        pb, pl = p.boxes[keep], p.labels[keep]
        gl = np.asarray(g.labels, np.int64)
        matched_g, matched_p = set(), set()
        if len(g.boxes) and len(pb):
            iou = box_iou(torch.as_tensor(g.boxes, dtype=torch.float64),
                          torch.as_tensor(pb, dtype=torch.float64)).numpy()
            gi, pi = np.nonzero(iou > iou_threshold)
            for idx in np.argsort(-iou[gi, pi], kind="stable"):
                a, b = int(gi[idx]), int(pi[idx])
                if a in matched_g or b in matched_p:
                    continue
                matched_g.add(a)
                matched_p.add(b)
                m[gl[a], int(pl[b])] += 1
        for a in range(len(gl)):
            if a not in matched_g:
                m[gl[a], k] += 1
        for b in range(len(pl)):
            if b not in matched_p:
                m[k, int(pl[b])] += 1
    return m
