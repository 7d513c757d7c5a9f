"""bench/slip_suppression.py: a second slip box over the same slip dropped, scored by fold."""

from __future__ import annotations

import numpy as np
import pytest
from bench_scripts import load_bench

from lumbardx.data.boxes import Box

bench = load_bench("slip_suppression")


def test_suppress_drops_the_lower_box_at_the_cut_and_keeps_apart_boxes() -> None:
    xyxy = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [0, 30, 10, 40]], np.float32)
    scores = np.array([0.5, 0.9, 0.4], np.float32)
    kept, s = bench.suppress(xyxy, scores, iou=1 / 3)  # boxes 0 and 1 overlap at IoU 1/3
    assert s.tolist() == pytest.approx([0.9, 0.4]) and kept[0].tolist() == [0, 5, 10, 15]
    kept, s = bench.suppress(xyxy, scores, iou=0.34)
    assert len(s) == 3
    empty = bench.suppress(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert len(empty[0]) == 0


def test_a_duplicate_slip_box_costs_ap_until_suppressed() -> None:
    slip = "spondylolisthesis"
    truth = [Box(slip, 100, 100, 200, 200)]
    twice = (truth, [Box(slip, 100, 100, 200, 200, score=0.9),
                     Box(slip, 100, 150, 200, 250, score=0.8)], (400, 400))
    once = (truth, [Box(slip, 100, 100, 200, 200, score=0.7)], (400, 400))
    none_ = ([], [], (400, 400))
    images = [twice, once, none_]
    without, rule = bench.score_fold(images, False), bench.score_fold(images, True)
    # the two boxes of the first image overlap at IoU 1/3: the rule drops the 0.8 one, which
    # ranked above the second image's true box
    assert without["slip_boxes"] == 3 and rule["slip_boxes"] == 2
    assert rule["ap50"] == pytest.approx(1.0) and without["ap50"] < 0.9
    assert without["image_auc"] == rule["image_auc"] == pytest.approx(1.0)
    out = bench.compare({0: images, 1: images})
    d = out["paired_rule_minus_none"]["ap50"]
    assert d["mean"] == pytest.approx(rule["ap50"] - without["ap50"]) and d["wins"] == 2
    assert [r["fold"] for r in out["folds"]] == [0, 1]
