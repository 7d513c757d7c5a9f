"""AutoAnchor: ratio metric, best possible recall, k-means + evolution re-fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lumbardx.models.autoanchor import (
    anchor_fit,
    anchor_metric,
    check_anchors,
    kmean_anchors,
    label_wh,
)
from lumbardx.models.yolo_head import DEFAULT_ANCHORS
from lumbardx.models.yolov5 import build_yolov5


def test_ratio_metric_hand_values() -> None:
    wh = torch.tensor([[20.0, 10.0]])
    anchors = torch.tensor([[10.0, 10.0], [40.0, 10.0], [20.0, 10.0], [20.0, 40.0]])
    x, best = anchor_metric(wh, anchors)
    assert torch.allclose(x, torch.tensor([[0.5, 0.5, 1.0, 0.25]]))
    assert torch.allclose(best, torch.tensor([1.0]))


def test_bpr_and_anchors_per_target_hand_values() -> None:
    # metric with anchor (10,10): 1, 1/3, 0.2, 0.222; threshold 1/4
    wh = np.array([[10, 10], [30, 10], [50, 10], [10, 45]], dtype=np.float32)
    one = anchor_fit(wh, [[(10.0, 10.0)]])
    assert one.bpr == pytest.approx(0.5) and one.anchors_per_target == pytest.approx(0.5)
    # adding (20,20): metrics 0.5, 0.5, 0.4, 0.444 -> every box matchable; 2 + 2 + 1 + 1 anchors
    two = anchor_fit(wh, [[(10.0, 10.0), (20.0, 20.0)]])
    assert two.bpr == pytest.approx(1.0) and two.anchors_per_target == pytest.approx(1.5)
    # a stricter threshold (2) keeps only metrics > 0.5
    strict = anchor_fit(wh, [[(10.0, 10.0), (20.0, 20.0)]], thr=2.0)
    assert strict.bpr == pytest.approx(0.25)


def test_label_wh_scales_long_side_to_training_size() -> None:
    boxes = [np.array([[0, 0, 96, 48], [10, 10, 20, 30]]), np.zeros((0, 4))]
    wh = label_wh(boxes, [(768, 384), (100, 100)], image_size=640)
    assert wh.shape == (2, 2)
    assert np.allclose(wh, [[80.0, 40.0], [640 / 768 * 10, 640 / 768 * 20]])


def _thin_wide_boxes(n: int = 400, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(150, 250, n), rng.uniform(8, 14, n)], 1).astype(np.float32)


def test_refit_raises_bpr_on_badly_fitting_boxes() -> None:
    wh = _thin_wide_boxes()
    before = anchor_fit(wh, DEFAULT_ANCHORS).bpr
    assert before < 0.6  # aspect ratios ~ 18:1 are out of reach of the COCO anchors
    result = check_anchors(wh, DEFAULT_ANCHORS, generations=200, seed=3)
    assert result.refitted
    assert result.bpr_after > 0.98 and result.bpr_after > result.bpr_before
    a = np.array(result.anchors)
    assert a.shape == (3, 3, 2)
    areas = a.reshape(-1, 2).prod(1)
    assert np.all(np.diff(areas) >= 0)  # small -> large, level by level
    assert anchor_fit(wh, a).bpr > 0.98
    again = check_anchors(wh, DEFAULT_ANCHORS, generations=200, seed=3)
    assert again.anchors == result.anchors  # deterministic by seed
    model = build_yolov5("yolov5n", 3, anchors=result.anchors)
    assert torch.allclose(model.loss.anchors, torch.tensor(result.anchors))


def test_good_anchors_are_kept() -> None:
    rng = np.random.default_rng(0)
    base = np.array(DEFAULT_ANCHORS, dtype=np.float32).reshape(-1, 2)
    wh = base[rng.integers(0, 9, 300)] * rng.uniform(0.7, 1.4, (300, 1)).astype(np.float32)
    result = check_anchors(wh, DEFAULT_ANCHORS)
    assert not result.refitted and result.bpr_before > 0.98
    assert result.anchors == [[tuple(map(float, a)) for a in level] for level in DEFAULT_ANCHORS]


def test_kmeans_evolution_improves_fitness_and_handles_few_boxes() -> None:
    wh = _thin_wide_boxes(200)
    k0 = kmean_anchors(wh, n=9, generations=0, seed=0)
    k1 = kmean_anchors(wh, n=9, generations=150, seed=0)

    def fitness(k: np.ndarray) -> float:
        _, best = anchor_metric(torch.from_numpy(wh), torch.from_numpy(k))
        return float((best * (best > 0.25).float()).mean())

    assert fitness(k1) >= fitness(k0)
    # fewer boxes than anchors: random initialisation, still 9 sorted anchors >= 2 px
    few = kmean_anchors(np.array([[30.0, 10.0], [40.0, 12.0]]), n=9, generations=50, seed=0)
    assert few.shape == (9, 2) and np.all(few >= 2.0) and np.all(np.diff(few.prod(1)) >= 0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        check_anchors(np.zeros((0, 2)), DEFAULT_ANCHORS)
    with pytest.raises(ValueError):
        check_anchors(_thin_wide_boxes(10), [(10.0, 13.0)])


@pytest.mark.shared_data
def test_default_anchors_fit_the_spine_dev_set(yolospine_dev: Path) -> None:
    boxes, sizes = [], []
    for txt in sorted((yolospine_dev / "labels").glob("*.txt")):
        rows = np.loadtxt(txt, ndmin=2).reshape(-1, 5)
        boxes.append(np.stack([rows[:, 1] - rows[:, 3] / 2, rows[:, 2] - rows[:, 4] / 2,
                               rows[:, 1] + rows[:, 3] / 2, rows[:, 2] + rows[:, 4] / 2], 1) * 384)
        sizes.append((384, 384))  # the dev set's slices are 384 x 384 (SOURCE.md)
    wh = label_wh(boxes, sizes, image_size=640)
    assert len(wh) > 1000
    result = check_anchors(wh, DEFAULT_ANCHORS)
    assert result.bpr_before > 0.98 and not result.refitted
    fitted = kmean_anchors(wh, n=9, generations=100, seed=0)
    assert anchor_fit(wh, fitted).bpr > 0.98
