"""PP-YOLOv2: exact sizes, shapes, DCNv2 layout, head layout, decoding and a short training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lumbardx.models.dcn import DeformableConvV2
from lumbardx.models.detector import count_parameters
from lumbardx.models.postprocess_yolov3 import YOLOv3PostProcess, decode_boxes
from lumbardx.models.ppyolo_head import YOLOv3Head
from lumbardx.models.ppyolo_pan import DropBlock, PANConfig, PPYOLOPAN
from lumbardx.models.ppyolov2 import (
    ANCHOR_MASKS,
    COCO_ANCHORS,
    ppyolov2,
    ppyolov2_r18,
    ppyolov2_r101,
)


def _sizes(model: torch.nn.Module) -> tuple[int, int, int, int]:
    return (
        count_parameters(model),
        count_parameters(model.backbone),
        count_parameters(model.neck),
        count_parameters(model.head),
    )


def test_parameter_counts_match_paddledetection() -> None:
    # DETECTORS.md table (PaddleDetection, PaddlePaddle 2.6.2, trainable parameters)
    assert _sizes(ppyolov2(80)) == (54_579_383, 23_900_593, 30_215_680, 463_110)
    assert count_parameters(ppyolov2(3)) == 54_164_738
    r101 = ppyolov2_r101(80)
    assert _sizes(r101) == (73_571_511, 42_892_721, 30_215_680, 463_110)
    assert count_parameters(ppyolov2_r101(3)) == 73_156_866
    # the three res5 DCNv2 offset/mask convs: 512 -> 27, 3x3, with bias = 124,443 each
    offsets = [m.conv_offset for m in r101.backbone.modules() if isinstance(m, DeformableConvV2)]
    assert [count_parameters(c) for c in offsets] == [124_443] * 3


def test_r18_variant_is_small_and_documented() -> None:
    model = ppyolov2_r18(3)
    assert _sizes(model) == (12_685_937, 11_199_968, 1_473_792, 12_177)
    assert not any(isinstance(m, DeformableConvV2) for m in model.modules())
    assert model.name == "ppyolov2-r18"


def test_output_shapes_r50_64px_and_r18_128px() -> None:
    model = ppyolov2(3).eval()
    with torch.no_grad():
        raw = model.forward_raw(torch.rand(1, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(1, 3, 8, 8, 9), (1, 3, 4, 4, 9), (1, 3, 2, 2, 9)]
    small = ppyolov2_r18(2).eval()
    with torch.no_grad():
        feats = small.backbone(torch.rand(2, 3, 128, 128))
        assert [f.shape[1] for f in feats] == [128, 256, 512]
        neck = small.neck(feats)
        assert [tuple(n.shape) for n in neck] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
        out = small(torch.rand(2, 3, 128, 128))
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1] == 4 and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64 and len(det["scores"]) <= 100


def test_pan_channels_follow_base_width() -> None:
    neck = PPYOLOPAN([8, 16, 32], PANConfig(base_channels=32, conv_block_num=2))
    outs = neck([torch.rand(1, 8, 16, 16), torch.rand(1, 16, 8, 8), torch.rand(1, 32, 4, 4)])
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4)]
    with pytest.raises(ValueError, match="conv_block_num"):
        PPYOLOPAN([8, 16, 32], PANConfig(base_channels=32, conv_block_num=1, spp=True))


def test_dcn_zero_offsets_unit_mask_equals_plain_conv() -> None:
    torch.manual_seed(0)
    dcn = DeformableConvV2(4, 6, 3, stride=2)
    x = torch.rand(2, 4, 9, 9)
    with torch.no_grad():
        dcn.conv_offset.bias[18:] = 40.0  # mask logits -> sigmoid = 1; offsets stay 0
        expected = F.conv2d(x, dcn.weight, stride=2, padding=1)
        torch.testing.assert_close(dcn(x), expected, atol=1e-5, rtol=1e-5)
        # freshly initialised: zero offsets, mask sigmoid(0) = 0.5 -> half the plain conv
        fresh = DeformableConvV2(4, 6, 3, stride=2)
        half = 0.5 * F.conv2d(x, fresh.weight, stride=2, padding=1)
        torch.testing.assert_close(fresh(x), half, atol=1e-5, rtol=1e-5)


def test_dcn_offset_layout_is_dy_dx_pairs() -> None:
    torch.manual_seed(0)
    dcn = DeformableConvV2(3, 5, 3)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        dcn.conv_offset.bias[18:] = 40.0
        dcn.conv_offset.bias[1:18:2] = 1.0  # dx = +1 for every tap: sample one column right
        # tap (ky, kx) of output (i, j) reads x[i + ky - 1, j + kx]: zero padding 0 left, 2 right
        shifted = F.pad(x, (0, 2, 1, 1))
        torch.testing.assert_close(dcn(x), F.conv2d(shifted, dcn.weight), atol=1e-5, rtol=1e-5)
        dcn.conv_offset.bias[1:18:2] = 0.0
        dcn.conv_offset.bias[0:18:2] = 1.0  # dy = +1: one row down
        shifted = F.pad(x, (1, 1, 0, 2))
        torch.testing.assert_close(dcn(x), F.conv2d(shifted, dcn.weight), atol=1e-5, rtol=1e-5)


def test_head_reorders_paddle_channel_layout() -> None:
    # reference conv layout: [iou_0..iou_{A-1}, (x, y, w, h, obj, cls..)_0, ..]; ours [.., K+1]
    head = YOLOv3Head([4], num_classes=2, num_anchors=3, iou_aware=True)
    with torch.no_grad():
        head.yolo_outputs[0].weight.zero_()
        head.yolo_outputs[0].bias.copy_(torch.arange(3 * 8, dtype=torch.float32))
    (raw,) = head([torch.zeros(1, 4, 2, 2)])
    assert raw.shape == (1, 3, 2, 2, 8)
    assert raw[0, 1, 0, 0].tolist() == [3 + 7 + 0, 11, 12, 13, 14, 15, 16, 1]  # anchor 1
    assert raw[0, 2, 1, 1, -1].item() == 2.0  # IoU logit of anchor 2


def test_grid_sensitive_decode_hand_worked() -> None:
    # sigmoid(ln 4) = 0.8 -> 1.05 * 0.8 - 0.025 = 0.815; cell gx 3, gy 1; stride 8 (64 / 8)
    raw = torch.zeros(1, 1, 8, 8, 4)
    raw[0, 0, 1, 3] = torch.tensor([math.log(4.0), 0.0, math.log(2.0), 0.0])
    boxes = decode_boxes(raw, torch.tensor([[10.0, 13.0]]), (64, 64), scale_x_y=1.05)
    cx, cy = (3 + 0.815) * 8, (1 + 0.5) * 8  # 30.52, 12.0
    expected = torch.tensor([cx - 10.0, cy - 6.5, cx + 10.0, cy + 6.5])  # w = 2 * 10, h = 13
    torch.testing.assert_close(boxes[0, 0, 1, 3], expected)
    # the centre can leave its cell by 0.025 cell: sigmoid -> 1 gives 1.025
    raw[0, 0, 1, 3, 0] = 30.0
    x_center = decode_boxes(raw, torch.tensor([[10.0, 13.0]]), (64, 64), 1.05)[0, 0, 1, 3, 0::2]
    assert x_center.mean().item() == pytest.approx((3 + 1.025) * 8)


def test_iou_aware_score_in_postprocess() -> None:
    # one confident cell; everything else has objectness sigmoid(-20) < conf_thresh
    nc, a, b, c = 2, 1.0, -0.5, 2.0  # obj, iou and class-1 logits
    raw = [torch.zeros(1, 3, g, g, 5 + nc + 1) for g in (4, 2, 1)]
    for r in raw:
        r[..., 4] = -20.0
    raw[1][0, 0, 1, 0, 4] = a
    raw[1][0, 0, 1, 0, 5 + 1] = c
    raw[1][0, 0, 1, 0, 5 + 0] = -20.0
    raw[1][0, 0, 1, 0, -1] = b
    post = YOLOv3PostProcess(nc, COCO_ANCHORS, ANCHOR_MASKS, scale_x_y=1.05, iou_aware=True,
                             nms="matrix")
    (det,) = post(raw, (32, 32))
    sig = torch.sigmoid
    expected = sig(torch.tensor(a)) ** 0.5 * sig(torch.tensor(b)) ** 0.5 * sig(torch.tensor(c))
    assert det["labels"].tolist() == [1]
    torch.testing.assert_close(det["scores"], expected.reshape(1))
    # anchor (30, 61) centred at (8, 24) on the stride-16 map, clipped to the 32x32 image
    torch.testing.assert_close(det["boxes"][0], torch.tensor([0.0, 0.0, 23.0, 32.0]))
    plain = YOLOv3PostProcess(nc, COCO_ANCHORS, ANCHOR_MASKS, scale_x_y=1.05, iou_aware=True,
                              iou_aware_factor=0.0)
    (det,) = plain(raw, (32, 32))
    plain_score = sig(torch.tensor(a)) * sig(torch.tensor(c))
    torch.testing.assert_close(det["scores"], plain_score.reshape(1))


def test_hard_nms_keeps_one_of_two_overlapping_boxes() -> None:
    raw = [torch.full((1, 3, g, g, 8), -20.0) for g in (8, 4, 2)]
    for r in raw:
        r[..., :4] = 0.0
    raw[0][0, 2, 3, 3, 4] = 3.0  # anchor (33, 23) centred at (28, 28) of a 64x64 image, class 0
    raw[0][0, 2, 3, 3, 5] = 3.0
    raw[0][0, 2, 3, 4, 4] = 2.0  # same anchor one cell right: IoU 575 / 943 = 0.61 > 0.45
    raw[0][0, 2, 3, 4, 5] = 3.0
    for nms, expected in (("hard", 1), ("matrix", 2)):
        post = YOLOv3PostProcess(3, COCO_ANCHORS, ANCHOR_MASKS, nms=nms)  # type: ignore[arg-type]
        (det,) = post(raw, (64, 64))
        assert len(det["scores"]) == expected
    # matrix NMS decays the second box by (1 - IoU): 575 / 943 -> factor 368 / 943
    s2 = torch.sigmoid(torch.tensor(2.0)) * torch.sigmoid(torch.tensor(3.0))
    assert det["scores"][1].item() == pytest.approx(s2.item() * 368 / 943, rel=1e-4)


def test_dropblock_only_in_training_and_only_where_a_block_fits() -> None:
    torch.manual_seed(0)
    drop = DropBlock(3, 0.9)
    x = torch.ones(2, 4, 16, 16)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    assert (y == 0).any() and y.max() > 1.0  # dropped blocks, survivors rescaled
    tiny = torch.ones(1, 4, 2, 2)
    assert torch.equal(drop(tiny), tiny)


def test_overrides_and_unknown_options() -> None:
    model = ppyolov2_r18(3, nms="hard", anchors=[[12, 14]] * 9)
    assert model.postprocess.nms == "hard"
    assert model.loss.anchors[0].tolist() == [12.0, 14.0]
    with pytest.raises(TypeError, match="unknown PP-YOLOv2 option"):
        ppyolov2_r18(3, dcn=True)


def test_r18_loss_finite_and_decreasing_on_two_images() -> None:
    torch.manual_seed(0)
    model = ppyolov2_r18(3).train()
    images = torch.rand(2, 3, 128, 128)
    targets = torch.tensor(
        [[0, 0, 20, 30, 60, 50], [0, 1, 70, 70, 110, 100], [1, 2, 10, 10, 40, 120]],
        dtype=torch.float32,
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machines are small and shared
    try:
        for _ in range(5):
            out = model(images, targets)
            assert all(torch.isfinite(v) for v in out.values())
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(out["loss"].item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.5 * losses[0]
