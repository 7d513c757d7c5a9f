"""Evaluation and prediction: run a detector on original images, score it with pycocotools.

Images are letterboxed to ``image_size`` (:mod:`lumbardx.engine.letterbox`), the model's boxes
(input pixels) are mapped back to **original image pixels** before scoring or returning. AP is
COCO's 101-point interpolated AP (:mod:`lumbardx.engine.metrics`). Inference time is measured
with ``time.perf_counter`` around the model call (forward + the model's post-processing, CUDA
synchronised), excluding one warm-up batch, and reported per image in milliseconds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lumbardx.data.boxes import Sample
from lumbardx.data.errors import InputError
from lumbardx.engine.ema import unwrap
from lumbardx.engine.letterbox import Letterbox, letterbox_planes
from lumbardx.engine.metrics import (
    GroundTruth,
    Prediction,
    coco_evaluate,
    confusion_matrix,
    predictions_to_coco_json,
)
from lumbardx.engine.model_input import three_channels
from lumbardx.engine.pipeline import sample_arrays
from lumbardx.engine.plots import plot_confusion_matrix, plot_pr_curves

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Scores of one evaluation.

    Attributes:
        class_names: class names, index = class.
        ap50: AP@0.5 per class name (``nan`` when the class has no ground truth).
        ap50_95: AP@0.5:0.95 per class name.
        map50: mean AP@0.5 over classes with ground truth (COCO 101-point).
        map50_95: COCO mAP@0.5:0.95.
        precision: ``[101, K]`` precision at IoU 0.5 on the ``recall`` grid.
        recall: ``[101]`` recall grid.
        confusion: ``int64 [K+1, K+1]`` rows true / columns predicted, last = background.
        ms_per_image: inference time per image in milliseconds (warm-up excluded).
        num_images: images evaluated.
        num_gt: ground-truth boxes per class name.
        ground_truth, predictions: per image, original pixels (for exports and plots).
        files: figures and JSON written, by name.
        skipped: samples that could not be used (image id -> problem); evaluation went on.
    """

    class_names: list[str]
    ap50: dict[str, float]
    ap50_95: dict[str, float]
    map50: float
    map50_95: float
    precision: np.ndarray
    recall: np.ndarray
    confusion: np.ndarray
    ms_per_image: float
    num_images: int
    num_gt: dict[str, int]
    ground_truth: list[GroundTruth] = field(default_factory=list, repr=False)
    predictions: list[Prediction] = field(default_factory=list, repr=False)
    files: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``nan`` -> ``None``; arrays as lists; no per-image data)."""

        def num(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {
            "class_names": list(self.class_names),
            "ap50": {k: num(v) for k, v in self.ap50.items()},
            "ap50_95": {k: num(v) for k, v in self.ap50_95.items()},
            "map50": num(self.map50),
            "map50_95": num(self.map50_95),
            "interpolation": "COCO 101-point",
            "confusion": self.confusion.tolist(),
            "ms_per_image": num(self.ms_per_image),
            "num_images": self.num_images,
            "num_gt": dict(self.num_gt),
            "files": dict(self.files),
            "skipped": dict(self.skipped),
        }

    def coco_json(self) -> dict:
        """The predictions as one COCO-style object (:func:`predictions_to_coco_json`)."""
        return predictions_to_coco_json(self.ground_truth, self.predictions, self.class_names)


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 2 and img.dtype == np.uint8:
        return img  # a T1/T2 pair [2, H, W] (lumbardx.data.pairs), channels first
    if img.ndim == 3 and img.shape[-1] in (1, 3, 4):
        img = img[..., :3].mean(-1) if img.shape[-1] > 1 else img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255)
    return img.astype(np.uint8)


@torch.inference_mode()
def _run(
    model: nn.Module,
    images: Sequence[Any],
    image_size: int,
    device: torch.device,
    batch_size: int,
    pad_value: int,
    load: Any,
) -> tuple[list[Prediction], float]:
    net = unwrap(model)
    was_training = net.training
    net.eval()
    preds: list[Prediction] = []
    elapsed, timed = 0.0, 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for start in range(0, len(images), batch_size):
        geos: list[Letterbox] = []
        arrays = []
        for item in images[start : start + batch_size]:
            img = load(item)
            if img is None:  # unreadable, reported by the caller
                continue
            lb, geo = letterbox_planes(img, image_size, pad_value)  # gray, or a T1/T2 pair
            arrays.append(lb)
            geos.append(geo)
        if not arrays:
            continue
        x = three_channels(torch.from_numpy(np.stack(arrays)).to(device).float().div_(255.0))
        if timed == 0:
            net(x)  # warm-up, not timed
        sync()
        t0 = time.perf_counter()
        out = net(x)
        sync()
        elapsed += time.perf_counter() - t0
        timed += len(arrays)
        for det, geo in zip(out, geos):
            boxes = geo.unmap_boxes(det["boxes"].float().cpu().numpy())
            preds.append(Prediction(boxes, det["scores"].float().cpu().numpy().astype(np.float32),
                                    det["labels"].cpu().numpy().astype(np.int64)))
    net.train(was_training)
    return preds, 1000.0 * elapsed / max(timed, 1)


def predict(
    model: nn.Module,
    images: Sequence[np.ndarray],
    image_size: int = 640,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    pad_value: int = 0,
) -> list[Prediction]:
    """Detections in original pixels for ``uint8`` images ``[H, W]`` (or ``[H, W, C]``,
    averaged to gray), or T1/T2 pairs ``uint8 [2, H, W]`` (:class:`lumbardx.data.pairs.
    SequencePairs` samples, read as :func:`~lumbardx.engine.model_input.three_channels`).
    ``image_size`` must be a multiple of 32."""
    device = torch.device(device)
    preds, _ = _run(model, images, image_size, device, batch_size, pad_value, _gray)
    return preds


def evaluate(
    model: nn.Module,
    dataset: Sequence[Sample],
    device: str | torch.device = "cpu",
    image_size: int = 640,
    batch_size: int = 8,
    class_names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    max_dets: int = 100,
    confusion_iou: float = 0.5,
    confusion_score: float = 0.25,
    pad_value: int = 0,
) -> EvalResult:
    """Evaluate ``model`` on a dataset of :class:`~lumbardx.data.boxes.Sample` (gray images,
    or T1/T2 pairs ``uint8 [2, H, W]`` of :class:`lumbardx.data.pairs.SequencePairs`, which the
    model reads as :func:`~lumbardx.engine.model_input.three_channels`).

    Args:
        class_names: defaults to ``dataset.class_names``.
        out_dir: when given, writes ``pr_curves.png``, ``pr_<class>.png``,
            ``confusion_matrix.png``, ``confusion_matrix.npy``, ``metrics.json`` and
            ``predictions.json`` (COCO-style).
        max_dets: detections per image kept by COCOeval.
        confusion_iou, confusion_score: matching IoU and score threshold of the confusion matrix.
    """
    names = list(class_names if class_names is not None else getattr(dataset, "class_names"))
    device = torch.device(device)
    gts: list[GroundTruth] = []
    skipped: dict[str, str] = {}

    def load(i: int) -> np.ndarray | None:
        try:
            s = dataset[i]
            img, boxes, labels = sample_arrays(s)
        except InputError as exc:
            skipped[str(exc.path) if exc.path else f"#{i}"] = exc.problem
            log.warning("skipping %s", exc)
            return None
        gts.append(GroundTruth(s.image_id, img.shape[-1], img.shape[-2], boxes, labels))
        return img

    preds, ms = _run(model, range(len(dataset)), image_size, device, batch_size, pad_value, load)
    cm = coco_evaluate(gts, preds, names, max_dets)
    conf = confusion_matrix(gts, preds, len(names), confusion_iou, confusion_score)
    counts = np.bincount(np.concatenate([g.labels for g in gts] + [np.zeros(0, np.int64)]),
                         minlength=len(names))
    result = EvalResult(
        class_names=names,
        ap50={n: float(cm.ap50[k]) for k, n in enumerate(names)},
        ap50_95={n: float(cm.ap50_95[k]) for k, n in enumerate(names)},
        map50=cm.map50,
        map50_95=cm.map50_95,
        precision=cm.precision,
        recall=cm.recall_grid,
        confusion=conf,
        ms_per_image=ms,
        num_images=len(gts),
        num_gt={n: int(counts[k]) for k, n in enumerate(names)},
        ground_truth=gts,
        predictions=preds,
        skipped=skipped,
    )
    if out_dir is not None:
        write_eval_outputs(result, out_dir)
    return result


def write_eval_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, str]:
    """Write the figures, the confusion matrix array and the JSON files into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {p.stem: str(p) for p in plot_pr_curves(result.precision, result.recall,
                                                   result.class_names,
                                                   np.array(list(result.ap50.values())), out)}
    files["confusion_matrix"] = str(
        plot_confusion_matrix(result.confusion, result.class_names, out / "confusion_matrix.png"))
    np.save(out / "confusion_matrix.npy", result.confusion)
    files["confusion_matrix_npy"] = str(out / "confusion_matrix.npy")
    (out / "predictions.json").write_text(json.dumps(result.coco_json()))
    files["predictions"] = str(out / "predictions.json")
    result.files = files
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))
    files["metrics"] = str(out / "metrics.json")
    return files
