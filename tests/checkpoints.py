"""A tiny detector checkpoint for tests that need a model but no trained weights."""

from __future__ import annotations

from pathlib import Path

import torch

from lumbardx.engine.checkpoint import build_detector, save_checkpoint
from lumbardx.engine.ema import ModelEMA
from lumbardx.engine.recipes import Recipe
from lumbardx.models.registry import build_model

CLASSES = ["normal", "herniation", "spondylolisthesis"]
#: Decision thresholds the app and diagnosis tests give the tiny model.
THRESHOLDS = {"normal": 0.3, "herniation": 0.35, "spondylolisthesis": 0.5}


def tiny_checkpoint(path: Path, *, tag: str, training_data: str,
                    thresholds: dict[str, float] | None = None, epoch: int = 1,
                    image_size: int = 256, threshold_evidence: dict | None = None) -> Path:
    """Save a random YOLOv5n (3 study classes) in ``lumbardx train``'s checkpoint format.

    The EMA head's stride-16 biases are raised so that the random model proposes boxes
    (objectness high; anchor k favours class k); otherwise a fresh YOLOv5 outputs nothing and
    the findings, severity, overlay and SR paths would go untested.
    """
    torch.manual_seed(0)
    net = build_model("yolov5n", len(CLASSES))
    ema = ModelEMA(net)
    with torch.no_grad():
        bias = ema.ema.head.m[1].bias.view(3, 5 + len(CLASSES))  # stride 16: [anchors, 5 + nc]
        bias[:, 4] = 3.0
        bias[:, 5:] = 4.0 * torch.eye(3) - 2.0
    state = {"model": net.state_dict(), "ema": ema.state_dict(),
             "recipe": Recipe(image_size=image_size).to_dict(), "model_name": "yolov5n",
             "num_classes": len(CLASSES), "class_names": CLASSES, "epoch": epoch, "seed": 0,
             "thresholds": THRESHOLDS if thresholds is None else thresholds, "tag": tag,
             "training_data": training_data}
    if threshold_evidence is not None:
        state["threshold_evidence"] = threshold_evidence
    return save_checkpoint(state, path)


def random_checkpoint(path: Path, *, pairs: bool = False, class_names: list[str] | None = None,
                      image_size: int = 64) -> Path:
    """Save a randomly initialised YOLOv5n (seed 0) with the least a checkpoint needs: model
    name, classes, weights and a recipe (``sequence_pairs`` set to ``pairs``: a model trained
    on T1/T2 pairs, or on single slices), and decision thresholds of 0.001, so that its boxes
    count and make discs (diagnosis refuses an image without any disc)."""
    names = list(class_names or CLASSES)
    torch.manual_seed(0)
    model = build_detector("yolov5n", len(names), image_size)
    torch.save({"model_name": "yolov5n", "class_names": names, "model": model.state_dict(),
                "recipe": {"name": "test", "image_size": image_size, "sequence_pairs": pairs},
                "thresholds": {n: 0.001 for n in names}},
               path)
    return path
