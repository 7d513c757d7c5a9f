"""Darknet-53, the YOLOv3 backbone.

Layout of PaddleDetection ``ppdet/modeling/backbones/darknet.py`` (``DarkNet(depth=53)``, as
used by ``configs/yolov3/_base_/yolov3_darknet53.yml``) and, layer for layer, of
ultralytics/yolov5 v7.0 ``models/hub/yolov3.yaml`` layers 0-10: a 3x3 stem conv to 32
channels, then five stages, each a 3x3 stride-2 conv doubling the channels followed by
``[1, 2, 8, 8, 4]`` residual units (1x1 to half, 3x3 back, plus the input). Every conv is
conv (no bias) -> BatchNorm -> LeakyReLU(0.1).

Shapes: ``[B, 3, H, W]`` -> ``[C3 [B, 256, H/8, W/8], C4 [B, 512, H/16, W/16],
C5 [B, 1024, H/32, W/32]]``.
"""

from __future__ import annotations

from torch import Tensor, nn

from lumbardx.models.common import Bottleneck, Conv, leaky_relu

# (channels, residual units) per stage, strides 2 / 4 / 8 / 16 / 32 (darknet.py DarkNet_cfg[53])
DARKNET53_STAGES: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def darknet_stage(c_in: int, c_out: int, units: int) -> nn.Sequential:
    """3x3 stride-2 downsampling conv then ``units`` residual units.

    Shapes: ``[B, c_in, H, W] -> [B, c_out, H/2, W/2]``.
    """
    layers: list[nn.Module] = [Conv(c_in, c_out, 3, 2, act=leaky_relu)]
    layers += [Bottleneck(c_out, c_out, shortcut=True, act=leaky_relu) for _ in range(units)]
    return nn.Sequential(*layers)


class Darknet53(nn.Module):
    """Darknet-53 returning the stride 8 / 16 / 32 stage outputs (``return_idx: [2, 3, 4]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv(3, 32, 3, 1, act=leaky_relu)
        stages: list[nn.Module] = []
        c_in = 32
        for c_out, units in DARKNET53_STAGES:
            stages.append(darknet_stage(c_in, c_out, units))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(c for c, _ in DARKNET53_STAGES[2:])  # (256, 512, 1024)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> ``[C3, C4, C5]`` (strides 8, 16, 32)."""
        x = self.stem(x)
        outs: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                outs.append(x)
        return outs
