"""Building blocks shared by the YOLOv5 and YOLOv3 (Darknet-53) detectors.

The blocks follow ultralytics/yolov5 v7.0 ``models/common.py`` (the Focus-free v6+/v7.0
layout): ``Conv`` (Conv2d without bias + BatchNorm + activation), ``Bottleneck``, ``C3`` and
``SPPF``. Every block keeps the spatial size unless its stride says otherwise; all tensors are
``float32 [B, C, H, W]``.

The activation is a constructor argument (a zero-argument factory) so that the same blocks
serve YOLOv5 (SiLU) and Darknet-53 / the YOLOv3 neck (LeakyReLU 0.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

ActFactory = Callable[[], nn.Module]


def silu() -> nn.Module:
    """YOLOv5's activation (``Conv.default_act`` in v7.0 ``models/common.py``)."""
    return nn.SiLU(inplace=True)


def leaky_relu() -> nn.Module:
    """Darknet-53's activation, LeakyReLU with slope 0.1 (PaddleDetection ``darknet.py``)."""
    return nn.LeakyReLU(0.1, inplace=True)


def autopad(kernel: int, padding: int | None = None) -> int:
    """'Same' padding for an odd kernel (v7.0 ``autopad``): ``kernel // 2`` unless given."""
    return kernel // 2 if padding is None else padding


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation.

    Shapes: ``[B, c_in, H, W] -> [B, c_out, ceil(H / stride), ceil(W / stride)]`` for 'same'
    padding.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act: ActFactory | None = silu,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            c_in, c_out, kernel, stride, autopad(kernel, padding), groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(c_out)
        self.act: nn.Module = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H', W']``."""
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 Conv to ``c_out * expansion`` then 3x3 Conv to ``c_out``, plus the input when
    ``shortcut`` and ``c_in == c_out`` (v7.0 ``Bottleneck``; Darknet-53's residual unit).

    Shapes: ``[B, c_in, H, W] -> [B, c_out, H, W]``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        shortcut: bool = True,
        groups: int = 1,
        expansion: float = 0.5,
        act: ActFactory | None = silu,
    ) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, hidden, 1, 1, act=act)
        self.cv2 = Conv(hidden, c_out, 3, 1, groups=groups, act=act)
        self.add = shortcut and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H, W]``."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions (v7.0 ``C3``).

    Two 1x1 branches to ``c_out / 2``; one runs ``n`` Bottlenecks (expansion 1.0); the two are
    concatenated and fused by a 1x1 Conv. Shapes: ``[B, c_in, H, W] -> [B, c_out, H, W]``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        n: int = 1,
        shortcut: bool = True,
        groups: int = 1,
        expansion: float = 0.5,
        act: ActFactory | None = silu,
    ) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, hidden, 1, 1, act=act)
        self.cv2 = Conv(c_in, hidden, 1, 1, act=act)
        self.cv3 = Conv(2 * hidden, c_out, 1, act=act)
        self.m = nn.Sequential(
            *(
                Bottleneck(hidden, hidden, shortcut, groups, expansion=1.0, act=act)
                for _ in range(n)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H, W]``."""
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (v7.0 ``SPPF``): 1x1 Conv to ``c_in / 2``, three chained
    ``MaxPool2d(k, stride 1, 'same')``, concatenation of the four maps, 1x1 Conv to ``c_out``.

    Equivalent to SPP with pools 5/9/13 for ``k = 5``. Shapes: ``[B, c_in, H, W] ->
    [B, c_out, H, W]``.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 5, act: ActFactory | None = silu) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1, 1, act=act)
        self.cv2 = Conv(hidden * 4, c_out, 1, 1, act=act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H, W]``."""
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 upsampling (``nn.Upsample(None, 2, 'nearest')`` in the YAMLs).

    Shapes: ``[B, C, H, W] -> [B, C, 2H, 2W]``.
    """
    return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
