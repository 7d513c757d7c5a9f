"""Gt2YoloTarget and YOLOv3Loss on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from lumbardx.models.assign_yolov3 import Gt2YoloTarget, wh_iou
from lumbardx.models.loss_yolov3 import YOLOv3Loss, padded_gt_boxes

ANCHORS = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90),
           (156, 198), (373, 326)]  # fmt: skip
MASKS = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
STRIDES = (8, 16, 32)
LN2 = math.log(2.0)


def _assigner(nc: int = 3, iou_thresh: float = 1.0) -> Gt2YoloTarget:
    return Gt2YoloTarget(ANCHORS, MASKS, STRIDES, nc, iou_thresh)


def test_gt2yolotarget_hand_worked_case() -> None:
    # 128x128 image; box x 41..73, y 20..52 (32x32 px), centre (57, 36), class 2, image 1.
    # w/h IoU with (33, 23): inter 32*23 = 736, union 1024 + 759 - 736 = 1047 -> 0.703, the best
    # (16, 30): 0.469, (30, 61): 960 / 1894 = 0.507, (62, 45): 1024 / 2790 = 0.367.
    # anchor 2 -> stride-8 level, slot 2; grid 16x16: gx = 57/128*16 = 7.125 -> gi 7, tx 0.125;
    # gy = 36/128*16 = 4.5 -> gj 4, ty 0.5; tw = log(32/33), th = log(32/23);
    # tscale = 2 - (32/128)*(32/128) = 1.9375.
    targets = torch.tensor([[1.0, 2.0, 41.0, 20.0, 73.0, 52.0]])
    outs = _assigner()(targets, batch_size=2, image_size=(128, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 16, 9), (2, 3, 8, 8, 9), (2, 3, 4, 4, 9)]
    cell = outs[0][1, 2, 4, 7]
    expected = [0.125, 0.5, math.log(32 / 33), math.log(32 / 23), 1.9375, 1.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(cell, torch.tensor(expected))
    assert sum(int((o[..., 5] > 0).sum()) for o in outs) == 1  # nothing else assigned
    assert float(outs[0].abs().sum()) == pytest.approx(float(cell.abs().sum()))


def test_gt2yolotarget_large_box_goes_to_stride_32_and_extra_anchors() -> None:
    # 120x100 box: best anchor (116, 90) (index 6) -> stride 32, slot 0, cell of centre (64, 64)
    targets = torch.tensor([[0.0, 0.0, 4.0, 14.0, 124.0, 114.0]])
    outs = _assigner()(targets, 1, (128, 128))
    assert int((outs[2][..., 5] > 0).sum()) == 1 and outs[2][0, 0, 2, 2, 5] == 1.0
    assert int((outs[0][..., 5] > 0).sum()) == 0 and int((outs[1][..., 5] > 0).sum()) == 0
    # iou_thresh 0.3 adds anchor 7, (156, 198), in the same cell (w/h IoU 12000 / 30888 = 0.39)
    # but not anchor 8, (373, 326) (12000 / 121598 = 0.10)
    assert wh_iou(torch.tensor([[120.0, 100.0]]), torch.tensor([[156.0, 198.0]])).item() == (
        pytest.approx(12000 / 30888)
    )
    outs = _assigner(iou_thresh=0.3)(targets, 1, (128, 128))
    assert outs[2][0, :, 2, 2, 5].tolist() == [1.0, 1.0, 0.0]
    torch.testing.assert_close(outs[2][0, 1, 2, 2, 2], torch.tensor(math.log(120 / 156)))


def test_gt2yolotarget_collision_last_box_wins_classes_accumulate() -> None:
    a = [0.0, 0.0, 43.5, 24.5, 76.5, 47.5]  # exactly anchor (33, 23) at cell (7, 4)
    b = [0.0, 1.0, 42.0, 24.0, 76.0, 48.0]  # 34x24, same anchor and cell, later row
    outs = _assigner()(torch.tensor([a, b]), 1, (128, 128))
    cell = outs[0][0, 2, 4, 7]
    torch.testing.assert_close(cell[2], torch.tensor(math.log(34 / 33)))
    assert cell[6:].tolist() == [1.0, 1.0, 0.0]


def test_gt2yolotarget_skips_degenerate_and_rejects_bad_rows() -> None:
    targets = torch.tensor([[0.0, 0.0, 10.0, 10.0, 10.0, 30.0]])  # zero width
    outs = _assigner()(targets, 1, (64, 64))
    assert all(float(o.abs().sum()) == 0.0 for o in outs)
    with pytest.raises(ValueError, match="class"):
        _assigner()(torch.tensor([[0.0, 5.0, 0.0, 0.0, 10.0, 10.0]]), 1, (64, 64))
    with pytest.raises(ValueError, match="batch index"):
        _assigner()(torch.tensor([[3.0, 0.0, 0.0, 0.0, 10.0, 10.0]]), 2, (64, 64))


def test_padded_gt_boxes() -> None:
    t = torch.tensor([[1.0, 0, 1, 2, 3, 4], [0.0, 0, 5, 6, 7, 8], [1.0, 1, 9, 9, 9, 9]])
    out = padded_gt_boxes(t, 3)
    assert out.shape == (3, 2, 4)
    assert out[0].tolist() == [[5, 6, 7, 8], [0, 0, 0, 0]]
    assert out[1].tolist() == [[1, 2, 3, 4], [9, 9, 9, 9]]
    assert out[2].abs().sum() == 0


# A box identical to anchor (33, 23) centred on stride-8 cell (gi 7, gj 4) of a 128x128 image:
# with all-zero raw predictions the positive anchor predicts exactly this box when
# scale_x_y = 1.05 (1.05 * 0.5 - 0.025 = 0.5 = tx) and no negative box overlaps it above 0.7
# (same anchor one cell over: 575 / 943 = 0.61).
GT = torch.tensor([[0.0, 1.0, 43.5, 24.5, 76.5, 47.5]])
TSCALE = 2.0 - 33 * 23 / 128**2
NUM_CELLS = 3 * (16 * 16 + 8 * 8 + 4 * 4)


def _zero_raw(nc: int = 3, iou_aware: bool = True) -> list[torch.Tensor]:
    k = 5 + nc + (1 if iou_aware else 0)
    return [torch.zeros(1, 3, g, g, k) for g in (16, 8, 4)]


def _loss(**kw: object) -> YOLOv3Loss:
    args: dict = dict(scale_x_y=1.05, iou_loss_weight=2.5, iou_aware=True)
    args.update(kw)
    return YOLOv3Loss(3, ANCHORS, MASKS, STRIDES, **args)


def test_loss_perfect_box_hand_computed() -> None:
    out = _loss()(_zero_raw(), GT, (128, 128))
    assert out["loss_xy"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss_wh"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss_iou"].item() == pytest.approx(0.0, abs=1e-5)  # 2.5 * (1 - 1^2)
    assert out["loss_iou_aware"].item() == pytest.approx(LN2, rel=1e-5)  # BCE(logit 0, 1)
    assert out["loss_obj"].item() == pytest.approx(NUM_CELLS * LN2, rel=1e-5)  # 1 pos + 1007 neg
    assert out["loss_cls"].item() == pytest.approx(3 * LN2, rel=1e-5)
    parts = sum(v for k, v in out.items() if k != "loss")
    assert out["loss"].item() == pytest.approx(float(parts))


def test_loss_wider_prediction_and_ignored_negative() -> None:
    raw = _zero_raw()
    raw[0][0, 2, 4, 7, 2] = LN2  # positive predicts width 66: IoU = 759 / 1518 = 0.5
    # a negative anchor (16, 30) in the same cell predicting exactly the ground truth: ignored
    raw[0][0, 1, 4, 7, 2] = math.log(33 / 16)
    raw[0][0, 1, 4, 7, 3] = math.log(23 / 30)
    out = _loss()(raw, GT, (128, 128))
    assert out["loss_wh"].item() == pytest.approx(LN2 * TSCALE, rel=1e-5)
    assert out["loss_iou"].item() == pytest.approx(2.5 * (1 - 0.25) * TSCALE, rel=1e-5)
    assert out["loss_iou_aware"].item() == pytest.approx(LN2, rel=1e-5)  # BCE(0, 0.5)
    assert out["loss_obj"].item() == pytest.approx((NUM_CELLS - 1) * LN2, rel=1e-5)


def test_loss_plain_yolov3_uses_bce_for_xy_and_averages_over_batch() -> None:
    loss = YOLOv3Loss(3, ANCHORS, MASKS, STRIDES)  # Darknet YOLOv3 settings
    raw = [torch.zeros(2, 3, g, g, 8) for g in (16, 8, 4)]
    out = loss(raw, GT, (128, 128))  # one box, in image 0 of 2
    assert set(out) == {"loss", "loss_xy", "loss_wh", "loss_obj", "loss_cls"}
    # BCE(logit 0, tx 0.5) + BCE(0, 0.5) = 2 ln 2, times tscale, / batch 2
    assert out["loss_xy"].item() == pytest.approx(2 * LN2 * TSCALE / 2, rel=1e-5)
    assert out["loss_obj"].item() == pytest.approx(2 * NUM_CELLS * LN2 / 2, rel=1e-5)


def test_loss_without_boxes_and_label_smoothing() -> None:
    out = _loss()(_zero_raw(), torch.zeros(0, 6), (128, 128))
    assert out["loss_obj"].item() == pytest.approx(NUM_CELLS * LN2, rel=1e-5)
    assert out["loss_cls"].item() == 0.0 and out["loss_iou"].item() == 0.0
    smooth = _loss(label_smooth=True)(_zero_raw(), GT, (128, 128))
    assert smooth["loss_cls"].item() == pytest.approx(3 * LN2, rel=1e-5)  # logit 0: ln 2 always
    raw = _zero_raw()
    raw[0][0, 2, 4, 7, 5:8] = torch.tensor([-10.0, 10.0, -10.0])  # confident, correct class
    sharp = _loss()(raw, GT, (128, 128))["loss_cls"].item()
    smoothed = _loss(label_smooth=True)(raw, GT, (128, 128))["loss_cls"].item()
    assert sharp < 1e-3 < smoothed  # smoothing penalises over-confidence


def test_loss_gradients_finite_and_shape_errors() -> None:
    raw = [r.requires_grad_() for r in _zero_raw()]
    _loss()(raw, GT, (128, 128))["loss"].backward()
    assert all(torch.isfinite(r.grad).all() for r in raw)
    with pytest.raises(ValueError, match="raw predictions"):
        _loss()(_zero_raw(iou_aware=False), GT, (128, 128))
    with pytest.raises(ValueError, match="levels"):
        _loss()(_zero_raw()[:2], GT, (128, 128))
