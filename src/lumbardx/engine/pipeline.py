"""The training augmentation pipeline: one call turns a dataset index into a training image.

Order (each step with the probability of :class:`lumbardx.engine.recipes.AugmentConfig`):

1. mosaic of this and 3 random images, cropped to ``size`` by the random affine; or, without
   mosaic, random expand -> random crop -> letterbox to ``size`` -> random affine;
2. mixup with a second sample built the same way;
3. gamma / contrast / brightness; 4. horizontal flip (off by default);
5. boxes clipped to the image, boxes under ``min_box_size`` dropped.

Mosaic and mixup are off in the recipe's last ``close_mosaic`` epochs (``mosaic=False``).

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample is a pure
function of ``(index, generator seed)`` -- the basis of exact resume and worker-independent
results.

A dataset of T1/T2 pairs (:class:`lumbardx.data.pairs.SequencePairs`, images ``uint8
[2, H, W]``) is augmented channel by channel with the same random draws (a copy of the
generator per channel), so both channels get the same geometry and intensity change; then,
with probability ``single_sequence``, one channel (either) fills both, as a single slice will
at diagnosis. Samples are ``uint8 [2, size, size]`` then.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from lumbardx.data.boxes import Sample
from lumbardx.data.classes import IGNORE_LABEL
from lumbardx.data.errors import InputError
from lumbardx.engine import augment as A
from lumbardx.engine.letterbox import Letterbox, letterbox
from lumbardx.engine.mosaic import mixup, mosaic4
from lumbardx.engine.recipes import AugmentConfig


def sample_arrays(sample: Sample, ignore: bool = False) -> A.Triple:
    """Validated ``(image, boxes float32 [N, 4], labels int64 [N])`` of a sample; the image is
    ``uint8 [H, W]`` (gray) or ``uint8 [2, H, W]`` (a T1/T2 pair,
    :class:`lumbardx.data.pairs.SequencePairs`). ``ignore=True`` appends the sample's ignored
    regions (:attr:`~lumbardx.data.boxes.Sample.ignore`) as boxes labelled
    :data:`~lumbardx.data.classes.IGNORE_LABEL`, so augmentation moves them with the boxes
    (training only; the loss must support them).

    Raises:
        InputError: naming ``sample.image_id`` when the image is neither, or the boxes and
            labels do not match.
    """
    img = np.asarray(sample.image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[0] == 2)):
        raise InputError(
            sample.image_id, f"expected a uint8 grayscale image [H, W] or a T1/T2 pair "
                             f"[2, H, W], got {img.dtype} {img.shape}"
        )
    boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(sample.labels, np.int64).reshape(-1)
    if len(boxes) != len(labels):
        raise InputError(sample.image_id, f"{len(boxes)} boxes but {len(labels)} labels")
    if ignore and sample.ignore is not None and len(sample.ignore):
        regions = np.asarray(sample.ignore, np.float32).reshape(-1, 4)
        boxes = np.concatenate([boxes, regions])
        labels = np.concatenate([labels, np.full(len(regions), IGNORE_LABEL, np.int64)])
    if len(boxes) and not np.all((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])):
        raise InputError(sample.image_id, "a box has x2 <= x1 or y2 <= y1")
    return img, boxes, labels


class TrainTransform:
    """Builds augmented ``[size, size]`` training samples from a dataset.

    Args:
        dataset: a sequence of :class:`~lumbardx.data.boxes.Sample`.
        size: output side in pixels.
        aug: augmentation settings.
    """

    def __init__(self, dataset: Sequence[Sample], size: int, aug: AugmentConfig) -> None:
        self.dataset = dataset
        self.size = size
        self.aug = aug
        self.plain = replace(aug, mosaic=0.0, mixup=0.0)  # after close_mosaic

    def load(self, index: int) -> A.Triple:
        """The validated arrays of sample ``index``, its ignored regions included."""
        return sample_arrays(self.dataset[index], ignore=True)

    def _single(self, index: int, rng: np.random.Generator, a: AugmentConfig,
                load: Callable[[int], A.Triple]) -> A.Triple:
        s = self.size
        if rng.random() < a.mosaic:
            others = rng.integers(0, len(self.dataset), 3).tolist()
            parts = [load(i) for i in [index, *others]]
            img, boxes, labels = mosaic4(parts, s, rng, a.pad_value)
            use = rng.random() < a.affine
            return A.random_affine(
                img, boxes, labels, rng if use else None, s, a.degrees, a.translate, a.scale,
                a.shear, a.pad_value, a.min_box_size, a.min_area_ratio,
            )
        img, boxes, labels = load(index)
        if rng.random() < a.expand:
            img, boxes, labels = A.random_expand(
                img, boxes, labels, rng, a.expand_ratio, a.pad_value
            )
        if rng.random() < a.crop:
            img, boxes, labels = A.random_crop(img, boxes, labels, rng)
        img, geo = letterbox(img, s, a.pad_value)
        boxes = geo.map_boxes(boxes)
        if rng.random() < a.affine:
            img, boxes, labels = A.random_affine(
                img, boxes, labels, rng, s, a.degrees, a.translate, a.scale, a.shear,
                a.pad_value, a.min_box_size, a.min_area_ratio,
            )
        return img, boxes, labels

    def __call__(self, index: int, rng: np.random.Generator, mosaic: bool = True) -> A.Triple:
        """Augmented ``(image uint8 [size, size], boxes float32 [N, 4], labels int64 [N])``
        (image ``uint8 [2, size, size]`` for a T1/T2 pair, see the module docstring);
        ``mosaic=False`` switches mosaic and mixup off (the recipe's ``close_mosaic`` epochs)."""
        a = self.aug if mosaic else self.plain
        loaded: dict[int, A.Triple] = {}

        def load(i: int) -> A.Triple:
            if i not in loaded:
                loaded[i] = self.load(i)
            return loaded[i]

        if load(index)[0].ndim == 2:
            return self._augment(index, rng, a, load)
        start = copy.deepcopy(rng)
        channels = []
        for c in range(2):  # the same draws for both channels
            g = copy.deepcopy(start) if c < 1 else rng
            channels.append(self._augment(index, g, a, lambda i, c=c: _channel(load(i), c)))
        (img0, boxes, labels), (img1, boxes1, _) = channels
        if not np.array_equal(boxes, boxes1):  # cannot happen with equal sizes: same draws
            raise RuntimeError(f"sample {index}: the two channels were augmented differently")
        if rng.random() < a.single_sequence:
            img0 = img1 = (img0, img1)[int(rng.integers(0, 2))]
        return np.stack([img0, img1]), boxes, labels

    def _augment(self, index: int, rng: np.random.Generator, a: AugmentConfig,
                 load: Callable[[int], A.Triple]) -> A.Triple:
        img, boxes, labels = self._single(index, rng, a, load)
        if rng.random() < a.mixup:
            other = self._single(int(rng.integers(0, len(self.dataset))), rng, a, load)
            img, boxes, labels = mixup((img, boxes, labels), other, rng, a.mixup_beta)
        img = A.adjust_intensity(img, rng, a.brightness, a.contrast, a.gamma, a.intensity_prob)
        if rng.random() < a.hflip:
            img, boxes, labels = A.hflip(img, boxes, labels)
        boxes = A.clip_boxes(boxes, self.size, self.size)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh >= a.min_box_size).all(1)
        return img, boxes[keep], labels[keep]


def _channel(arrays: A.Triple, c: int) -> A.Triple:
    """Channel ``c`` of a pair's arrays; a gray sample (an image of a mosaic that is not a
    pair) is its own channel ``c``."""
    img, boxes, labels = arrays
    return (img[c] if img.ndim == 3 else img), boxes, labels


def eval_arrays(sample: Sample, size: int, pad_value: int = 0) -> tuple[np.ndarray, Letterbox]:
    """Letterboxed evaluation image ``uint8 [size, size]`` and its geometry."""
    img, _, _ = sample_arrays(sample)
    return letterbox(img, size, pad_value)
