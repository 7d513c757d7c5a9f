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
  ``float32 [K, 4]`` xyxy input pixels, ``"scores"`` ``[K]`` in [0, 1], ``"labels"`` ``int64 [K]``;
  then, when the detector has one, ``rescorer(images, detections)`` -> the same dicts with
  new scores (a second stage that looks at the input again, e.g.
  :class:`lumbardx.models.slip_verifier.SlipVerifier`; it is not trained with the detector).
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

    Attributes:
        rescorer: optional second stage applied after ``postprocess`` in evaluation mode
            (``None`` by default); its weights are part of the state dict when set.
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
        self.rescorer: nn.Module | None = None

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
        detections = self.postprocess(raw, size)
        if self.rescorer is not None:
            detections = self.rescorer(images, detections)
        return detections


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def _register_deform_conv_flops() -> None:
    """Teach ``FlopCounterMode`` the cost of ``torchvision::deform_conv2d`` (DCNv2).

    Counted as the equivalent dense convolution (``2 * N * C_out * H_out * W_out * C_in/g * kh *
    kw`` FLOPs) plus the bilinear sampling and modulation of the ``C_in * kh * kw`` sampled
    values per output position (4 weights, one multiply by the mask: 5 multiply-adds).
    """
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    from torch.utils.flop_counter import register_flop_formula

    op = torch.ops.torchvision.deform_conv2d

    @register_flop_formula(op)
    def _deform_conv_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        n, c_in = input_shape[0], input_shape[1]
        c_out, c_per_group, kh, kw = weight_shape
        h_out, w_out = out_shape[-2], out_shape[-1]
        dense = 2 * n * c_out * h_out * w_out * c_per_group * kh * kw
        sampling = 2 * 5 * n * c_in * kh * kw * h_out * w_out
        return dense + sampling


_deform_flops_registered = False


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int = 640) -> int:
    """Multiply-accumulate count of one forward pass at ``image_size`` (square), batch 1.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x MACs), with deformable
    convolutions counted by :func:`_register_deform_conv_flops`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    global _deform_flops_registered
    if not _deform_flops_registered:
        _register_deform_conv_flops()
        _deform_flops_registered = True

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
