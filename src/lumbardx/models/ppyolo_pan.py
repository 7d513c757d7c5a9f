"""PP-YOLO PAN neck (``PPYOLOPAN``) with CSP blocks, SPP, DropBlock and Mish.

Port of PaddleDetection ``ppdet/modeling/necks/yolo_fpn.py`` (``PPYOLOPAN``,
``PPYOLODetBlockCSP``, ``SPP``) as configured by ``configs/ppyolo/_base_/ppyolov2_r50vd_dcn.yml``
(``drop_block: true, block_size: 3, keep_prob: 0.9, spp: true``; ``conv_block_num: 3`` and
``act: mish`` are the class defaults). Every convolution is conv (no bias) -> BN -> Mish.

Each CSP block (``ch_in -> 2c``): a left and a right 1x1 conv to ``c``; the left branch runs
``conv_block_num`` pairs of [1x1, 3x3] convs ``c -> c`` (in the top block the second pair's 3x3
is replaced by SPP: max-pool 5/9/13 + input, concat, 1x1 ``4c -> c``), with DropBlock after the
second pair; then concat(left, right) and a 1x1 ``2c -> 2c``.

Data flow (``base = 512`` for PP-YOLOv2; channels scale with ``base``):

* top-down (FPN), from C5: block ``fpn.i`` with ``c = base / 2**i``; its output goes through a
  1x1 ``2c -> c`` route conv, nearest x2 upsampling and is concatenated *before* the next
  (finer) backbone map;
* bottom-up (PAN), from the stride-8 FPN output: a 3x3 stride-2 conv (channels kept), concat
  *before* the coarser FPN output, block ``pan.i`` with ``c = base / 2**i``.

Input: ``[C3, C4, C5]`` at strides 8/16/32. Output: ``[P3, P4, P5]`` with
``base / 2, base, 2 * base`` channels (256/512/1024 for PP-YOLOv2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import drop_block2d


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> Mish (``ConvBNLayer`` of ``ppdet/.../darknet.py``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.Mish(inplace=True),
        )


class SPP(nn.Module):
    """Spatial pyramid pooling: ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    Concatenates the input with stride-1 max-pools of sizes ``pool_sizes`` (5, 9, 13) and fuses
    them with a 1x1 conv-BN-Mish, so ``C_in`` must equal ``(1 + len(pool_sizes)) * c`` of the
    incoming map.
    """

    def __init__(
        self, in_channels: int, out_channels: int, pool_sizes: Sequence[int] = (5, 9, 13)
    ) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in pool_sizes)
        self.conv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.cat([x] + [pool(x) for pool in self.pools], dim=1))


class DropBlock(nn.Module):
    """DropBlock regularisation (training only) via ``torchvision.ops.drop_block2d``.

    ``keep_prob`` and ``block_size`` follow ``ppdet/modeling/layers.py`` DropBlock (drop
    probability ``p = 1 - keep_prob``). Maps smaller than the block (e.g. a 2x2 stride-32 map of
    a 64-pixel input) are passed through unchanged: no block fits in them.
    """

    def __init__(self, block_size: int = 3, keep_prob: float = 0.9) -> None:
        super().__init__()
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        self.block_size = block_size
        self.keep_prob = keep_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.keep_prob == 1.0 or min(x.shape[-2:]) < self.block_size:
            return x
        return drop_block2d(x, p=1.0 - self.keep_prob, block_size=self.block_size)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, keep_prob={self.keep_prob}"


class CSPBlock(nn.Module):
    """``PPYOLODetBlockCSP``: ``[B, ch_in, H, W] -> [B, 2c, H, W]`` (see module docstring)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        conv_block_num: int,
        spp: bool,
        drop_block: DropBlock | None,
    ) -> None:
        super().__init__()
        c = channels
        self.conv1 = ConvBNAct(in_channels, c, 1)  # left
        self.conv2 = ConvBNAct(in_channels, c, 1)  # right
        layers: list[nn.Module] = []
        for _ in range(conv_block_num):
            layers += [ConvBNAct(c, c, 1), ConvBNAct(c, c, 3)]
        if spp:
            if conv_block_num < 2:
                raise ValueError("SPP replaces the second pair's 3x3 conv: conv_block_num >= 2")
            layers[3] = SPP(4 * c, c)
        if drop_block is not None:
            layers.insert(min(4, len(layers)), drop_block)
        self.conv_module = nn.Sequential(*layers)
        self.conv3 = ConvBNAct(2 * c, 2 * c, 1)

    def forward(self, x: Tensor) -> Tensor:
        left = self.conv_module(self.conv1(x))
        return self.conv3(torch.cat([left, self.conv2(x)], dim=1))


@dataclass(frozen=True)
class PANConfig:
    """Settings of :class:`PPYOLOPAN` (defaults: ``ppyolov2_r50vd_dcn.yml`` / ``yolo_fpn.py``).

    Attributes:
        base_channels: ``c`` of the top block; blocks at stride 16 / 8 use ``c/2`` / ``c/4``
            (``channel = 512 // 2**i`` in ``yolo_fpn.py``).
        conv_block_num: [1x1, 3x3] pairs per CSP block (``yolo_fpn.py`` default 3).
        spp: SPP in the top FPN block (``ppyolov2_r50vd_dcn.yml``).
        drop_block: DropBlock inside every block (``ppyolov2_r50vd_dcn.yml``).
        block_size: DropBlock block size (``ppyolov2_r50vd_dcn.yml``).
        keep_prob: DropBlock keep probability (``ppyolov2_r50vd_dcn.yml``).
    """

    base_channels: int = 512
    conv_block_num: int = 3
    spp: bool = True
    drop_block: bool = True
    block_size: int = 3
    keep_prob: float = 0.9


class PPYOLOPAN(nn.Module):
    """PP-YOLO PAN: ``[C3, C4, C5] -> [P3, P4, P5]`` (strides 8, 16, 32).

    Args:
        in_channels: channels of C3, C4, C5 (512/1024/2048 for ResNet50-vd).
        cfg: block widths and regularisation.

    Attributes:
        out_channels: ``[base / 2, base, 2 * base]`` for strides 8, 16, 32.
    """

    def __init__(self, in_channels: Sequence[int], cfg: PANConfig = PANConfig()) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"PPYOLOPAN takes 3 maps (strides 8, 16, 32), got {len(in_channels)}")
        if cfg.base_channels % 4:
            raise ValueError(f"base_channels must be a multiple of 4, got {cfg.base_channels}")
        n = len(in_channels)
        widths = [cfg.base_channels // 2**i for i in range(n)]  # top (stride 32) first

        def drop() -> DropBlock | None:
            return DropBlock(cfg.block_size, cfg.keep_prob) if cfg.drop_block else None

        # top-down: i = 0 is stride 32
        self.fpn_blocks = nn.ModuleList()
        self.fpn_routes = nn.ModuleList()
        for i, ch_in in enumerate(reversed(list(in_channels))):
            if i > 0:
                ch_in += widths[i - 1]  # upsampled route of the coarser block
            self.fpn_blocks.append(
                CSPBlock(ch_in, widths[i], cfg.conv_block_num, cfg.spp and i == 0, drop())
            )
            if i < n - 1:
                self.fpn_routes.append(ConvBNAct(2 * widths[i], widths[i], 1))
        fpn_channels = [2 * w for w in widths]  # top first
        # bottom-up: pan_blocks[i] / pan_routes[i] produce the output of top-first level i
        self.pan_blocks = nn.ModuleList()
        self.pan_routes = nn.ModuleList()
        for i in range(n - 1):
            self.pan_routes.append(ConvBNAct(fpn_channels[i + 1], fpn_channels[i + 1], 3, stride=2))
            self.pan_blocks.append(
                CSPBlock(
                    fpn_channels[i] + fpn_channels[i + 1],
                    widths[i],
                    cfg.conv_block_num,
                    False,
                    drop(),
                )
            )
        self.out_channels = list(reversed(fpn_channels))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """``[C3, C4, C5]`` -> ``[P3, P4, P5]``, each ``[B, out_channels[i], H / s, W / s]``."""
        n = len(self.fpn_blocks)
        if len(feats) != n:
            raise ValueError(f"expected {n} feature maps, got {len(feats)}")
        fpn_feats: list[Tensor] = []  # top (stride 32) first
        route: Tensor | None = None
        for i, x in enumerate(reversed(feats)):
            if route is not None:
                x = torch.cat([route, x], dim=1)
            y = self.fpn_blocks[i](x)
            fpn_feats.append(y)
            if i < n - 1:
                route = F.interpolate(self.fpn_routes[i](y), scale_factor=2.0, mode="nearest")
        outs = [fpn_feats[-1]]  # stride 8
        route = fpn_feats[-1]
        for i in reversed(range(n - 1)):
            x = torch.cat([self.pan_routes[i](route), fpn_feats[i]], dim=1)
            route = self.pan_blocks[i](x)
            outs.append(route)
        return outs  # strides 8, 16, 32
