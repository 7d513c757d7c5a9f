"""YOLOv5 v7.0 (n / s / m / l): CSP-Darknet backbone with SPPF, PANet neck, YOLO head.

Layout of ultralytics/yolov5 v7.0 ``models/yolov5{n,s,m,l}.yaml``; a variant only sets the depth
multiple (C3 repeats ``max(round(n * depth), 1)``) and width multiple (channels
``ceil(c * width / 8) * 8``, ``make_divisible`` in ``models/yolo.py`` ``parse_model``).
Parameter counts equal v7.0's ``models.yolo.Model(cfg, nc=...)`` exactly.

Shapes: images ``[B, 3, H, W]`` (H, W multiples of 32) -> backbone ``[P3, P4, P5]`` at strides
8 / 16 / 32 -> neck (same strides) -> head ``[B, 3, H/s, W/s, 5 + nc]`` per stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lumbardx.models.common import C3, SPPF, Conv, upsample2x
from lumbardx.models.decode import YOLOv5PostProcess
from lumbardx.models.detector import Detector
from lumbardx.models.loss_yolov5 import YOLOv5Loss
from lumbardx.models.registry import register
from lumbardx.models.yolo_head import DEFAULT_STRIDES, AnchorSet, DetectHead, anchors_tensor


@dataclass(frozen=True)
class YOLOv5Config:
    """One YOLOv5 size: ``depth`` scales block repeats, ``width`` scales channels."""

    depth: float
    width: float

    def channels(self, c: int) -> int:
        """Scaled channel count, rounded up to a multiple of 8 (v7.0 ``make_divisible``)."""
        return int(math.ceil(c * self.width / 8) * 8)

    def repeats(self, n: int) -> int:
        """Scaled block repeats (v7.0 ``parse_model``: ``max(round(n * gd), 1)`` when n > 1)."""
        return max(round(n * self.depth), 1) if n > 1 else n


# depth_multiple / width_multiple of models/yolov5{n,s,m,l}.yaml (v7.0)
YOLOV5_CONFIGS: dict[str, YOLOv5Config] = {
    "yolov5n": YOLOv5Config(depth=0.33, width=0.25),
    "yolov5s": YOLOv5Config(depth=0.33, width=0.50),
    "yolov5m": YOLOv5Config(depth=0.67, width=0.75),
    "yolov5l": YOLOv5Config(depth=1.00, width=1.00),
}


class YOLOv5Backbone(nn.Module):
    """CSP-Darknet with SPPF (``yolov5s.yaml`` layers 0-9).

    ``[B, 3, H, W]`` -> ``[P3 [B, c3, H/8, W/8], P4 [B, c4, H/16, W/16], P5 [B, c5, H/32, W/32]]``
    with ``(c3, c4, c5) = out_channels`` (256, 512, 1024 scaled by width).
    """

    def __init__(self, cfg: YOLOv5Config) -> None:
        super().__init__()
        c = cfg.channels
        n = cfg.repeats
        self.stem = Conv(3, c(64), 6, 2, 2)  # 0-P1/2
        self.stage2 = nn.Sequential(Conv(c(64), c(128), 3, 2), C3(c(128), c(128), n(3)))  # P2/4
        self.stage3 = nn.Sequential(Conv(c(128), c(256), 3, 2), C3(c(256), c(256), n(6)))  # P3/8
        self.stage4 = nn.Sequential(Conv(c(256), c(512), 3, 2), C3(c(512), c(512), n(9)))  # P4/16
        self.stage5 = nn.Sequential(
            Conv(c(512), c(1024), 3, 2), C3(c(1024), c(1024), n(3)), SPPF(c(1024), c(1024), 5)
        )  # P5/32
        self.out_channels = (c(256), c(512), c(1024))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> ``[P3, P4, P5]``."""
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        return [p3, p4, p5]


class YOLOv5PAN(nn.Module):
    """PANet neck (``yolov5s.yaml`` head layers 10-23).

    ``[P3, P4, P5]`` -> ``[N3 [B, c(256), H/8, W/8], N4 [B, c(512), H/16, W/16],
    N5 [B, c(1024), H/32, W/32]]``.
    """

    def __init__(self, cfg: YOLOv5Config, in_channels: tuple[int, int, int]) -> None:
        super().__init__()
        c = cfg.channels
        n = cfg.repeats(3)
        c3, c4, c5 = in_channels
        self.lateral5 = Conv(c5, c(512), 1, 1)  # 10
        self.td4 = C3(c(512) + c4, c(512), n, shortcut=False)  # 13
        self.lateral4 = Conv(c(512), c(256), 1, 1)  # 14
        self.td3 = C3(c(256) + c3, c(256), n, shortcut=False)  # 17 (P3/8-small)
        self.down3 = Conv(c(256), c(256), 3, 2)  # 18
        self.bu4 = C3(c(256) + c(256), c(512), n, shortcut=False)  # 20 (P4/16-medium)
        self.down4 = Conv(c(512), c(512), 3, 2)  # 21
        self.bu5 = C3(c(512) + c(512), c(1024), n, shortcut=False)  # 23 (P5/32-large)
        self.out_channels = (c(256), c(512), c(1024))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[P3, P4, P5]`` -> ``[N3, N4, N5]``."""
        p3, p4, p5 = features
        l5 = self.lateral5(p5)
        l4 = self.lateral4(self.td4(torch.cat((upsample2x(l5), p4), 1)))
        n3 = self.td3(torch.cat((upsample2x(l4), p3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), l4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), l5), 1))
        return [n3, n4, n5]


def initialize_weights(model: nn.Module) -> None:
    """v7.0 ``utils/torch_utils.py`` ``initialize_weights``: BatchNorm eps 1e-3, momentum 0.03
    (PyTorch's default Conv init is kept)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03


def build_yolov5(
    variant: str,
    num_classes: int,
    anchors: AnchorSet | Tensor | None = None,
    image_size: int = 640,
    conf_thresh: float = 0.001,
    iou_thresh: float = 0.6,
    max_det: int = 300,
    multi_label: bool = True,
    **loss_kwargs: float,
) -> Detector:
    """Build a randomly initialised YOLOv5 of size ``variant`` (``"yolov5s"`` etc.).

    Args:
        variant: key of :data:`YOLOV5_CONFIGS`.
        num_classes: number of classes.
        anchors: ``[3][3] (w, h)`` in input pixels at the training size, ordered stride
            8 / 16 / 32 and small -> large (e.g. from
            :func:`lumbardx.models.autoanchor.check_anchors`);
            ``None`` keeps the v7.0 defaults.
        image_size: training image size in pixels (scales the objectness gain).
        conf_thresh, iou_thresh, max_det, multi_label: post-process settings (v7.0 ``val.py``).
        **loss_kwargs: overrides for :class:`YOLOv5Loss` (``box_gain``, ``anchor_t``, ...).
    """
    if variant not in YOLOV5_CONFIGS:
        raise KeyError(f"unknown YOLOv5 variant {variant!r}; choose from {sorted(YOLOV5_CONFIGS)}")
    cfg = YOLOV5_CONFIGS[variant]
    anchor_px = anchors_tensor(anchors)
    if anchor_px.shape[0] != len(DEFAULT_STRIDES):
        raise ValueError(
            f"YOLOv5 needs anchors for {len(DEFAULT_STRIDES)} levels, got {anchor_px.shape[0]}"
        )
    backbone = YOLOv5Backbone(cfg)
    neck = YOLOv5PAN(cfg, backbone.out_channels)
    head = DetectHead(
        num_classes, neck.out_channels, DEFAULT_STRIDES, num_anchors=anchor_px.shape[1]
    )
    loss = YOLOv5Loss(num_classes, anchor_px, DEFAULT_STRIDES, image_size=image_size, **loss_kwargs)
    post = YOLOv5PostProcess(
        num_classes, anchor_px, DEFAULT_STRIDES, conf_thresh, iou_thresh, max_det, multi_label
    )
    model = Detector(backbone, neck, head, loss, post, name=variant)
    initialize_weights(model)
    return model


@torch.no_grad()
def set_anchors(model: Detector, anchors: AnchorSet | Tensor) -> None:
    """Replace the anchors (input pixels, ``[nl][na] (w, h)``) of a built YOLOv5 detector's loss
    and post-process, e.g. after AutoAnchor. The number of anchors must not change."""
    new = anchors_tensor(anchors)
    for part in (model.loss, model.postprocess):
        old = getattr(part, "anchors", None)
        if not isinstance(old, Tensor) or old.shape != new.shape:
            raise ValueError(f"anchors of shape {tuple(new.shape)} do not fit this model")
        old.copy_(new.to(old.device))


@register("yolov5n")
def build_yolov5n(num_classes: int, **kwargs: object) -> Detector:
    """YOLOv5n v7.0 (depth 0.33, width 0.25): 1,872,157 parameters at nc=80."""
    return build_yolov5("yolov5n", num_classes, **kwargs)  # type: ignore[arg-type]


@register("yolov5s")
def build_yolov5s(num_classes: int, **kwargs: object) -> Detector:
    """YOLOv5s v7.0 (depth 0.33, width 0.50): 7,235,389 parameters at nc=80."""
    return build_yolov5("yolov5s", num_classes, **kwargs)  # type: ignore[arg-type]


@register("yolov5m")
def build_yolov5m(num_classes: int, **kwargs: object) -> Detector:
    """YOLOv5m v7.0 (depth 0.67, width 0.75): 21,190,557 parameters at nc=80."""
    return build_yolov5("yolov5m", num_classes, **kwargs)  # type: ignore[arg-type]


@register("yolov5l")
def build_yolov5l(num_classes: int, **kwargs: object) -> Detector:
    """YOLOv5l v7.0 (depth 1.0, width 1.0): 46,563,709 parameters at nc=80."""
    return build_yolov5("yolov5l", num_classes, **kwargs)  # type: ignore[arg-type]
