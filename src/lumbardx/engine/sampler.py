"""Epoch samplers: LVIS repeat-factor sampling for class imbalance, and sample keys.

Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019; detectron2
``RepeatFactorTrainingSampler``): with ``f_c`` the fraction of training images that contain
class ``c`` and threshold ``t``, the class repeat factor is ``r_c = max(1, sqrt(t / f_c))`` and an
image's factor is the largest ``r_c`` of its classes (1 for an image without boxes). Each epoch an
image is drawn ``floor(r_i)`` times plus once more with probability ``r_i - floor(r_i)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def repeat_factors(
    labels_per_image: Sequence[np.ndarray], num_classes: int, threshold: float
) -> np.ndarray:
    """Per-image repeat factors ``float64 [N]`` (module docstring).

    Args:
        labels_per_image: class indices ``int [K_i]`` of each image's boxes.
        num_classes: number of classes.
        threshold: ``t``; classes in fewer than a fraction ``t`` of images are repeated.
    """
    n = len(labels_per_image)
    if n == 0:
        return np.zeros(0)
    counts = np.zeros(num_classes)
    for labels in labels_per_image:
        for c in set(np.asarray(labels, np.int64).tolist()):
            counts[c] += 1
    freq = counts / n
    with np.errstate(divide="ignore"):
        rc = np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / np.maximum(freq, 1e-12))), 1.0)
    out = np.ones(n)
    for i, labels in enumerate(labels_per_image):
        cls = np.unique(np.asarray(labels, np.int64))
        if len(cls):
            out[i] = rc[cls].max()
    return out


class RepeatFactorSampler(Sampler[int]):
    """Yields dataset indices, each repeated by stochastic rounding of its repeat factor.

    The epoch's list is shuffled with a generator seeded ``seed + epoch`` and, for
    ``world_size > 1``, padded to a multiple of ``world_size`` and split ``rank::world_size``
    (the same contract as ``torch.utils.data.DistributedSampler``). Call :meth:`set_epoch`.
    """

    def __init__(
        self, factors: np.ndarray, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.factors = torch.as_tensor(np.asarray(factors, np.float64))
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose indices :meth:`__iter__` yields."""
        self.epoch = epoch

    def epoch_indices(self) -> list[int]:
        """All ranks' indices of the current epoch, shuffled (before splitting)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        whole = torch.floor(self.factors)
        extra = (torch.rand(len(self.factors), generator=g, dtype=torch.float64)
                 < self.factors - whole)
        reps = (whole + extra).long()
        idx = torch.repeat_interleave(torch.arange(len(self.factors)), reps)
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        total = math.ceil(len(idx) / self.world_size) * self.world_size
        return (idx + idx[: total - len(idx)]) if idx else idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.world_size])

    def __len__(self) -> int:
        expected = float(self.factors.sum())
        return math.ceil(expected / self.world_size)


class KeyedSampler(Sampler[tuple[int, int]]):
    """Wraps an index sampler and yields ``(position, index)`` keys.

    ``position`` counts draws within the epoch, so a sample drawn twice in an epoch (repeat
    factor) gets two different augmentations. ``set_epoch`` is forwarded.
    """

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        """Forward to the wrapped sampler when it has ``set_epoch``."""
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(enumerate(iter(self.inner)))

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]
