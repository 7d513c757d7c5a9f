"""ResNet-vd backbones (ResNet18/50/101-vd, optional DCNv2) for PP-YOLOv2.

Port of PaddleDetection ``ppdet/modeling/backbones/resnet.py`` with ``variant: d``
(He et al., "Bag of Tricks", 2019):

* stem: three 3x3 conv-BN-ReLU (32, 32, 64 channels; the first with stride 2) and a 3x3
  stride-2 max-pool, instead of one 7x7 convolution;
* bottleneck blocks put the stride on the 3x3 convolution (variant b/c/d);
* the projection shortcut of a stride-2 block is ``AvgPool2d(2, 2, ceil_mode=True)`` followed by
  a stride-1 1x1 conv-BN; the first block of every stage has a projection shortcut (also
  ResNet18's first block, whose channels already match);
* ``dcn_v2_stages`` (0-based stage index; ``[3]`` = res5 in ``ppyolov2_r50vd_dcn.yml``) replaces
  the 3x3 convolution of every block of those stages by :class:`DeformableConvV2`.

Input ``[B, 3, H, W]``; output the stages in ``return_idx`` (default ``(1, 2, 3)`` = C3, C4, C5),
``[B, C_i, H / s_i, W / s_i]`` with strides 8, 16, 32 and channels 512/1024/2048 (ResNet50/101)
or 128/256/512 (ResNet18).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lumbardx.models.dcn import DeformableConvV2

# ppdet/modeling/backbones/resnet.py ResNet_cfg
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)  # ch_out_list, resnet.py
STAGE_STRIDES = (4, 8, 16, 32)


class ConvNorm(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional ReLU; DCNv2 instead of the conv when asked."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        relu: bool = True,
        dcn_v2: bool = False,
    ) -> None:
        padding = (kernel_size - 1) // 2
        conv: nn.Module
        if dcn_v2:
            conv = DeformableConvV2(in_channels, out_channels, kernel_size, stride, padding)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Projection shortcut of variant d: avg-pool then 1x1 conv when strided."""
    if stride == 2:
        return nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0, ceil_mode=True),
            ConvNorm(in_channels, out_channels, 1, 1, relu=False),
        )
    return ConvNorm(in_channels, out_channels, 1, stride, relu=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN (ResNet18/34); ``[B, C_in, H, W] -> [B, C_out, H / s, W / s]``."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: bool, dcn_v2: bool = False
    ) -> None:
        super().__init__()
        if dcn_v2:  # resnet.py BasicBlock: "Not implemented yet."
            raise ValueError("DCNv2 is only available in bottleneck ResNets (depth >= 50)")
        self.branch2a = ConvNorm(in_channels, width, 3, stride)
        self.branch2b = ConvNorm(width, width, 3, 1, relu=False)
        self.short = None if shortcut else _shortcut(in_channels, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.short is None else self.short(x)
        return self.relu(self.branch2b(self.branch2a(x)) + identity)


class BottleNeck(nn.Module):
    """1x1 -> 3x3 (strided, optionally DCNv2) -> 1x1 x4 expansion (ResNet50+)."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: bool, dcn_v2: bool = False
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.branch2a = ConvNorm(in_channels, width, 1, 1)
        self.branch2b = ConvNorm(width, width, 3, stride, dcn_v2=dcn_v2)
        self.branch2c = ConvNorm(width, out_channels, 1, 1, relu=False)
        self.short = None if shortcut else _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.short is None else self.short(x)
        return self.relu(self.branch2c(self.branch2b(self.branch2a(x))) + identity)


class ResNetVd(nn.Module):
    """ResNet-vd feature extractor.

    Args:
        depth: 18, 34, 50, 101 or 152.
        return_idx: 0-based stages to return (0 = res2 stride 4 ... 3 = res5 stride 32).
        dcn_v2_stages: 0-based stages whose 3x3 convolutions are DCNv2 (bottleneck depths only).
        in_channels: image channels (3; grayscale MRI is replicated to 3 channels upstream).

    Attributes:
        out_channels: channels of the returned maps, in order.
        strides: strides of the returned maps, in order.
    """

    def __init__(
        self,
        depth: int = 50,
        return_idx: Sequence[int] = (1, 2, 3),
        dcn_v2_stages: Sequence[int] = (3,),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"ResNet depth {depth} not in {sorted(RESNET_BLOCKS)}")
        if not return_idx or any(i not in range(4) for i in return_idx):
            raise ValueError(f"return_idx {list(return_idx)} must be stage indices 0..3")
        block: type[BasicBlock] | type[BottleNeck] = BottleNeck if depth >= 50 else BasicBlock
        self.return_idx = tuple(return_idx)
        stem_widths = (32, 32, 64)  # variant c/d stem, resnet.py conv1_1..conv1_3
        self.conv1 = nn.Sequential(
            ConvNorm(in_channels, stem_widths[0], 3, 2),
            ConvNorm(stem_widths[0], stem_widths[1], 3, 1),
            ConvNorm(stem_widths[1], stem_widths[2], 3, 1),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Sequential] = []
        ch_in = stem_widths[2]
        for i, (count, width) in enumerate(zip(RESNET_BLOCKS[depth], STAGE_WIDTHS)):
            blocks = []
            for j in range(count):
                blocks.append(
                    block(
                        ch_in,
                        width,
                        stride=2 if j == 0 and i > 0 else 1,
                        shortcut=j > 0,
                        dcn_v2=i in dcn_v2_stages,
                    )
                )
                ch_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.res_layers = nn.ModuleList(stages)
        all_channels = [w * block.expansion for w in STAGE_WIDTHS]
        self.out_channels = [all_channels[i] for i in self.return_idx]
        self.strides = [STAGE_STRIDES[i] for i in self.return_idx]
        self._init_weights()

    def _init_weights(self) -> None:
        # the DCNv2 offset/mask predictors stay zero-initialised (ppdet/modeling/layers.py)
        dcns = [m for m in self.modules() if isinstance(m, DeformableConvV2)]
        offset_convs = {id(m.conv_offset) for m in dcns}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in offset_convs:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, DeformableConvV2):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> list of ``[B, C_i, H / s_i, W / s_i]`` for ``return_idx``."""
        x = self.pool(self.conv1(x))
        outs = []
        for i, stage in enumerate(self.res_layers):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs
