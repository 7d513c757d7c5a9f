"""YOLOv3 with a Darknet-53 backbone, as configured by PaddleDetection
``configs/yolov3/_base_/yolov3_darknet53.yml`` (the study's YOLOv3).

Neck (PaddleDetection ``ppdet/modeling/necks/yolo_fpn.py`` ``YOLOv3FPN`` / ``YoloDetBlock``):
per scale, from stride 32 down to 8, five alternating 1x1 / 3x3 convs (``channel`` =
512 / 256 / 128 and twice that) whose last 1x1 output is the *route*, and a 3x3 *tip* to
``2 * channel`` that feeds the head; the route goes through a 1x1 conv to ``channel / 2``,
nearest x2 upsampling and is concatenated with the next backbone level. All convs are
conv -> BN -> LeakyReLU(0.1). This is, layer for layer, ultralytics/yolov5 v7.0
``models/hub/yolov3.yaml`` (its ``Bottleneck(shortcut=False)`` pairs are the 1x1 / 3x3 pairs
here), so the parameter count is that file's: 61,949,149 at nc=80.

Head: :class:`~lumbardx.models.yolo_head.DetectHead` (1x1 conv to ``3 * (5 + nc)`` per scale).
Raw outputs are ordered stride 8, 16, 32 (the ultralytics Detect order P3, P4, P5; Paddle
orders its head 32, 16, 8 and pairs it with ``anchor_masks [[6,7,8],[3,4,5],[0,1,2]]``, which is
the same assignment as ``((0,1,2),(3,4,5),(6,7,8))`` here). Loss and post-process are the
PaddleDetection ones (:mod:`lumbardx.models.loss_yolov3`,
:mod:`lumbardx.models.postprocess_yolov3`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lumbardx.models.common import Conv, leaky_relu, upsample2x
from lumbardx.models.darknet import Darknet53
from lumbardx.models.detector import Detector
from lumbardx.models.loss_yolov3 import YOLOv3Loss
from lumbardx.models.postprocess_yolov3 import NMSKind, YOLOv3PostProcess
from lumbardx.models.registry import register
from lumbardx.models.yolo_head import DEFAULT_ANCHORS, DEFAULT_STRIDES, DetectHead

# yolov3_darknet53.yml: anchors (w, h) in input pixels, small -> large; masks per stride 8/16/32
YOLOV3_ANCHORS: tuple[tuple[float, float], ...] = tuple(
    a for level in DEFAULT_ANCHORS for a in level
)
YOLOV3_ANCHOR_MASKS: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (3, 4, 5), (6, 7, 8))


class YoloDetBlock(nn.Module):
    """Five alternating 1x1 / 3x3 convs and a 3x3 tip (Paddle ``YoloDetBlock``).

    Shapes: ``[B, c_in, H, W]`` -> ``(route [B, channel, H, W], tip [B, 2 * channel, H, W])``.
    """

    def __init__(self, c_in: int, channel: int) -> None:
        super().__init__()
        c2 = channel * 2
        self.convs = nn.Sequential(
            Conv(c_in, channel, 1, act=leaky_relu),
            Conv(channel, c2, 3, act=leaky_relu),
            Conv(c2, channel, 1, act=leaky_relu),
            Conv(channel, c2, 3, act=leaky_relu),
            Conv(c2, channel, 1, act=leaky_relu),  # route
        )
        self.tip = Conv(channel, c2, 3, act=leaky_relu)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, c_in, H, W]`` -> ``(route, tip)``."""
        route = self.convs(x)
        return route, self.tip(route)


class YOLOv3FPN(nn.Module):
    """The YOLOv3 top-down neck.

    ``[C3 [B, 256, H/8], C4 [B, 512, H/16], C5 [B, 1024, H/32]]`` ->
    ``[N3 [B, 256, H/8, W/8], N4 [B, 512, H/16, W/16], N5 [B, 1024, H/32, W/32]]``.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 512, 1024)) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.block5 = YoloDetBlock(c5, 512)
        self.lateral5 = Conv(512, 256, 1, act=leaky_relu)
        self.block4 = YoloDetBlock(c4 + 256, 256)
        self.lateral4 = Conv(256, 128, 1, act=leaky_relu)
        self.block3 = YoloDetBlock(c3 + 128, 128)
        self.out_channels = (256, 512, 1024)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[C3, C4, C5]`` -> ``[N3, N4, N5]`` (strides 8, 16, 32)."""
        c3, c4, c5 = features
        route5, n5 = self.block5(c5)
        route4, n4 = self.block4(torch.cat((upsample2x(self.lateral5(route5)), c4), 1))
        _, n3 = self.block3(torch.cat((upsample2x(self.lateral4(route4)), c3), 1))
        return [n3, n4, n5]


@register("yolov3")
def build_yolov3(
    num_classes: int,
    anchors: Sequence[tuple[float, float]] | Sequence[Sequence[tuple[float, float]]] | None = None,
    ignore_thresh: float = 0.7,
    conf_thresh: float = 0.01,
    nms_iou: float = 0.45,
    max_det: int = 100,
    nms: NMSKind = "hard",
    image_size: int = 640,
) -> Detector:
    """YOLOv3 Darknet-53 (PaddleDetection ``yolov3_darknet53.yml``), randomly initialised.

    Args:
        num_classes: number of classes.
        anchors: nine ``(w, h)`` anchors in input pixels, small -> large, flat or grouped per
            stride as ``[3][3]`` (``None``: the COCO defaults of ``yolov3_darknet53.yml``).
        ignore_thresh: objectness ignore IoU of the loss (``YOLOv3Loss.ignore_thresh: 0.7``).
        conf_thresh, nms_iou, max_det: post-process (``BBoxPostProcess``: MultiClassNMS
            score_threshold 0.01 (YOLOBox's 0.005 confidence cut is implied), IoU 0.45,
            keep_top_k 100).
        nms: ``"hard"`` (MultiClassNMS) or ``"matrix"``.
        image_size: accepted so every builder shares one call; the PaddleDetection loss does not
            scale with the training size.
    """
    source = torch.as_tensor(
        anchors if anchors is not None else YOLOV3_ANCHORS, dtype=torch.float32
    )
    if source.shape[-1:] != (2,) or source.numel() != 18 or not bool((source > 0).all()):
        raise ValueError("YOLOv3 needs nine positive (w, h) anchors in pixels")
    anchor_list = [(float(w), float(h)) for w, h in source.reshape(9, 2).tolist()]
    backbone = Darknet53()
    neck = YOLOv3FPN(backbone.out_channels)
    head = DetectHead(num_classes, neck.out_channels, DEFAULT_STRIDES, num_anchors=3)
    loss = YOLOv3Loss(
        num_classes,
        anchor_list,
        anchor_masks=YOLOV3_ANCHOR_MASKS,
        strides=DEFAULT_STRIDES,
        ignore_thresh=ignore_thresh,
    )
    post = YOLOv3PostProcess(
        num_classes,
        anchor_list,
        YOLOV3_ANCHOR_MASKS,
        DEFAULT_STRIDES,
        nms=nms,
        conf_thresh=conf_thresh,
        nms_iou=nms_iou,
        max_det=max_det,
    )
    return Detector(backbone, neck, head, loss, post, name="yolov3")
