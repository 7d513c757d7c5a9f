"""The generic one-stage detector: ``Detector(backbone, neck, head, loss, postprocess)``.

Every architecture (YOLOv3, YOLOv5, PP-YOLOv2) is assembled from parts passed in, as in
torchvision's detection models. Shapes:

* input ``images``: ``float32 [B, 3, H, W]``, values in [0, 1]; H and W multiples of 32.
* ``backbone(images)`` -> list of feature maps ``[B, C_i, H / s_i, W / s_i]`` for strides
  ``s_i`` in increasing order (8, 16, 32).
* ``neck(features)`` -> list of feature maps, same strides, architecture-specific channels.
* ``head(features)`` -> list of raw prediction maps, one per stride, each
  ``[B, A, H / s, W / s, K]`` with ``A`` anchors per cell and ``K`` channels per anchor
  (architecture-specific, e.g. ``5 + nc`` for YOLOv5: x, y, w, h, objectness, classes).
* training: ``loss(raw, targets, image_size)`` -> dict of named scalar losses including
  ``"loss"`` (the total that is back-propagated). ``targets`` is ``float32 [M, 6]`` with rows
  ``(batch_index, class, x1, y1, x2, y2)`` in input pixels.
* evaluation: ``postprocess(raw, image_size)`` -> one dict per image with ``"boxes"``
  ``float32 [K, 4]`` xyxy input pixels, ``"scores"`` ``[K]`` in [0, 1], ``"labels"`` ``int64 [K]``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class Loss(Protocol):
    """Computes the training losses from raw head outputs."""

    def __call__(
        self, raw: list[Tensor], targets: Tensor, image_size: tuple[int, int]
    ) -> dict[str, Tensor]: ...


class PostProcess(Protocol):
    """Turns raw head outputs into final boxes per image."""

    def __call__(self, raw: list[Tensor], image_size: tuple[int, int]) -> list[dict[str, Tensor]]: ...


class Detector(nn.Module):
    """A one-stage detector assembled from a backbone, a neck and a head.

    Args:
        backbone: image -> multi-scale features (strides 8, 16, 32).
        neck: features -> fused features.
        head: fused features -> raw prediction maps ``[B, A, Hs, Ws, K]`` per stride.
        loss: raw predictions + targets -> loss dict (a module so it can hold buffers).
        postprocess: raw predictions -> boxes per image.
        name: the registry name (``"yolov5s"``), stored in checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        loss: nn.Module,
        postprocess: nn.Module,
        name: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.loss = loss
        self.postprocess = postprocess
        self.name = name

    def forward_raw(self, images: Tensor) -> list[Tensor]:
        """Raw prediction maps, one ``[B, A, H / s, W / s, K]`` tensor per stride."""
        return self.head(self.neck(self.backbone(images)))

    def forward(
        self, images: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Loss dict when training (``targets`` required), boxes per image otherwise."""
        raw = self.forward_raw(images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self.loss(raw, targets, size)
        return self.postprocess(raw, size)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int = 640) -> int:
    """Multiply-accumulate count of one forward pass at ``image_size`` (square), batch 1.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x MACs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        if isinstance(model, Detector):
            model.forward_raw(x)
        else:
            model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
