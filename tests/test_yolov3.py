"""YOLOv3 Darknet-53: size against the reference, layout, output order, loss and boxes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lumbardx.models.common import Bottleneck, Conv
from lumbardx.models.darknet import Darknet53
from lumbardx.models.detector import Detector, count_parameters
from lumbardx.models.registry import build_model
from lumbardx.models.yolov3 import YoloDetBlock, build_yolov3

# ultralytics/yolov5 v7.0 models/hub/yolov3.yaml, models.yolo.Model(cfg, nc=...) (DETECTORS.md)
YOLOV3_PARAMS = {80: 61_949_149, 3: 61_534_504}


@pytest.fixture(scope="module")
def yolov3() -> Detector:
    torch.manual_seed(0)
    return build_model("yolov3", num_classes=3)


def test_parameter_counts_match_reference(yolov3: Detector) -> None:
    assert count_parameters(yolov3) == YOLOV3_PARAMS[3]
    assert count_parameters(build_yolov3(80)) == YOLOV3_PARAMS[80]
    assert yolov3.name == "yolov3"


def test_darknet53_stages_and_outputs() -> None:
    net = Darknet53()
    units = [
        sum(isinstance(m, Bottleneck) and m.add for m in stage.modules()) for stage in net.stages
    ]
    assert units == [1, 2, 8, 8, 4]
    # 52 convolutions + the classifier of the original make Darknet-"53"
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 52
    with torch.no_grad():
        outs = net(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 8, 12), (1, 512, 4, 6), (1, 1024, 2, 3)]


def test_activations_are_leaky_relu_0_1(yolov3: Detector) -> None:
    parts = (yolov3.backbone, yolov3.neck)
    acts = [m for part in parts for m in part.modules() if isinstance(m, Conv)]
    assert len(acts) == 52 + 3 * 6 + 2
    assert all(isinstance(c.act, nn.LeakyReLU) and c.act.negative_slope == 0.1 for c in acts)
    assert not any(isinstance(m, nn.SiLU) for m in yolov3.modules())


def test_detection_block_layout() -> None:
    block = YoloDetBlock(768, 256)
    kernels = [c.conv.kernel_size[0] for c in block.convs] + [block.tip.conv.kernel_size[0]]
    widths = [c.conv.out_channels for c in block.convs] + [block.tip.conv.out_channels]
    assert kernels == [1, 3, 1, 3, 1, 3]
    assert widths == [256, 512, 256, 512, 256, 512]
    route, tip = block(torch.zeros(1, 768, 4, 4))
    assert route.shape == (1, 256, 4, 4) and tip.shape == (1, 512, 4, 4)


def test_raw_outputs_ordered_by_stride_with_matching_anchors(yolov3: Detector) -> None:
    yolov3.eval()
    with torch.no_grad():
        raw = yolov3.forward_raw(torch.rand(2, 3, 64, 96))
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]
    # stride 8 gets the three smallest anchors, stride 32 the largest (Paddle masks [0,1,2] ...)
    anchors = yolov3.loss.anchors
    assert [list(m) for m in yolov3.loss.anchor_masks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert torch.equal(anchors[[0, 1, 2]], torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]))
    assert torch.equal(yolov3.postprocess.anchors, anchors)


def test_training_loss_and_eval_boxes(yolov3: Detector) -> None:
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 8, 10, 40, 30], [1, 2, 20, 20, 60, 44]], dtype=torch.float32)
    yolov3.train()
    losses = yolov3(images, targets)
    assert "loss" in losses and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    stem_grad = yolov3.backbone.stem.conv.weight.grad
    assert stem_grad is not None and float(stem_grad.abs().sum()) > 0
    yolov3.zero_grad()
    yolov3.eval()
    with torch.no_grad():
        dets = yolov3(images)
    assert len(dets) == 2 and all(set(d) >= {"boxes", "scores", "labels"} for d in dets)


def test_anchor_argument_forms() -> None:
    with pytest.raises(ValueError, match="nine"):
        build_yolov3(3, anchors=[(10.0, 13.0)] * 6)
    with pytest.raises(ValueError, match="nine"):
        build_yolov3(3, anchors=[(10.0, -13.0)] * 9)
    grouped = [[(5.0 * (3 * i + j + 1), 4.0 * (3 * i + j + 1)) for j in range(3)] for i in range(3)]
    model = build_yolov3(3, anchors=grouped)
    assert torch.equal(model.loss.anchors, torch.tensor(grouped).reshape(9, 2))
