"""YOLOv3 target assignment (``Gt2YoloTarget``), shared by YOLOv3 and PP-YOLOv2.

Port of ``Gt2YoloTarget`` in PaddleDetection ``ppdet/data/transform/batch_operators.py``,
vectorised over the boxes of a batch. For each ground-truth box (normalised centre ``gx, gy`` and
size ``gw, gh`` = pixels / image width or height):

1. the best of *all* anchors is the one with the largest width/height IoU (boxes aligned at a
   common corner); ties go to the lower anchor index;
2. on the level whose anchor mask contains that anchor, the box goes to cell
   ``gi = floor(gx * grid_w)``, ``gj = floor(gy * grid_h)`` (clamped inside the grid) and anchor
   slot ``n`` = position of the anchor in the mask, with targets

   * ``tx = gx * grid_w - gi``, ``ty = gy * grid_h - gj`` (cell offsets in [0, 1)),
   * ``tw = log(w_px / anchor_w)``, ``th = log(h_px / anchor_h)``,
   * ``tscale = 2 - gw * gh`` (small boxes weigh more),
   * ``tobj = score`` (1, or the mixup weight), one-hot class.

3. with ``iou_thresh < 1``, other anchors of the same level whose w/h IoU exceeds
   ``iou_thresh`` also get the box where no box was assigned (PP-YOLOv2 keeps the default 1.0:
   ``configs/ppyolo/_base_/ppyolov2_reader.yml``).

When two boxes fall on the same (image, anchor, cell), the later box's regression targets and
objectness win and the class one-hots accumulate, as in the reference's sequential loop. (For the
``iou_thresh`` extras, best-anchor matches of all boxes take precedence; the reference interleaves
them box by box.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

TARGET_CHANNELS = 6  # tx, ty, tw, th, tscale, tobj; classes follow


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of corner-aligned boxes from sizes: ``[M, 2]`` x ``[N, 2]`` -> ``[M, N]``."""
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(
        wh1[:, None, 1], wh2[None, :, 1]
    )
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / union


def _last_occurrence(index: Tensor) -> Tensor:
    """Positions in ``index`` ``[M]`` of the last occurrence of every distinct value."""
    sorted_index, perm = torch.sort(index, stable=True)
    last = torch.ones_like(sorted_index, dtype=torch.bool)
    last[:-1] = sorted_index[1:] != sorted_index[:-1]
    return perm[last]


class _Boxes(NamedTuple):
    """Per-box quantities, all ``[M]`` (``wh_px`` ``[M, 2]``)."""

    b: Tensor  # image index in the batch
    cls: Tensor  # class index
    gx: Tensor  # normalised centre x
    gy: Tensor  # normalised centre y
    gw: Tensor  # normalised width
    gh: Tensor  # normalised height
    wh_px: Tensor  # width, height in pixels
    score: Tensor  # objectness target


class Gt2YoloTarget:
    """Builds per-level YOLOv3 training targets from boxes in pixels.

    Args:
        anchors: ``[9, 2]`` anchor (width, height) in input pixels, small to large.
        anchor_masks: anchor indices per level, levels ordered stride 8, 16, 32.
        strides: level strides (8, 16, 32).
        num_classes: number of classes ``nc``.
        iou_thresh: extra-anchor IoU threshold (1.0 = best anchor only).
    """

    def __init__(
        self,
        anchors: Tensor | Sequence[Sequence[float]],
        anchor_masks: Sequence[Sequence[int]],
        strides: Sequence[int],
        num_classes: int,
        iou_thresh: float = 1.0,
    ) -> None:
        self.anchors = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
        self.anchor_masks = [list(m) for m in anchor_masks]
        self.strides = list(strides)
        if len(self.anchor_masks) != len(self.strides):
            raise ValueError("anchor_masks and strides must have the same length")
        if any(i >= len(self.anchors) for m in self.anchor_masks for i in m):
            raise ValueError(f"anchor mask index out of range for {len(self.anchors)} anchors")
        self.num_classes = num_classes
        self.iou_thresh = iou_thresh

    def __call__(
        self,
        targets: Tensor,
        batch_size: int,
        image_size: tuple[int, int],
        grid_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Tensor]:
        """Targets per level.

        Args:
            targets: ``[M, 6]`` rows ``(batch_index, class, x1, y1, x2, y2)`` in input pixels, or
                ``[M, 7]`` with a trailing per-box score (mixup weight, 1 otherwise).
            batch_size: ``B``.
            image_size: input ``(H, W)`` in pixels.
            grid_sizes: ``(grid_h, grid_w)`` per level; default ``(H // s, W // s)``.

        Returns:
            one tensor per level, ``[B, A, grid_h, grid_w, 6 + nc]`` with channels
            ``tx, ty, tw, th, tscale, tobj, onehot...`` (zeros where no box is assigned).
        """
        h_img, w_img = image_size
        if grid_sizes is None:
            grid_sizes = [(h_img // s, w_img // s) for s in self.strides]
        device = targets.device
        anchors = self.anchors.to(device)
        k = TARGET_CHANNELS + self.num_classes
        outs = [
            torch.zeros(batch_size, len(m), gh, gw, k, device=device)
            for m, (gh, gw) in zip(self.anchor_masks, grid_sizes)
        ]
        if targets.numel() == 0:
            return outs
        if targets.ndim != 2 or targets.shape[1] not in (6, 7):
            raise ValueError(f"targets must be [M, 6] or [M, 7], got {list(targets.shape)}")
        t = targets.float()
        score = t[:, 6] if t.shape[1] == 7 else torch.ones_like(t[:, 0])
        box_w, box_h = t[:, 4] - t[:, 2], t[:, 5] - t[:, 3]  # pixels
        t = t[(box_w > 0) & (box_h > 0) & (score > 0)]
        if len(t) == 0:
            return outs
        score = t[:, 6] if t.shape[1] == 7 else torch.ones_like(t[:, 0])
        b, cls = t[:, 0].long(), t[:, 1].long()
        if b.min() < 0 or b.max() >= batch_size:
            raise ValueError(f"target batch index out of range 0..{batch_size - 1}")
        if cls.min() < 0 or cls.max() >= self.num_classes:
            raise ValueError(f"target class out of range 0..{self.num_classes - 1}")
        wh_px = t[:, 4:6] - t[:, 2:4]  # [M, 2]
        boxes = _Boxes(
            b=b,
            cls=cls,
            gx=(t[:, 2] + t[:, 4]) / 2 / w_img,
            gy=(t[:, 3] + t[:, 5]) / 2 / h_img,
            gw=wh_px[:, 0] / w_img,
            gh=wh_px[:, 1] / h_img,
            wh_px=wh_px,
            score=score,
        )
        iou = wh_iou(wh_px, anchors)  # [M, 9]; scale-free, same as normalised
        best = iou.argmax(dim=1)  # first maximum, like the reference's strict ">" loop

        for level, mask in enumerate(self.anchor_masks):
            mask_t = torch.as_tensor(mask, device=device)
            hit = best[:, None] == mask_t[None, :]  # [M, A] best-anchor matches on this level
            rows, slot = hit.nonzero(as_tuple=True)
            self._write(outs[level], boxes, rows, slot, anchors[mask_t], only_empty=False)
            if self.iou_thresh < 1.0:
                extra = (iou[:, mask_t] > self.iou_thresh) & ~hit
                rows, slot = extra.nonzero(as_tuple=True)
                self._write(outs[level], boxes, rows, slot, anchors[mask_t], only_empty=True)
        return outs

    @staticmethod
    def _write(
        target: Tensor,
        boxes: _Boxes,
        rows: Tensor,
        slot: Tensor,
        level_anchors: Tensor,
        only_empty: bool,
    ) -> None:
        """Write boxes ``rows`` into anchor slots ``slot`` of ``target`` ``[B, A, gh, gw, K]``.

        ``level_anchors`` is ``[A, 2]`` (pixels); with ``only_empty`` cells that already hold a
        box (``tobj != 0``) are left alone.
        """
        if len(rows) == 0:
            return
        _, num_a, grid_h, grid_w, k = target.shape
        out = target.view(-1, k)  # [B*A*gh*gw, K]
        gi = (boxes.gx[rows] * grid_w).floor().long().clamp(0, grid_w - 1)
        gj = (boxes.gy[rows] * grid_h).floor().long().clamp(0, grid_h - 1)
        lin = ((boxes.b[rows] * num_a + slot) * grid_h + gj) * grid_w + gi
        if only_empty:
            free = out[lin, 5] == 0
            rows, slot, lin, gi, gj = rows[free], slot[free], lin[free], gi[free], gj[free]
            if len(rows) == 0:
                return
        anchor_wh = level_anchors[slot]  # [m, 2] pixels
        values = torch.stack(
            [
                boxes.gx[rows] * grid_w - gi,
                boxes.gy[rows] * grid_h - gj,
                torch.log(boxes.wh_px[rows, 0] / anchor_wh[:, 0]),
                torch.log(boxes.wh_px[rows, 1] / anchor_wh[:, 1]),
                2.0 - boxes.gw[rows] * boxes.gh[rows],
                boxes.score[rows],
            ],
            dim=1,
        )  # [m, 6]
        last = _last_occurrence(lin)  # later boxes overwrite earlier ones
        out[lin[last], :TARGET_CHANNELS] = values[last]
        out[lin, TARGET_CHANNELS + boxes.cls[rows]] = 1.0  # class one-hots accumulate
