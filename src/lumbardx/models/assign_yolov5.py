"""YOLOv5 target assignment (ultralytics/yolov5 v7.0 ``utils/loss.py`` ``build_targets``).

A ground-truth box is matched, on every level, to every anchor whose width and height ratios
both lie within ``1 / anchor_t .. anchor_t`` (strictly: ``max(r, 1/r) < anchor_t``, default 4).
Each match is placed in the cell holding the box centre and in the (up to) two nearest
neighbour cells: the left cell when the centre's x fraction is < 0.5, otherwise the right cell
when its fraction is > 0.5, and likewise above / below for y. A neighbour is used only when
it lies inside the grid (the centre is more than one cell away from that border).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_convert

# Neighbour offsets in cells: self, left, up, right, down, all scaled by g = 0.5
# (v7.0 utils/loss.py ``off``).
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
_G = 0.5


@dataclass
class LevelTargets:
    """The positive samples of one level, ``n`` rows each.

    Attributes:
        batch: ``int64 [n]`` image index in the batch.
        anchor: ``int64 [n]`` anchor index on this level (0 .. na-1).
        gj: ``int64 [n]`` grid row (y cell), clamped to the grid.
        gi: ``int64 [n]`` grid column (x cell), clamped to the grid.
        box: ``float32 [n, 4]`` target ``cx, cy, w, h`` in grid units; ``cx, cy`` relative to the
            top-left corner of cell ``(gi, gj)`` (so in ``-0.5 .. 1.5`` for neighbour cells).
        anchor_wh: ``float32 [n, 2]`` matched anchor ``w, h`` in grid units.
        cls: ``int64 [n]`` class index.
    """

    batch: Tensor
    anchor: Tensor
    gj: Tensor
    gi: Tensor
    box: Tensor
    anchor_wh: Tensor
    cls: Tensor

    def __len__(self) -> int:
        return int(self.batch.shape[0])


def build_targets(
    targets: Tensor,
    grid_sizes: Sequence[tuple[int, int]],
    anchors: Tensor,
    strides: Sequence[float],
    anchor_t: float = 4.0,
) -> list[LevelTargets]:
    """Assign ground truth to anchors and cells on every level.

    Args:
        targets: ``float32 [M, 6]`` rows ``(batch_index, class, x1, y1, x2, y2)`` in input pixels.
        grid_sizes: ``(H_i, W_i)`` of each level's prediction map.
        anchors: ``float32 [nl, na, 2]`` anchor ``w, h`` in input pixels.
        strides: stride of each level in input pixels.
        anchor_t: the w/h ratio threshold (``hyp.scratch-low.yaml`` ``anchor_t: 4.0``).

    Returns:
        One :class:`LevelTargets` per level.
    """
    if targets.ndim != 2 or targets.shape[1] != 6:
        raise ValueError(
            f"targets must be [M, 6] (batch, class, x1, y1, x2, y2); got {tuple(targets.shape)}"
        )
    device = targets.device
    na = anchors.shape[1]
    nt = targets.shape[0]
    anchors = anchors.to(device=device, dtype=torch.float32)
    offsets_table = _OFFSETS.to(device) * _G  # [5, 2]

    # [nt, 6] (batch, class, cx, cy, w, h) in pixels, repeated per anchor with the anchor index
    # appended -> [na, nt, 7]
    xywh = box_convert(targets[:, 2:6].float(), "xyxy", "cxcywh")
    base = torch.cat((targets[:, :2].float(), xywh), dim=1)
    anchor_idx = torch.arange(na, device=device, dtype=torch.float32).view(na, 1, 1)
    anchor_idx = anchor_idx.expand(na, nt, 1)
    base = torch.cat((base.unsqueeze(0).expand(na, nt, 6), anchor_idx), dim=2)

    levels: list[LevelTargets] = []
    for level, ((h, w), stride) in enumerate(zip(grid_sizes, strides)):
        anchor_grid = anchors[level] / stride  # [na, 2] grid units
        t = base.clone()
        t[..., 2:6] /= stride  # pixels -> grid units
        if nt:
            ratio = t[..., 4:6] / anchor_grid[:, None]  # [na, nt, 2]
            matched = torch.max(ratio, 1.0 / ratio).max(dim=2).values < anchor_t  # [na, nt]
            t = t[matched]  # [n, 7]
            gxy = t[:, 2:4]  # centre, grid units
            gxi = torch.tensor([w, h], device=device, dtype=torch.float32) - gxy  # inverse
            left, up = ((gxy % 1 < _G) & (gxy > 1)).T
            right, down = ((gxi % 1 < _G) & (gxi > 1)).T
            use = torch.stack((torch.ones_like(left), left, up, right, down))  # [5, n]
            t = t.repeat((5, 1, 1))[use]  # [n', 7]
            offsets = (torch.zeros_like(gxy)[None] + offsets_table[:, None])[use]  # [n', 2]
        else:
            t = base[0]  # [0, 7]
            offsets = torch.zeros((0, 2), device=device)
        gxy = t[:, 2:4]
        gwh = t[:, 4:6]
        gij = (gxy - offsets).long()  # cell indices (before clamping, as in v7.0)
        a = t[:, 6].long()
        levels.append(
            LevelTargets(
                batch=t[:, 0].long(),
                anchor=a,
                gj=gij[:, 1].clamp(0, h - 1),
                gi=gij[:, 0].clamp(0, w - 1),
                box=torch.cat((gxy - gij, gwh), dim=1),
                anchor_wh=anchor_grid[a],
                cls=t[:, 1].long(),
            )
        )
    return levels
