"""YOLOv3 loss with PP-YOLO's options (grid-sensitive xy, IoU loss, IoU-aware loss).

Port of PaddleDetection ``ppdet/modeling/losses/yolo_loss.py`` (``YOLOv3Loss``),
``iou_loss.py`` (``IouLoss``) and ``iou_aware_loss.py`` (``IouAwareLoss``). Targets come from
:class:`lumbardx.models.assign_yolov3.Gt2YoloTarget`. Per level, with
``tscale_obj = tscale * tobj``:

* ``loss_xy``: ``scale_x_y == 1``: BCE(sigmoid(x), tx) (plain YOLOv3); otherwise L1
  ``|scale * sigmoid(x) - 0.5 (scale - 1) - tx|``; times ``tscale_obj``;
* ``loss_wh``: ``(|w - tw| + |h - th|) * tscale_obj`` (log-space L1);
* ``loss_iou`` (``iou_loss_weight`` set; 2.5 in ``ppyolov2_r50vd_dcn.yml``):
  ``weight * (1 - IoU**2) * tscale_obj`` between the decoded prediction and the decoded target;
* ``loss_iou_aware`` (``iou_aware``): ``BCEWithLogits(iou_logit, IoU.detach()) * tobj``
  (weight 1.0);
* ``loss_obj``: ``BCEWithLogits(obj, tobj > 0)`` weighted by ``tobj`` on positives, and on
  negatives only where the decoded box overlaps no ground truth of its image by more than
  ``ignore_thresh`` (0.7);
* ``loss_cls``: ``BCEWithLogits(cls, onehot) * tobj``.

Every term is summed over anchors, cells and channels, averaged over the batch, and summed over
levels; ``"loss"`` is the sum of the terms. (The IoU terms are only evaluated on positive cells:
the reference multiplies them by ``tobj`` = 0 elsewhere.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lumbardx.models.assign_yolov3 import Gt2YoloTarget
from lumbardx.models.postprocess_yolov3 import decode_boxes, grid_sensitive_xy


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of paired xyxy boxes ``[..., 4]`` x ``[..., 4]`` -> ``[...]`` (``bbox_iou``)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    overlap = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return overlap / (area_a + area_b - overlap + eps)


def padded_gt_boxes(targets: Tensor, batch_size: int) -> Tensor:
    """Ground-truth boxes per image: ``[M, >=6]`` targets -> ``[B, G, 4]`` xyxy, zero-padded."""
    if targets.numel() == 0:
        return targets.new_zeros(batch_size, 1, 4)
    b = targets[:, 0].long()
    counts = torch.bincount(b, minlength=batch_size)
    order = torch.sort(b, stable=True).indices
    b_sorted = b[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(b), device=targets.device) - starts[b_sorted]
    out = targets.new_zeros(batch_size, max(int(counts.max()), 1), 4)
    out[b_sorted, slot] = targets[order, 2:6].float()
    return out


class YOLOv3Loss(nn.Module):
    """YOLOv3 / PP-YOLOv2 training loss.

    Args:
        num_classes: ``nc``.
        anchors: 9 anchor (width, height) pairs in input pixels, small to large.
        anchor_masks: anchor indices per level, levels ordered stride 8, 16, 32 (the reference
            lists them coarse-first: ``[[6, 7, 8], [3, 4, 5], [0, 1, 2]]``).
        strides: level strides.
        scale_x_y: grid-sensitive factor (1.05 in ``ppyolov2_r50vd_dcn.yml``).
        iou_loss_weight: weight of the IoU loss, ``None`` to disable (2.5, ``IouLoss``).
        iou_aware: raw maps carry a trailing IoU logit; adds the IoU-aware loss.
        ignore_thresh: negatives overlapping a ground truth above this are ignored (0.7).
        iou_aware_loss_weight: weight of the IoU-aware loss (1.0, ``IouAwareLoss``).
        label_smooth: smooth class targets to ``1 - d`` / ``d``, ``d = min(1/nc, 1/40)``
            (``label_smooth: false`` for PP-YOLOv2).

    Call: ``loss(raw, targets, image_size)`` with raw ``[B, A, H, W, K]`` per level
    (``K = 5 + nc`` (+1)), targets ``[M, 6]`` ``(batch, class, x1, y1, x2, y2)`` in input pixels
    (or ``[M, 7]`` with a mixup score), ``image_size = (H, W)``. Returns a dict of scalars:
    ``loss``, ``loss_xy``, ``loss_wh``, ``loss_obj``, ``loss_cls`` (+ ``loss_iou``,
    ``loss_iou_aware``).
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence[tuple[float, float]] | Tensor,
        anchor_masks: Sequence[Sequence[int]] = ((0, 1, 2), (3, 4, 5), (6, 7, 8)),
        strides: Sequence[int] = (8, 16, 32),
        scale_x_y: float = 1.0,
        iou_loss_weight: float | None = None,
        iou_aware: bool = False,
        ignore_thresh: float = 0.7,
        iou_aware_loss_weight: float = 1.0,
        label_smooth: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        anchor_wh = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)  # [9, 2] px
        self.register_buffer("anchors", anchor_wh, persistent=False)
        self.anchor_masks = [list(m) for m in anchor_masks]
        self.strides = list(strides)
        self.assigner = Gt2YoloTarget(self.anchors, self.anchor_masks, self.strides, num_classes)
        self.scale_x_y = scale_x_y
        self.iou_loss_weight = iou_loss_weight
        self.iou_aware = iou_aware
        self.ignore_thresh = ignore_thresh
        self.iou_aware_loss_weight = iou_aware_loss_weight
        self.label_smooth = label_smooth

    def forward(
        self, raw: list[Tensor], targets: Tensor, image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        if len(raw) != len(self.anchor_masks):
            raise ValueError(f"expected {len(self.anchor_masks)} levels, got {len(raw)}")
        expected_k = 5 + self.num_classes + (1 if self.iou_aware else 0)
        batch = raw[0].shape[0]
        targets = targets.to(raw[0].device)
        grids = [(int(r.shape[2]), int(r.shape[3])) for r in raw]
        level_targets = self.assigner(targets, batch, image_size, grids)
        gt_boxes = padded_gt_boxes(targets, batch)  # [B, G, 4] pixels
        names = ["loss_xy", "loss_wh", "loss_obj", "loss_cls"]
        if self.iou_loss_weight is not None:
            names.append("loss_iou")
        if self.iou_aware:
            names.append("loss_iou_aware")
        losses = {name: raw[0].new_zeros(()) for name in names}
        for level, (p, t, mask) in enumerate(zip(raw, level_targets, self.anchor_masks)):
            if p.ndim != 5 or p.shape[-1] != expected_k or p.shape[1] != len(mask):
                raise ValueError(
                    f"level {level}: raw predictions must be [B, {len(mask)}, H, W, {expected_k}], "
                    f"got {list(p.shape)}"
                )
            for name, value in self._level_loss(p.float(), t, gt_boxes, mask, image_size).items():
                losses[name] = losses[name] + value / batch
        losses["loss"] = sum(losses.values(), raw[0].new_zeros(()))
        return losses

    def _level_loss(
        self,
        p: Tensor,
        t: Tensor,
        gt_boxes: Tensor,
        mask: list[int],
        image_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Summed (not batch-averaged) losses of one level.

        ``p`` ``[B, A, H, W, K]`` raw, ``t`` ``[B, A, H, W, 6 + nc]`` targets, ``gt_boxes``
        ``[B, G, 4]`` xyxy pixels.
        """
        nc = self.num_classes
        tx, ty, tw, th, tscale, tobj = t[..., :6].unbind(-1)  # each [B, A, H, W]
        tscale_obj = tscale * tobj
        out: dict[str, Tensor] = {}
        if abs(self.scale_x_y - 1.0) < 1e-10:
            loss_xy = F.binary_cross_entropy_with_logits(p[..., 0], tx, reduction="none")
            loss_xy = loss_xy + F.binary_cross_entropy_with_logits(p[..., 1], ty, reduction="none")
        else:
            loss_xy = (grid_sensitive_xy(p[..., 0], self.scale_x_y) - tx).abs()
            loss_xy = loss_xy + (grid_sensitive_xy(p[..., 1], self.scale_x_y) - ty).abs()
        out["loss_xy"] = (loss_xy * tscale_obj).sum()
        out["loss_wh"] = (((p[..., 2] - tw).abs() + (p[..., 3] - th).abs()) * tscale_obj).sum()

        anchors = self.anchors[mask]  # [A, 2]
        pred = decode_boxes(p, anchors, image_size, self.scale_x_y)  # [B, A, H, W, 4] xyxy px
        if self.iou_loss_weight is not None or self.iou_aware:
            pos = tobj > 0  # [B, A, H, W]
            pbox = pred[pos]  # [P, 4]
            gbox = self._decode_targets(t, anchors, image_size)[pos]  # [P, 4]
            iou = aligned_iou(pbox, gbox)  # [P]
            if self.iou_loss_weight is not None:
                loss_iou = self.iou_loss_weight * (1.0 - iou * iou)
                out["loss_iou"] = (loss_iou * tscale_obj[pos]).sum()
            if self.iou_aware:
                loss_ia = F.binary_cross_entropy_with_logits(
                    p[..., 5 + nc][pos], iou.detach(), reduction="none"
                )
                out["loss_iou_aware"] = self.iou_aware_loss_weight * (loss_ia * tobj[pos]).sum()

        obj_mask = (tobj > 0).to(p.dtype)
        with torch.no_grad():
            flat = pred.detach().reshape(p.shape[0], -1, 1, 4)  # [B, A*H*W, 1, 4]
            iou_max = aligned_iou(flat, gt_boxes[:, None]).max(dim=-1).values  # [B, A*H*W]
            iou_mask = (iou_max <= self.ignore_thresh).to(p.dtype).reshape(obj_mask.shape)
        loss_obj = F.binary_cross_entropy_with_logits(p[..., 4], obj_mask, reduction="none")
        out["loss_obj"] = (loss_obj * tobj + loss_obj * (1.0 - obj_mask) * iou_mask).sum()

        tcls = t[..., 6:]
        if self.label_smooth:
            delta = min(1.0 / nc, 1.0 / 40)
            tcls = torch.where(tcls > 0, 1.0 - delta, delta)
        loss_cls = F.binary_cross_entropy_with_logits(p[..., 5 : 5 + nc], tcls, reduction="none")
        out["loss_cls"] = (loss_cls * tobj.unsqueeze(-1)).sum()
        return out

    @staticmethod
    def _decode_targets(t: Tensor, anchors: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Target boxes ``[B, A, H, W, 4]`` xyxy pixels from ``tx, ty`` (offsets) and ``tw, th``."""
        _, _, grid_h, grid_w, _ = t.shape
        stride_y, stride_x = image_size[0] / grid_h, image_size[1] / grid_w
        gy, gx = torch.meshgrid(
            torch.arange(grid_h, device=t.device, dtype=t.dtype),
            torch.arange(grid_w, device=t.device, dtype=t.dtype),
            indexing="ij",
        )
        cx = (t[..., 0] + gx) * stride_x
        cy = (t[..., 1] + gy) * stride_y
        w = torch.exp(t[..., 2]) * anchors[:, 0].reshape(1, -1, 1, 1)
        h = torch.exp(t[..., 3]) * anchors[:, 1].reshape(1, -1, 1, 1)
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
