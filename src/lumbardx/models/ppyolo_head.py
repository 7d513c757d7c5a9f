"""YOLOv3 head with the optional IoU-aware branch (PP-YOLO / PP-YOLOv2).

Port of ``YOLOv3Head`` in PaddleDetection ``ppdet/modeling/heads/yolo_head.py``: one 1x1
convolution (with bias) per level to ``A * (5 + nc)`` channels, or ``A * (6 + nc)`` with
``iou_aware`` (``ppyolov2_r50vd_dcn.yml``: ``iou_aware: true``). In the reference layout the
first ``A`` output channels are the IoU logits of the ``A`` anchors, followed by ``A`` groups of
``(x, y, w, h, obj, cls...)``; this module keeps that convolution layout and reorders the result
into lumbardx's raw-prediction layout

    ``[B, A, H, W, K]``, ``K = 5 + nc`` (+1 trailing IoU logit when ``iou_aware``),
    channels ``x, y, w, h, obj, cls_0 .. cls_{nc-1}[, iou]`` (all raw logits / log-scales).

Decoding lives in :mod:`lumbardx.models.postprocess_yolov3`, the loss in
:mod:`lumbardx.models.loss_yolov3`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class YOLOv3Head(nn.Module):
    """Per-level 1x1 prediction convolutions.

    Args:
        in_channels: channels of the neck outputs, strides 8, 16, 32 in order
            (256/512/1024 for PP-YOLOv2).
        num_classes: number of classes ``nc``.
        num_anchors: anchors per cell ``A`` on every level (3).
        iou_aware: add the IoU-prediction channel per anchor.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        num_anchors: int = 3,
        iou_aware: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.iou_aware = iou_aware
        self.num_outputs = 5 + num_classes  # per anchor, without the IoU channel
        per_anchor = self.num_outputs + (1 if iou_aware else 0)
        self.yolo_outputs = nn.ModuleList(
            nn.Conv2d(c, num_anchors * per_anchor, kernel_size=1, bias=True) for c in in_channels
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """Neck maps ``[B, C_i, H_i, W_i]`` -> raw predictions ``[B, A, H_i, W_i, K]``."""
        if len(feats) != len(self.yolo_outputs):
            raise ValueError(f"expected {len(self.yolo_outputs)} maps, got {len(feats)}")
        outs = []
        a, k = self.num_anchors, self.num_outputs
        for conv, feat in zip(self.yolo_outputs, feats):
            y = conv(feat)  # [B, A*(1?) + A*K, H, W]
            b, _, h, w = y.shape
            if self.iou_aware:
                iou, y = y[:, :a], y[:, a:]  # [B, A, H, W], [B, A*K, H, W]
            y = y.reshape(b, a, k, h, w).permute(0, 1, 3, 4, 2)  # [B, A, H, W, K]
            if self.iou_aware:
                y = torch.cat([y, iou.unsqueeze(-1)], dim=-1)  # [B, A, H, W, K + 1]
            outs.append(y.contiguous())
        return outs
