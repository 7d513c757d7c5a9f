"""The device-resident training loader: the whole training set on the training device, whole
batches augmented there (:mod:`lumbardx.engine.device_augment`).

A drop-in for :func:`lumbardx.engine.loader.build_train_loader` when ``recipe.pipeline ==
"device"``: iterating yields the same ``(images uint8 [B, C, S, S], targets float32 [M, 6])``
batches, already on the device, in the order of the same sampler
(:func:`~lumbardx.engine.loader.train_sampler`: uniform or repeat-factor, split by DDP rank).
Batch ``i`` of epoch ``e`` is augmented with ``numpy.random.default_rng([seed, e, rank, i,
DEVICE_STREAM])``, so a resumed run sees the same batches as an uninterrupted one.

Why: on a GPU the CPU pipeline's per-sample PIL warps cannot keep up with the model (one
earlier H100 run waited on its loader); here the data never leave the device and a batch costs
a handful of batched kernels whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from lumbardx.data.boxes import Sample
from lumbardx.engine.device_augment import augment_batch
from lumbardx.engine.device_data import DeviceSet
from lumbardx.engine.loader import close_mosaic_from, train_sampler
from lumbardx.engine.recipes import Recipe

DEVICE_STREAM = 1009  #: last entry of the per-batch seed, apart from the CPU pipeline's seeds


class DeviceTrainLoader:
    """Training batches built on ``device`` from a :class:`DeviceSet` (module docstring).

    Args:
        dataset: the usable training samples (``class_names``).
        recipe: image size, batch size, augmentation, sampling, ``close_mosaic``.
        seed: seed of sampling and augmentation.
        device: where the set lives and batches are built.
        rank, world_size: DDP position (each rank holds the whole set, reads its share).
        num_classes, labels: as :func:`~lumbardx.engine.loader.train_sampler`.
    """

    def __init__(self, dataset: Sequence[Sample], recipe: Recipe, seed: int,
                 device: str | torch.device, rank: int = 0, world_size: int = 1,
                 num_classes: int | None = None,
                 labels: Sequence[np.ndarray] | None = None) -> None:
        self.data = DeviceSet.build(dataset, recipe.image_size, device, recipe.augment.pad_value)
        self.sampler = train_sampler(dataset, recipe, seed, rank, world_size, num_classes, labels)
        self.batch_size = recipe.batch_size
        self.augment = recipe.augment
        self.plain = replace(recipe.augment, mosaic=0.0, mixup=0.0)
        self.close_from = close_mosaic_from(recipe)
        self.seed, self.rank, self.epoch = seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (sampler order, augmentation seeds, close-mosaic switch)."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = np.fromiter(iter(self.sampler), np.int64)
        mosaic = self.close_from is None or self.epoch < self.close_from
        aug = self.augment if mosaic else self.plain
        for i, start in enumerate(range(0, len(order), self.batch_size)):
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, i, DEVICE_STREAM])
            yield augment_batch(self.data, order[start:start + self.batch_size], rng, aug)

