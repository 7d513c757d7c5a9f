"""bench/class_confusion.py: where one class's misses and false positives come from."""

from __future__ import annotations

import numpy as np
import pytest
from bench_scripts import load_bench

from lumbardx.engine.metrics import GroundTruth, Prediction

cc = load_bench("class_confusion")

NAMES = ["normal", "herniation", "spondylolisthesis"]


def _gt(i: int, boxes: list[list[float]], labels: list[int]) -> GroundTruth:
    return GroundTruth(f"img{i}", 200, 200, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(labels, np.int64))


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Prediction:
    return Prediction(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def test_hand_worked_confusion() -> None:
    slip, hern, far = [10, 10, 90, 70], [10, 110, 90, 170], [120, 120, 190, 190]
    gts = [_gt(0, [slip], [2]), _gt(1, [hern], [1]), _gt(2, [slip, hern], [2, 1])]
    preds = [
        _pred([slip, slip], [0.2, 0.9], [2, 1]),   # found as slip (0.2), also as herniation
        _pred([hern, far], [0.8, 0.1], [2, 2]),    # slip on a herniation box; on background
        _pred([slip], [0.9], [1]),                 # slip box found, but only as herniation
    ]
    r = cc.analyse(gts, preds, NAMES, "spondylolisthesis")
    assert r["ground_truth_boxes"] == 2
    assert r["localised_by_any_class"] == 2 and r["localised_as_class"] == 1
    assert r["median_score_of_true_detections"] == pytest.approx(0.2)
    assert r["false_positives"] == {"herniation": 1, "background": 1}
    assert r["false_positives_above_median_true"] == {"herniation": 1}
    # ranked: FP 0.8, TP 0.2, FP 0.1 of 2 ground truths -> AP 0.5 * (1/2) ~ 0.25;
    # without the FP on the herniation box the true detection ranks first
    assert r["ap50"] < r["ap50_without_false_positives_on"]["herniation"]
    assert r["ap50_without_false_positives_on"]["herniation"] == pytest.approx(0.5, abs=0.01)
    assert r["ap50_without_false_positives_on"]["background"] == pytest.approx(r["ap50"])
