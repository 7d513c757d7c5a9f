"""The YOLOv5 training loss (ultralytics/yolov5 v7.0 ``utils/loss.py`` ``ComputeLoss``).

* box: ``1 - CIoU`` between the decoded prediction and the target at every positive
  (``torchvision.ops.complete_box_iou_loss``), mean over positives, per level.
* objectness: BCE over all cells to the detached CIoU (clamped at 0) at positives, 0 elsewhere;
  level weights ``balance = [4, 1, 0.4]`` for strides 8 / 16 / 32.
* class: BCE at positives (skipped when ``nc == 1``), one-hot targets, label smoothing 0.
* gains (``data/hyps/hyp.scratch-low.yaml``, scaled as in ``train.py``): box ``0.05 * 3 / nl``,
  cls ``0.5 * nc / 80 * 3 / nl``, obj ``1.0 * (image_size / 640)^2 * 3 / nl``.
* total = ``(box + obj + cls) * batch_size``.

Ignored regions (target rows of class :data:`~lumbardx.data.classes.IGNORE_LABEL`, an addition
to the reference): on every level, the cells whose centre lies inside such a region, and the
cell holding its centre, get no objectness loss for any anchor unless the anchor is a positive
of a box; the mean keeps its denominator, so every other cell weighs as before. Without such
rows the loss is the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, complete_box_iou_loss

from lumbardx.data.classes import IGNORE_LABEL
from lumbardx.models.assign_yolov5 import LevelTargets, build_targets
from lumbardx.models.yolo_head import DEFAULT_STRIDES, AnchorSet, anchors_tensor


SHARED_LABELS = ("reference", "union")


def union_labels(lt: LevelTargets, shape: torch.Size, num_classes: int) -> Tensor:
    """``bool [n, nc]``: for each positive row of ``lt``, every class of the rows that share
    its prediction (same image, anchor and cell on a level of ``shape`` ``[B, na, H, W, ...]``).
    """
    _, na, h, w = shape[:4]
    key = ((lt.batch * na + lt.anchor) * h + lt.gj) * w + lt.gi
    _, inverse = torch.unique(key, return_inverse=True)
    onehot = nn.functional.one_hot(lt.cls, num_classes).to(torch.float32)
    table = torch.zeros(int(inverse.max()) + 1, num_classes, device=onehot.device)
    table.index_add_(0, inverse, onehot)
    return table[inverse] > 0


def ignored_cells(regions: Tensor, batch_size: int, grid: tuple[int, int], stride: int) -> Tensor:
    """``bool [B, H, W]``: the cells of a level (``grid`` ``(H, W)``, ``stride`` input pixels a
    cell) whose centre lies inside one of their image's ``regions`` (``[R, 5]`` rows
    ``(batch_index, x1, y1, x2, y2)`` in input pixels), and the cell holding each region's
    centre (so a region smaller than a cell still masks one)."""
    h, w = grid
    device = regions.device
    mask = torch.zeros(batch_size, h * w, device=device)
    if not len(regions):
        return mask.reshape(batch_size, h, w) > 0
    b = regions[:, 0].long()
    x1, y1, x2, y2 = (regions[:, k, None] for k in range(1, 5))  # [R, 1]
    cx = ((torch.arange(w, device=device) + 0.5) * stride).repeat(h)[None]  # [1, H W]
    cy = ((torch.arange(h, device=device) + 0.5) * stride).repeat_interleave(w)[None]
    inside = (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)  # [R, H W]
    mask.index_add_(0, b, inside.to(mask.dtype))
    gx = ((x1 + x2)[:, 0] / (2 * stride)).long().clamp(0, w - 1)
    gy = ((y1 + y2)[:, 0] / (2 * stride)).long().clamp(0, h - 1)
    mask[b, gy * w + gx] = 1.0
    return mask.reshape(batch_size, h, w) > 0


class YOLOv5Loss(nn.Module):
    """YOLOv5 loss on raw head outputs.

    Args:
        num_classes: number of classes ``nc``.
        anchors: anchors ``[nl][na] (w, h)`` in input pixels (``None``: the v7.0 defaults).
        strides: stride of each level.
        image_size: training image size in pixels (scales the objectness gain).
        box_gain, cls_gain, obj_gain: unscaled hyper-parameter gains (``hyp.scratch-low.yaml``).
        anchor_t: anchor / target w-h ratio threshold.
        balance: objectness weight per level.
        label_smoothing: class label smoothing epsilon (targets ``1 - eps/2`` and ``eps/2``).
        shared_labels: when one prediction (image, level, anchor, cell) is the positive of
            boxes of different classes -- a spondylolisthesis box around a disc box, say --
            ``"reference"`` (YOLOv5 v7.0) gives it one one-hot class target per box, which
            pulls both class scores towards 0.5; ``"union"`` gives each of its rows the union
            of those classes (a multi-hot target: the disc is both). Attribute, settable after
            construction (the recipe's ``shared_labels``).

    Call: ``loss(raw, targets, image_size)`` with ``raw`` a list of ``[B, na, H_i, W_i, 5 + nc]``
    and ``targets`` ``[M, 6]`` rows ``(batch_index, class, x1, y1, x2, y2)`` in input pixels;
    a row of class :data:`~lumbardx.data.classes.IGNORE_LABEL` is an ignored region (module
    docstring).
    Returns ``{"loss", "box", "obj", "cls"}``; only ``"loss"`` carries gradients.
    """

    #: Target rows of class :data:`~lumbardx.data.classes.IGNORE_LABEL` are understood.
    supports_ignore = True

    def __init__(
        self,
        num_classes: int,
        anchors: AnchorSet | Tensor | None = None,
        strides: Sequence[int] = DEFAULT_STRIDES,
        image_size: int = 640,
        box_gain: float = 0.05,
        cls_gain: float = 0.5,
        obj_gain: float = 1.0,
        anchor_t: float = 4.0,
        balance: Sequence[float] = (4.0, 1.0, 0.4),
        label_smoothing: float = 0.0,
        shared_labels: str = "reference",
    ) -> None:
        super().__init__()
        anchor_px = anchors_tensor(anchors)
        nl = anchor_px.shape[0]
        if len(strides) != nl or len(balance) != nl:
            raise ValueError(f"need {nl} strides and balance weights, one per anchor level")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.register_buffer("anchors", anchor_px)  # [nl, na, 2] input pixels
        self.box_gain = box_gain * 3 / nl
        self.cls_gain = cls_gain * num_classes / 80 * 3 / nl
        self.obj_gain = obj_gain * (image_size / 640) ** 2 * 3 / nl
        self.anchor_t = anchor_t
        self.balance = tuple(float(b) for b in balance)
        self.cls_pos = 1.0 - 0.5 * label_smoothing
        self.cls_neg = 0.5 * label_smoothing
        if shared_labels not in SHARED_LABELS:
            raise ValueError(f"shared_labels must be one of {SHARED_LABELS}")
        self.shared_labels = shared_labels

    def forward(
        self, raw: list[Tensor], targets: Tensor, image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Loss dict for one batch (see class docstring)."""
        device = raw[0].device
        regions = targets[:0, [0, 2, 3, 4, 5]]
        if targets.numel():
            cls = targets[:, 1]
            ignored = cls == IGNORE_LABEL
            if bool(((cls < 0) & ~ignored).any()) or bool((cls >= self.num_classes).any()):
                raise ValueError(f"target classes must lie in 0..{self.num_classes - 1} (or be "
                                 f"{IGNORE_LABEL}, an ignored region)")
            if bool(ignored.any()):
                regions = targets[ignored][:, [0, 2, 3, 4, 5]].to(device)
                targets = targets[~ignored]
        grid_sizes = [(int(p.shape[2]), int(p.shape[3])) for p in raw]
        levels = build_targets(
            targets.to(device), grid_sizes, self.anchors, self.strides, self.anchor_t
        )
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for i, (pi, lt) in enumerate(zip(raw, levels)):
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=pi.dtype)  # [B, na, H, W]
            if len(lt):
                ps = pi[lt.batch, lt.anchor, lt.gj, lt.gi]  # [n, 5 + nc]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5  # cell-relative centre, grid units
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * lt.anchor_wh  # grid units
                pbox = box_convert(torch.cat((pxy, pwh), 1), "cxcywh", "xyxy")
                tbox = box_convert(lt.box, "cxcywh", "xyxy")
                # [n] 1 - CIoU
                ciou_loss = complete_box_iou_loss(pbox.float(), tbox.float(), reduction="none")
                lbox = lbox + ciou_loss.mean()
                iou = (1.0 - ciou_loss).detach().clamp(0).to(tobj.dtype)
                tobj[lt.batch, lt.anchor, lt.gj, lt.gi] = iou
                if self.num_classes > 1:
                    tcls = torch.full_like(ps[:, 5:], self.cls_neg)
                    if self.shared_labels == "union":
                        tcls[union_labels(lt, pi.shape, self.num_classes)] = self.cls_pos
                    else:
                        tcls[torch.arange(len(lt), device=device), lt.cls] = self.cls_pos
                    lcls = lcls + nn.functional.binary_cross_entropy_with_logits(ps[:, 5:], tcls)
            if len(regions):
                keep = ~ignored_cells(regions, pi.shape[0], grid_sizes[i], self.strides[i])
                keep = keep[:, None].expand(tobj.shape).clone()  # [B, na, H, W]
                if len(lt):
                    keep[lt.batch, lt.anchor, lt.gj, lt.gi] = True
                obj_all = nn.functional.binary_cross_entropy_with_logits(
                    pi[..., 4], tobj, reduction="none")
                obj_i = (obj_all * keep).sum() / obj_all.numel()
            else:
                obj_i = nn.functional.binary_cross_entropy_with_logits(pi[..., 4], tobj)
            lobj = lobj + obj_i * self.balance[i]
        lbox = lbox * self.box_gain
        lobj = lobj * self.obj_gain
        lcls = lcls * self.cls_gain
        batch_size = raw[0].shape[0]
        total = (lbox + lobj + lcls) * batch_size
        return {"loss": total, "box": lbox.detach(), "obj": lobj.detach(), "cls": lcls.detach()}
