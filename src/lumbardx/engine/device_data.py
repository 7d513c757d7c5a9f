"""The decoded training set as tensors on the training device.

:class:`DeviceSet` reads every sample of a training set once and keeps it where the model
trains (a GPU, or the CPU), so that :mod:`lumbardx.engine.device_augment` can build whole
augmented batches with tensor operations and no per-sample Python or worker processes.

Layout (``N`` samples, ``S`` the training size, ``C`` channels, ``K`` the most boxes of a
sample):

* ``images[k]`` -- ``uint8 [N, C, S >> k, S >> k]`` for pyramid level ``k`` in 0..2: each image
  resized (bilinear, antialiased) to ``S x S`` whatever its aspect, then halved ``k`` times by
  2x2 averaging. Sampling reads level ``k`` where the augmentation shrinks the image by 2**k or
  more, as the CPU pipeline's antialiased resizes would (:func:`pyramid_level`).
* ``sizes`` -- ``float64 [N, 2]``: ``(w, h)`` of each image resized to a long side of ``S``
  (:func:`lumbardx.engine.mosaic.resize_long_side`, the frame of the CPU pipeline's mosaic):
  the geometry of every sample is computed in that frame, so the stretch to ``S x S`` is only a
  storage layout.
* ``boxes`` -- ``float64 [N, K, 4]`` xyxy pixels of that frame; ``labels`` -- ``int64 [N, K]``,
  ``-1`` where a sample has fewer than ``K`` boxes.

``C`` is 2 when any sample is a T1/T2 pair (:class:`lumbardx.data.pairs.SequencePairs`): a
gray sample then fills both channels, as the CPU pipeline reads a gray image as its own channel
of a pair. Otherwise ``C`` is 1.

Memory: ``N * C * S * S * 1.31`` bytes for the images (832 slices at 384 px in pairs: 322 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lumbardx.data.boxes import Sample
from lumbardx.engine.letterbox import resize_gray
from lumbardx.engine.pipeline import sample_arrays

LEVELS = 3  #: pyramid levels kept: full size, half, quarter


@dataclass
class DeviceSet:
    """A training set on one device (see the module docstring for shapes and units)."""

    images: list[Tensor]
    sizes: Tensor
    boxes: Tensor
    labels: Tensor
    size: int
    pad_value: int

    @property
    def device(self) -> torch.device:
        """Where the images live."""
        return self.images[0].device

    @property
    def channels(self) -> int:
        """1 (gray) or 2 (T1/T2 pairs)."""
        return int(self.images[0].shape[1])

    def __len__(self) -> int:
        return int(self.images[0].shape[0])

    def nbytes(self) -> int:
        """Bytes held on the device by the images and annotations."""
        return sum(t.numel() * t.element_size()
                   for t in (*self.images, self.sizes, self.boxes, self.labels))

    @classmethod
    def build(cls, dataset: Sequence[Sample], size: int, device: str | torch.device = "cpu",
              pad_value: int = 0) -> DeviceSet:
        """Read every sample of ``dataset`` once (:func:`~lumbardx.engine.pipeline.sample_arrays`
        validates it) into a :class:`DeviceSet` of training size ``size`` on ``device``.

        Raises:
            lumbardx.data.errors.InputError: a sample that is not a usable image with boxes
                (name and problem; drop such samples first, as the trainer does).
            ValueError: an empty dataset.
        """
        if len(dataset) == 0:
            raise ValueError("cannot build a training set from no sample")
        arrays = [sample_arrays(dataset[i]) for i in range(len(dataset))]
        channels = 2 if any(img.ndim == 3 for img, _, _ in arrays) else 1
        k = max(1, max(len(b) for _, b, _ in arrays))
        n = len(arrays)
        images = np.empty((n, channels, size, size), np.uint8)
        sizes = np.zeros((n, 2), np.float64)
        boxes = np.zeros((n, k, 4), np.float64)
        labels = np.full((n, k), -1, np.int64)
        for i, (img, b, lab) in enumerate(arrays):
            planes = [img] if img.ndim == 2 else list(img)
            h, w = planes[0].shape
            r = size / max(h, w)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            for c in range(channels):
                images[i, c] = resize_gray(planes[min(c, len(planes) - 1)], size, size)
            sizes[i] = (nw, nh)
            boxes[i, : len(b)] = b.astype(np.float64) * np.array([nw / w, nh / h] * 2)
            labels[i, : len(lab)] = lab
        level0 = torch.from_numpy(images).to(device)
        pyramid = [level0]
        for _ in range(1, LEVELS):
            prev = pyramid[-1].float()
            pyramid.append(F.avg_pool2d(prev, 2).round().to(torch.uint8))
        return cls(pyramid, torch.from_numpy(sizes).to(device), torch.from_numpy(boxes).to(device),
                   torch.from_numpy(labels).to(device), size, pad_value)


def pyramid_level(scale: Tensor) -> Tensor:
    """The pyramid level ``int64 [...]`` to sample for a shrink ``scale`` (output pixels per
    input pixel, ``[...]``): ``floor(log2(1 / scale))`` in ``0 .. LEVELS - 1``."""
    lv = torch.floor(torch.log2(1.0 / scale.clamp_min(1e-6)))
    return lv.clamp(0, LEVELS - 1).to(torch.int64)
