"""Turn a training checkpoint into the weights lumbardx ships, with thresholds and evidence.

Steps:

1. Rebuild the detector of ``CHECKPOINT`` (EMA weights when saved).
2. Predict on the validation fold (``--fold`` of ``--folds-csv``) of ``DATA``; those patients
   were not trained on. Score per-class AP@0.5 / mAP@0.5 with pycocotools (COCO 101-point).
3. Choose a decision threshold per class at disc level on the same validation discs
   (:func:`lumbardx.clinical.thresholds.choose_thresholds`, Youden's J or F1), and report disc-level
   sensitivity and specificity (a disc is positive when it is not normal) at those thresholds.
   The thresholds are chosen and measured on the same fold, so those two numbers are optimistic;
   the AP values do not depend on thresholds.
4. Write ``OUT`` (default ``src/lumbardx/weights/default.pt``): float16 weights, model name,
   classes, recipe, thresholds with their evidence, what it was trained on, lumbardx version,
   validation metrics; written atomically. Also ``--metrics`` JSON (provenance beside the
   weights, read by :func:`lumbardx.models.pretrained.model_card`, and used by MODEL_CARD.md).

Usage::

    python scripts/release_weights.py runs/yolov5n-fold0/best.pt ../shared/data/yolospine-dev \
        --fold 0 --folds-csv bench/folds/yolospine-dev-k5-seed0.csv \
        --metrics src/lumbardx/weights/default.json
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch

from lumbardx import __version__
from lumbardx.clinical.thresholds import (choose_thresholds, disc_scores, thresholds_dict)
from lumbardx.data.boxes import Box
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.folds import split
from lumbardx.engine.checkpoint import load_checkpoint, rebuild_detector
from lumbardx.engine.evaluate import predict
from lumbardx.engine.metrics import GroundTruth, coco_evaluate
from lumbardx.io import atomic_write_bytes, atomic_write_text


def _boxes(xyxy: np.ndarray, labels: np.ndarray, names: list[str],
           scores: np.ndarray | None = None) -> list[Box]:
    out = []
    for i, (b, c) in enumerate(zip(xyxy.tolist(), labels.tolist())):
        out.append(Box(names[int(c)], *b, score=None if scores is None else float(scores[i])))
    return out


def disc_operating_point(records, thresholds: dict[str, float]) -> dict[str, float | int]:
    """Disc-level sensitivity / specificity: positive = any non-normal class at threshold."""
    tp = fn = tn = fp = 0
    for r in records:
        truth = bool(r.truth - {"normal"})
        call = any(s >= thresholds.get(k, 1.0) for k, s in r.scores.items() if k != "normal")
        tp += truth and call
        fn += truth and not call
        tn += (not truth) and not call
        fp += (not truth) and call
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--folds-csv", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("src/lumbardx/weights/default.pt"))
    p.add_argument("--metrics", type=Path, default=None)
    p.add_argument("--criterion", choices=("youden", "f1"), default="youden",
                   help="threshold criterion per class (lumbardx.clinical.thresholds)")
    p.add_argument("--training-data", default="yolospine-dev (Lumbar Spine MRI Dataset, "
                   "Sudirman et al., CC BY 4.0; YOLOspine boxes, MIT): folds other than the "
                   "validation fold, patient-grouped")
    args = p.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    loaded = rebuild_detector(ckpt, args.checkpoint)
    names = loaded.class_names
    ds = LumbarDataset(args.data, classes="study")
    if ds.class_names != names:
        raise SystemExit(f"dataset classes {ds.class_names} differ from the model's {names}")
    train_idx, val_idx = split(ds, args.fold, args.folds_csv)
    samples = [ds[i] for i in val_idx]
    preds = predict(loaded.model, [s.image for s in samples], loaded.image_size,
                    pad_value=loaded.pad_value)
    gts = [GroundTruth(s.image_id, s.image.shape[1], s.image.shape[0], s.boxes, s.labels)
           for s in samples]
    m = coco_evaluate(gts, preds, names)
    pairs = [(_boxes(s.boxes, s.labels, names), _boxes(pr.boxes, pr.labels, names, pr.scores),
              (s.image.shape[1], s.image.shape[0])) for s, pr in zip(samples, preds)]
    records = disc_scores(pairs)
    choices = choose_thresholds(records, names, args.criterion)
    thresholds = thresholds_dict(choices)
    point = disc_operating_point(records, thresholds)
    validation = {
        "fold": args.fold, "train_images": len(train_idx), "val_images": len(val_idx),
        "val_patients": len({ds.records[i].patient for i in val_idx}),
        "ap50": {n: float(v) for n, v in zip(names, m.ap50)},
        "map50": float(m.map50), "map50_95": float(m.map50_95),
        "ap_interpolation": "COCO 101-point (pycocotools)",
        "discs": len(records), "disc_level": point,
        "disc_level_note": "thresholds chosen and measured on the same validation fold",
    }
    sd = {k: (v.half() if v.is_floating_point() else v)
          for k, v in loaded.model.state_dict().items()}
    shipped = {
        "model": sd, "weights_dtype": "float16", "model_name": loaded.model_name,
        "class_names": names, "num_classes": len(names), "recipe": ckpt.get("recipe"),
        "epoch": ckpt.get("epoch"), "thresholds": thresholds,
        "threshold_evidence": {k: vars(v) for k, v in choices.items()},
        "training_data": args.training_data, "lumbardx_version": __version__,
        "tag": f"{loaded.model_name}-fold{args.fold}-epoch{int(ckpt.get('epoch', -1)) + 1}",
        "validation": validation,
    }
    buf = io.BytesIO()
    torch.save(shipped, buf)
    atomic_write_bytes(args.out, buf.getvalue(), mode=0o644)
    print(json.dumps({"out": str(args.out), "bytes": len(buf.getvalue()),
                      "thresholds": thresholds, **validation}, indent=1))
    if args.metrics:
        atomic_write_text(args.metrics, json.dumps(
            {"weights": args.out.name, "tag": shipped["tag"], "epoch": shipped["epoch"],
             "model_name": loaded.model_name, "training_data": args.training_data,
             "lumbardx_version": __version__,
             "thresholds": thresholds, "threshold_evidence": shipped["threshold_evidence"],
             **validation}, indent=1) + "\n")


if __name__ == "__main__":
    main()
