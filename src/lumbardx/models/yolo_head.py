"""The anchor-based YOLO detection head shared by YOLOv5 and YOLOv3 (v7.0 ``Detect``).

Per feature level one 1x1 convolution (with bias) maps ``C_i`` channels to
``na * (5 + nc)``; the result is reshaped to ``[B, na, H, W, 5 + nc]`` with channel order
``x, y, w, h, objectness, class_0 .. class_{nc-1}`` (raw logits; decoding lives in
:mod:`lumbardx.models.decode`). The head holds no anchors: the loss and post-process own them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

AnchorSet = Sequence[Sequence[tuple[float, float]]]

# Anchor (w, h) in input pixels at 640 px, per stride 8 / 16 / 32
# (ultralytics/yolov5 v7.0 models/yolov5s.yaml; the same in models/hub/yolov3.yaml and
# PaddleDetection configs/yolov3/_base_/yolov3_darknet53.yml).
DEFAULT_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),  # P3/8
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),  # P4/16
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),  # P5/32
)
DEFAULT_STRIDES: tuple[int, int, int] = (8, 16, 32)


def anchors_tensor(anchors: AnchorSet | Tensor | None = None) -> Tensor:
    """Anchors as ``float32 [nl, na, 2]`` (w, h in input pixels); ``None`` gives the defaults.

    Raises:
        ValueError: when the anchor set is not ``nl`` levels of ``na`` positive (w, h) pairs.
    """
    src = DEFAULT_ANCHORS if anchors is None else anchors
    if isinstance(src, Tensor):
        t = src.detach().clone().float()
    else:
        t = torch.tensor(src, dtype=torch.float32)
    if t.ndim != 3 or t.shape[-1] != 2 or t.numel() == 0:
        raise ValueError(f"anchors must be levels x anchors x (w, h); got shape {tuple(t.shape)}")
    if not bool((t > 0).all()):
        raise ValueError("anchor widths and heights must be positive")
    return t


class DetectHead(nn.Module):
    """YOLO prediction convolutions, one per level.

    Args:
        num_classes: number of classes ``nc``.
        in_channels: channels of the neck outputs, ordered by stride (8, 16, 32).
        strides: stride of each level in input pixels (used for the bias prior).
        num_anchors: anchors per cell ``na``.

    Shapes: list of ``[B, C_i, H_i, W_i]`` -> list of ``[B, na, H_i, W_i, 5 + nc]``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        strides: Sequence[int] = DEFAULT_STRIDES,
        num_anchors: int = 3,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(in_channels) != len(strides):
            raise ValueError("in_channels and strides must have one entry per level")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_outputs = num_classes + 5
        self.strides = tuple(int(s) for s in strides)
        self.m = nn.ModuleList(nn.Conv2d(c, num_anchors * self.num_outputs, 1) for c in in_channels)
        self.initialize_biases()

    @torch.no_grad()
    def initialize_biases(self, image_size: int = 640, objects_per_image: float = 8.0) -> None:
        """Log-prior bias init (v7.0 ``models/yolo.py`` ``DetectionModel._initialize_biases``).

        Objectness: ``log(8 / (640 / s)^2)`` (8 objects per 640 px image); classes:
        ``log(0.6 / (nc - 0.99999))``. Box biases keep PyTorch's default init.
        """
        for conv, stride in zip(self.m, self.strides):
            b = conv.bias.view(self.num_anchors, self.num_outputs)  # [na, 5 + nc]
            b[:, 4] += math.log(objects_per_image / (image_size / stride) ** 2)
            b[:, 5:] += math.log(0.6 / (self.num_classes - 0.99999))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``[B, C_i, H_i, W_i]`` per level -> ``[B, na, H_i, W_i, 5 + nc]`` per level."""
        out: list[Tensor] = []
        for conv, x in zip(self.m, features):
            y = conv(x)  # [B, na * (5 + nc), H, W]
            b, _, h, w = y.shape
            # [B, na, 5 + nc, H, W] -> [B, na, H, W, 5 + nc]
            y = y.view(b, self.num_anchors, self.num_outputs, h, w)
            out.append(y.permute(0, 1, 3, 4, 2).contiguous())
        return out
