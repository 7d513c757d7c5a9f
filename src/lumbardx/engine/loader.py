"""Training data loading: keyed augmented dataset, collate, samplers, model input.

A batch from :func:`build_train_loader` is ``(images uint8 [B, C, S, S], targets float32
[M, 6])`` with target rows ``(batch_index, class, x1, y1, x2, y2)`` in pixels of the ``S x S``
image; ``C`` is 1 (gray) or 2 (T1/T2 pairs, :class:`lumbardx.data.pairs.SequencePairs`).
:func:`to_model_input` moves it to the device, resizes it to the batch's training size
(multi-scale) and makes the model's ``float32 [B, 3, s, s]`` input in [0, 1]
(:func:`lumbardx.engine.model_input.three_channels`).

Every sample's augmentation is drawn from ``numpy.random.default_rng([seed, epoch, rank,
position])``: results do not depend on the number of workers, and a resumed run sees the same
samples as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lumbardx.data.boxes import Sample
from lumbardx.engine.model_input import three_channels
from lumbardx.engine.pipeline import TrainTransform
from lumbardx.engine.recipes import Recipe
from lumbardx.engine.sampler import KeyedSampler, RepeatFactorSampler, repeat_factors


class AugmentedDataset(Dataset):
    """Indexable by ``(position, index)`` keys from :class:`KeyedSampler`; see module doc."""

    def __init__(self, transform: TrainTransform, seed: int, rank: int = 0,
                 close_from: int | None = None) -> None:
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.close_from = close_from  # first epoch without mosaic / mixup (None: never)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (set before creating the loader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.transform.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position, index = key
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, position])
        mosaic = self.close_from is None or self.epoch < self.close_from
        return self.transform(index, rng, mosaic)


def collate(batch: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
    """Stack samples into ``images uint8 [B, C, S, S]`` (``C`` 1 for gray samples ``[S, S]``,
    2 for pairs ``[2, S, S]``) and ``targets float32 [M, 6]``."""
    images = torch.from_numpy(np.stack([b[0] for b in batch]))
    if images.ndim == 3:
        images = images[:, None]
    rows = []
    for i, (_, boxes, labels) in enumerate(batch):
        n = len(labels)
        t = np.zeros((n, 6), np.float32)
        t[:, 0] = i
        t[:, 1] = labels
        t[:, 2:] = boxes
        rows.append(t)
    targets = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros((0, 6))
    return images, targets


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and ``numpy`` in a loader worker from its torch seed (PyTorch's
    reproducibility recipe); augmentation itself uses per-sample generators."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def class_labels(dataset: Sequence[Sample]) -> list[np.ndarray]:
    """Labels ``int64 [K_i]`` of each sample (reads every sample once)."""
    return [np.asarray(dataset[i].labels, np.int64).reshape(-1) for i in range(len(dataset))]


def close_mosaic_from(recipe: Recipe) -> int | None:
    """The first epoch without mosaic and mixup (``recipe.close_mosaic``); ``None``: never."""
    return recipe.epochs - recipe.close_mosaic if recipe.close_mosaic > 0 else None


def train_sampler(
    dataset: Sequence[Sample],
    recipe: Recipe,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_classes: int | None = None,
    labels: Sequence[np.ndarray] | None = None,
) -> Any:
    """The epoch sampler of a recipe (dataset indices; call ``set_epoch`` before each epoch).

    Uniform sampling uses ``torch.utils.data.DistributedSampler`` (also for one process, with
    ``num_replicas=1``); ``recipe.balance == "repeat_factor"`` uses
    :class:`RepeatFactorSampler` (``labels``: per-image class indices when already known,
    otherwise every sample is read once).
    """
    if recipe.balance == "repeat_factor":
        nc = num_classes if num_classes is not None else len(getattr(dataset, "class_names"))
        per_image = labels if labels is not None else class_labels(dataset)
        rf = repeat_factors(per_image, nc, recipe.repeat_threshold)
        return RepeatFactorSampler(rf, seed, rank, world_size)
    return DistributedSampler(
        range(len(dataset)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )


def build_train_loader(
    dataset: Sequence[Sample],
    recipe: Recipe,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    num_classes: int | None = None,
    labels: Sequence[np.ndarray] | None = None,
) -> DataLoader:
    """The training loader of a recipe (augmentation, sampling, DDP split).

    Sampling: :func:`train_sampler`. The last ``recipe.close_mosaic`` epochs go without
    mosaic and mixup. Call :func:`set_loader_epoch` before each epoch.
    """
    transform = TrainTransform(dataset, recipe.image_size, recipe.augment)
    ds = AugmentedDataset(transform, seed, rank, close_mosaic_from(recipe))
    inner = train_sampler(dataset, recipe, seed, rank, world_size, num_classes, labels)
    return DataLoader(
        ds,
        batch_size=recipe.batch_size,
        sampler=KeyedSampler(inner),
        collate_fn=collate,
        num_workers=recipe.num_workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        drop_last=False,
    )


def set_loader_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Set the epoch of the loader's sampler and dataset, and reseed the loader's generator
    (worker base seeds) from ``(seed, epoch)`` so that a resumed run matches. A loader with
    its own ``set_epoch`` (:class:`lumbardx.engine.device_loader.DeviceTrainLoader`) is
    simply told the epoch."""
    if not isinstance(loader, DataLoader):
        loader.set_epoch(epoch)
        return
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    if loader.generator is not None:
        loader.generator.manual_seed(int(np.random.default_rng([seed, epoch, 2]).integers(2**62)))


def multiscale_size(recipe: Recipe, seed: int, epoch: int, step: int) -> int:
    """The multi-scale training size of a batch: a multiple of 32 in ``recipe.multi_scale``,
    drawn from ``default_rng([seed, epoch, step])`` (all ranks agree); ``image_size`` when off."""
    if recipe.multi_scale is None:
        return recipe.image_size
    lo, hi = (int(v) // 32 for v in recipe.multi_scale)
    return 32 * int(np.random.default_rng([seed, epoch, step, 1]).integers(max(lo, 1), hi + 1))


def to_model_input(
    images: Tensor, targets: Tensor, device: torch.device, size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``uint8 [B, C, S, S]`` -> ``float32 [B, 3, size, size]`` in [0, 1] on ``device``
    (:func:`~lumbardx.engine.model_input.three_channels`); target boxes (columns 2..5) are
    scaled by ``size / S``."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    t = targets.to(device, non_blocking=True).clone()
    s = x.shape[-1]
    if size is not None and size != s:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        t[:, 2:] *= size / s
    return three_channels(x), t
