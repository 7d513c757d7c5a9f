"""Matrix NMS (SOLOv2, Wang et al. 2020), as PP-YOLOv2 uses it for boxes.

torchvision has no Matrix NMS; this follows Paddle's ``matrix_nms`` kernel
(``paddle/phi/kernels/cpu/matrix_nms_kernel.cc``, called by ``MatrixNMS`` in
PaddleDetection ``ppdet/modeling/layers.py``). Within each class, boxes sorted by score
``s_1 >= s_2 >= ...``:

* ``IoU_ij`` for ``i < j`` (box ``i`` scores higher than box ``j``);
* ``comp_i = max_{k < i} IoU_ki`` -- how much box ``i`` is itself suppressed (0 for the first);
* decay of box ``j``: ``decay_j = min(1, min_{i < j} f(IoU_ij) / f(comp_i))`` with
  ``linear``: ``(1 - IoU_ij) / (1 - comp_i)`` and
  ``gaussian``: ``exp((comp_i**2 - IoU_ij**2) * sigma)``;
* decayed score ``s_j * decay_j``; boxes with a decayed score ``<= post_threshold`` are dropped.

The survivors of all classes are sorted by decayed score and the best ``keep_top_k`` kept.
IoU uses lumbardx's continuous pixel convention (``torchvision.ops.box_iou``); Paddle's
``normalized=False`` default adds 1 pixel to widths and heights instead. In the linear kernel a
box whose higher-scored neighbour is an exact duplicate (``comp_i = 1``) divides by ``1e-10``
rather than zero, as OpenVINO's port of the kernel does.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import box_iou

Kernel = Literal["linear", "gaussian"]


def top_k_per_class(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores of every class, overall in decreasing score order.

    Args:
        scores: ``[N]``.
        labels: ``[N]`` int64 class indices (>= 0).
        k: boxes kept per class; ``k <= 0`` keeps all.

    Returns:
        ``[K]`` int64 indices into ``scores``.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    if k <= 0 or len(order) == 0:
        return order
    lab = labels[order]
    lab_sorted, perm = torch.sort(lab, stable=True)  # grouped by class, score order inside
    counts = torch.bincount(lab_sorted)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(lab_sorted), device=scores.device) - starts[lab_sorted]
    keep = torch.zeros_like(lab, dtype=torch.bool)
    keep[perm[rank < k]] = True
    return order[keep]


def matrix_decay(iou: Tensor, kernel: Kernel = "linear", sigma: float = 2.0) -> Tensor:
    """Decay factors of score-sorted boxes of one class.

    Args:
        iou: ``[n, n]`` pairwise IoU of boxes sorted by decreasing score.
        kernel: ``"linear"`` or ``"gaussian"``.
        sigma: Gaussian kernel parameter (``gaussian_sigma``, 2.0 in ``layers.py``).

    Returns:
        ``[n]`` decay in (0, 1] (exactly 0 for a linear-kernel duplicate of the top box).
    """
    n = iou.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=iou.device).triu(diagonal=1)  # i < j
    iou = iou * upper
    comp = iou.max(dim=0).values  # [n] comp_i = max IoU with higher-scored boxes
    comp_i = comp[:, None]  # broadcast over columns j
    if kernel == "linear":
        decay = (1.0 - iou) / (1.0 - comp_i).clamp_min(1e-10)
    elif kernel == "gaussian":
        decay = torch.exp((comp_i**2 - iou**2) * sigma)
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r}: use 'linear' or 'gaussian'")
    decay = torch.where(upper, decay, torch.ones_like(decay))
    return decay.min(dim=0).values.clamp(max=1.0)  # [n] min over suppressors i < j


def matrix_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    kernel: Kernel = "linear",
    sigma: float = 2.0,
    post_threshold: float = 0.01,
    top_k: int = -1,
    keep_top_k: int = 100,
    score_threshold: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise Matrix NMS.

    Args:
        boxes: ``[N, 4]`` xyxy (any consistent unit; lumbardx passes input pixels).
        scores: ``[N]`` scores.
        labels: ``[N]`` int64 class of each box.
        kernel: ``"linear"`` (PP-YOLOv2, ``use_gaussian: false``) or ``"gaussian"``.
        sigma: Gaussian kernel parameter.
        post_threshold: decayed scores ``<=`` this are dropped (0.01, ``ppyolov2_r50vd_dcn.yml``).
        top_k: boxes per class entering the decay (highest scores first); ``<= 0`` keeps all
            (``nms_top_k: -1`` in the config; memory grows as ``top_k**2``).
        keep_top_k: boxes kept over all classes; ``<= 0`` keeps all (100 in the config).
        score_threshold: boxes scoring ``<=`` this are dropped before the decay.

    Returns:
        ``(boxes [K, 4], decayed scores [K], labels [K])`` sorted by decreasing decayed score.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4], got {list(boxes.shape)}")
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError("boxes, scores and labels must have the same length")
    keep = (scores > score_threshold).nonzero().squeeze(1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = top_k_per_class(scores, labels, top_k)  # score-sorted
    boxes, scores, labels = boxes[order], scores[order], labels[order]

    kept: list[Tensor] = []
    decayed: list[Tensor] = []
    for c in torch.unique(labels):
        idx = (labels == c).nonzero().squeeze(1)  # score-sorted within the class
        b = boxes[idx]
        ds = scores[idx] * matrix_decay(box_iou(b, b), kernel, sigma)
        ok = ds > post_threshold
        kept.append(idx[ok])
        decayed.append(ds[ok])
    if not kept:
        empty = boxes.new_zeros(0)
        return boxes.new_zeros(0, 4), empty, labels.new_zeros(0)
    idx = torch.cat(kept)
    ds = torch.cat(decayed)
    final = torch.sort(ds, descending=True, stable=True).indices
    if keep_top_k > 0:
        final = final[:keep_top_k]
    return boxes[idx[final]], ds[final], labels[idx[final]]
