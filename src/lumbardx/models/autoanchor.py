"""AutoAnchor: check how well anchors fit the training boxes and re-fit them when they do not
(ultralytics/yolov5 v7.0 ``utils/autoanchor.py``: ``check_anchors`` and ``kmean_anchors``).

All sizes are box widths / heights in pixels **at the training image size** (each image scaled
so that its long side equals ``image_size``, as the letterboxing loader does).

* ratio metric of a box and an anchor: ``min(w/a_w, a_w/w, h/a_h, a_h/h)`` (1 = identical).
* best possible recall (BPR): share of boxes whose best anchor has metric > ``1 / thr``
  (``thr = anchor_t = 4``): the boxes the YOLOv5 assigner can match at all.
* re-fit unless BPR > 0.98: k-means on whitened (w, h), then 1000 generations of genetic
  evolution (mutation probability 0.9, sigma 0.1) of the fitness
  ``mean(best * (best > 1/thr))``; the new anchors replace the old only if their BPR is higher.

Results are deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.vq import kmeans
from torch import Tensor

BPR_THRESHOLD = 0.98  # v7.0 check_anchors: re-fit unless the best possible recall exceeds this


def label_wh(
    boxes: Sequence[np.ndarray], image_sizes: Sequence[tuple[int, int]], image_size: int
) -> np.ndarray:
    """Box sizes at the training image size.

    Args:
        boxes: per image a ``float [N_i, 4]`` array of xyxy boxes in that image's pixels.
        image_sizes: per image ``(width, height)`` in pixels.
        image_size: training size; each image is scaled so its long side equals it.

    Returns:
        ``float32 [sum N_i, 2]`` box ``(w, h)`` in training pixels.
    """
    if len(boxes) != len(image_sizes):
        raise ValueError("boxes and image_sizes must have one entry per image")
    out: list[np.ndarray] = []
    for b, (w, h) in zip(boxes, image_sizes):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        scale = image_size / max(w, h)
        out.append(np.stack((b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), axis=1) * scale)
    return np.concatenate(out, 0).astype(np.float32) if out else np.zeros((0, 2), np.float32)


def anchor_metric(wh: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Ratio metric of every box with every anchor.

    Args:
        wh: ``[N, 2]`` box sizes; anchors: ``[K, 2]`` anchor sizes (same units).

    Returns:
        ``(x [N, K], best [N])``: the metric in (0, 1] and its maximum over anchors.
    """
    r = wh[:, None] / anchors[None]  # [N, K, 2]
    x = torch.min(r, 1 / r).min(2).values  # [N, K]
    return x, x.max(1).values


@dataclass(frozen=True)
class AnchorFit:
    """How anchors fit a set of boxes.

    Attributes:
        bpr: best possible recall, share of boxes with a matchable anchor (0..1).
        anchors_per_target: mean number of anchors per box above the threshold (AAT).
    """

    bpr: float
    anchors_per_target: float


def anchor_fit(
    wh: np.ndarray | Tensor, anchors: np.ndarray | Tensor, thr: float = 4.0
) -> AnchorFit:
    """BPR and anchors-per-target of ``anchors`` (any shape ``[..., 2]``) on boxes ``wh [N, 2]``."""
    wh_t = torch.as_tensor(np.asarray(wh, dtype=np.float32)).view(-1, 2)
    k = torch.as_tensor(np.asarray(anchors, dtype=np.float32)).view(-1, 2)
    if len(wh_t) == 0:
        raise ValueError("no boxes to fit anchors to")
    x, best = anchor_metric(wh_t, k)
    return AnchorFit(
        bpr=float((best > 1 / thr).float().mean()),
        anchors_per_target=float((x > 1 / thr).float().sum(1).mean()),
    )


def kmean_anchors(
    wh: np.ndarray,
    n: int = 9,
    image_size: int = 640,
    thr: float = 4.0,
    generations: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Fit ``n`` anchors to box sizes by k-means and genetic evolution (v7.0 ``kmean_anchors``).

    Args:
        wh: ``[N, 2]`` box sizes in training pixels.
        n: number of anchors.
        image_size: training size (scale of the random initialisation fallback).
        thr: anchor_t ratio threshold.
        generations: evolution steps.
        seed: random seed (k-means initialisation and mutations).

    Returns:
        ``float32 [n, 2]`` anchors ``(w, h)`` sorted by area, small -> large.
    """
    rng = np.random.default_rng(seed)
    inv_thr = 1 / thr
    wh0 = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    wh_kept = wh0[(wh0 >= 2.0).any(1)]  # ignore boxes under 2 px (v7.0 filter)
    wh_t = torch.from_numpy(wh_kept)

    def fitness(k: np.ndarray) -> float:
        _, best = anchor_metric(wh_t, torch.as_tensor(k, dtype=torch.float32))
        return float((best * (best > inv_thr).float()).mean())

    k: np.ndarray | None = None
    if n <= len(wh_kept):
        s = wh_kept.std(0)
        s = np.where(s > 0, s, 1.0)  # whitening sigmas (a constant column stays unscaled)
        centroids, _ = kmeans(wh_kept / s, n, iter=30, rng=rng)
        if len(centroids) == n:  # k-means can return fewer centroids on too-similar boxes
            k = centroids * s
    if k is None:  # v7.0 falls back to a random initialisation
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * image_size
    k = k.astype(np.float64)

    f = fitness(k) if len(wh_kept) else 0.0
    shape, mutation_prob, sigma = k.shape, 0.9, 0.1
    for _ in range(generations if len(wh_kept) else 0):
        v = np.ones(shape)
        while (v == 1).all():  # mutate until a change occurs
            mutate = rng.random(shape) < mutation_prob
            v = (mutate * rng.random() * rng.standard_normal(shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
    return k[np.argsort(k.prod(1))].astype(np.float32)


@dataclass(frozen=True)
class AnchorCheck:
    """Outcome of :func:`check_anchors`.

    Attributes:
        anchors: ``[nl][na] (w, h)`` in training pixels, small -> large (the re-fit when it was
            better, else the input anchors).
        bpr_before: BPR of the input anchors.
        bpr_after: BPR of the returned anchors.
        refitted: whether the returned anchors are the re-fit.
    """

    anchors: list[list[tuple[float, float]]]
    bpr_before: float
    bpr_after: float
    refitted: bool


def check_anchors(
    wh: np.ndarray,
    anchors: Sequence[Sequence[tuple[float, float]]] | np.ndarray | Tensor,
    thr: float = 4.0,
    image_size: int = 640,
    generations: int = 1000,
    seed: int = 0,
    augment_scale: bool = True,
) -> AnchorCheck:
    """Check anchors against the boxes and re-fit them unless BPR > 0.98 (v7.0 ``check_anchors``).

    Args:
        wh: ``[N, 2]`` box sizes in training pixels (see :func:`label_wh`).
        anchors: current anchors ``[nl, na, 2]`` in training pixels, ordered by stride.
        thr: anchor_t ratio threshold.
        image_size: training size.
        generations: evolution steps of the re-fit.
        seed: random seed (scale augmentation, k-means, evolution).
        augment_scale: multiply each box by a random scale in 0.9..1.1 for the BPR check, as
            v7.0 does to mimic scale augmentation.
    """
    a = anchors.detach().cpu().numpy() if isinstance(anchors, Tensor) else np.asarray(anchors)
    a = a.astype(np.float32)
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"anchors must be levels x anchors x (w, h); got shape {a.shape}")
    wh = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    if augment_scale:
        wh_check = wh * rng.uniform(0.9, 1.1, size=(len(wh), 1)).astype(np.float32)
    else:
        wh_check = wh
    before = anchor_fit(wh_check, a, thr).bpr
    if before > BPR_THRESHOLD:
        return AnchorCheck(_nested(a), before, before, refitted=False)
    new = kmean_anchors(wh, n=a.shape[0] * a.shape[1], image_size=image_size, thr=thr,
                        generations=generations, seed=seed)
    after = anchor_fit(wh_check, new, thr).bpr
    if after > before:
        return AnchorCheck(_nested(new.reshape(a.shape)), before, after, refitted=True)
    return AnchorCheck(_nested(a), before, before, refitted=False)


def _nested(a: np.ndarray) -> list[list[tuple[float, float]]]:
    """``[nl, na, 2]`` array -> nested lists of ``(w, h)`` tuples."""
    return [[(float(w), float(h)) for w, h in level] for level in a]
