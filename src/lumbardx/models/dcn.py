"""Modulated deformable convolution (DCNv2) on ``torchvision.ops.deform_conv2d``.

PP-YOLOv2 replaces every 3x3 convolution of the last ResNet stage by DCNv2
(``dcn_v2_stages: [3]`` in ``configs/ppyolo/_base_/ppyolov2_r50vd_dcn.yml``). As in
PaddleDetection's ``DeformableConvV2`` (``ppdet/modeling/layers.py``):

* a plain convolution with the same kernel, stride and padding, **with bias** and
  **zero-initialised** weight and bias, predicts ``3 * k * k`` channels per output pixel;
* the first ``2 * k * k`` channels are the sampling offsets, as ``(dy, dx)`` pairs per kernel
  position in row-major kernel order (``offset[:, 2 * i]`` = dy, ``offset[:, 2 * i + 1]`` = dx
  of kernel tap ``i``), which is exactly the layout ``torchvision.ops.deform_conv2d`` expects;
* the last ``k * k`` channels are mask logits, passed through a sigmoid;
* the main (deformable) convolution has no bias (a BatchNorm follows it).

With the zero initialisation the offsets start at 0 and the mask at ``sigmoid(0) = 0.5``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class DeformableConvV2(nn.Module):
    """DCNv2 layer: ``[B, C_in, H, W] -> [B, C_out, H', W']``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: square kernel size ``k``.
        stride: stride of both the offset/mask convolution and the deformable convolution.
        padding: zero padding; defaults to ``(k - 1) // 2``.
        groups: groups of the deformable convolution (offsets are shared by all groups).
        bias: whether the deformable convolution has a bias (``False`` in the ResNet-vd use,
            ``ppdet/modeling/backbones/resnet.py`` ConvNormLayer).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by {groups}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        self.offset_channels = 2 * kernel_size * kernel_size
        self.mask_channels = kernel_size * kernel_size
        # [B, 3k^2, H', W']: offsets (2k^2) then mask logits (k^2); zero init (ppdet layers.py)
        self.conv_offset = nn.Conv2d(
            in_channels,
            self.offset_channels + self.mask_channels,
            kernel_size,
            stride=stride,
            padding=self.padding,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """Deformable convolution of ``x`` ``[B, C_in, H, W]`` -> ``[B, C_out, H', W']``."""
        offset_mask = self.conv_offset(x)  # [B, 3k^2, H', W']
        offset, mask_logit = torch.split(
            offset_mask, [self.offset_channels, self.mask_channels], dim=1
        )
        return deform_conv2d(
            x,
            offset,  # [B, 2k^2, H', W'] (dy, dx) pairs
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            mask=torch.sigmoid(mask_logit),  # [B, k^2, H', W'] in (0, 1)
        )

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, kernel_size={k}, stride={self.stride}, padding={self.padding}"
