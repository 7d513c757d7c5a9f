"""A patient's co-registered T1 and T2 slices as one two-channel sample.

A lumbar MRI study holds a T1- and a T2-weighted sagittal series, usually planned with the same
geometry. When the two mid-sagittal slices are co-registered, the boxes drawn on one fit the
other (in ``yolospine-dev`` they are identical), and a detector can read both contrasts at once:
T2 shows the disc's water and the herniated material, T1 the bone outline.

:func:`sequence_partners` finds, for every image, the same patient's image of the other
sequence (T1 <-> T2) with the same size and the same boxes; :class:`SequencePairs` is a dataset
view whose samples carry both images as ``uint8 [2, H, W]`` (channel 0 T1, channel 1 T2). An
image without such a partner repeats itself in both channels, which is also how a model trained
on pairs reads a single slice (see the recipe's ``sequence_pairs`` and
``augment.single_sequence``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from lumbardx.data.boxes import Sample

PAIRED_SEQUENCES = ("T1", "T2")


def _same_boxes(a: Any, b: Any, tolerance: float) -> bool:
    if (a.width, a.height) != (b.width, b.height) or len(a.labels) != len(b.labels):
        return False
    if len(a.labels) == 0:
        return True
    oa = np.lexsort((*np.asarray(a.boxes).T[::-1], a.labels))
    ob = np.lexsort((*np.asarray(b.boxes).T[::-1], b.labels))
    return bool(np.array_equal(a.labels[oa], b.labels[ob])
                and np.abs(a.boxes[oa] - b.boxes[ob]).max() <= tolerance)


def sequence_partners(records: Sequence[Any], tolerance: float = 1.0) -> list[int | None]:
    """For each record, the index of its partner in ``records``, or ``None``.

    The partner of a T1 image is the same patient's T2 image (and vice versa) of the same size
    whose boxes match (same classes; every coordinate within ``tolerance`` pixels), when each
    is the other's only match. An image with no such image, or with several, has none.

    Args:
        records: objects with ``patient``, ``sequence``, ``width``, ``height``, ``boxes``
            (``float32 [N, 4]``) and ``labels`` (``int64 [N]``), e.g.
            :class:`lumbardx.data.dataset.ImageRecord`.
        tolerance: largest coordinate difference in pixels.
    """
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.patient and r.sequence in PAIRED_SEQUENCES:
            by_patient[r.patient].append(i)
    found: dict[int, list[int]] = {}
    for idx in by_patient.values():
        for i in idx:
            found[i] = [j for j in idx if records[j].sequence != records[i].sequence
                        and _same_boxes(records[i], records[j], tolerance)]
    out: list[int | None] = [None] * len(records)
    for i, other in found.items():  # one partner, and it has only this one
        if len(other) == 1 and found[other[0]] == [i]:
            out[i] = other[0]
    return out


class SequencePairs:
    """A dataset view whose samples hold a T1/T2 pair: ``image`` is ``uint8 [2, H, W]``,
    channel 0 the T1 slice and channel 1 the T2 slice; boxes, labels and ids are the image's
    own (its partner's boxes match, :func:`sequence_partners`). An image without a partner, or
    of another sequence, fills both channels with itself.

    Args:
        dataset: a sequence of :class:`~lumbardx.data.boxes.Sample` with ``records`` (e.g.
            :class:`lumbardx.data.dataset.LumbarDataset` or one of its subsets) and
            ``class_names``.
        tolerance: see :func:`sequence_partners`.

    Attributes:
        partners: the partner index of every image (``None`` when it has none).
    """

    def __init__(self, dataset: Any, tolerance: float = 1.0) -> None:
        self.dataset = dataset
        self.tolerance = tolerance
        self.partners = sequence_partners(dataset.records, tolerance)

    @property
    def class_names(self) -> list[str]:
        """The dataset's class names."""
        return list(self.dataset.class_names)

    @property
    def records(self) -> list[Any]:
        """The dataset's records (one per sample, the image's own)."""
        return self.dataset.records

    @property
    def paired(self) -> int:
        """How many images have a partner."""
        return sum(p is not None for p in self.partners)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        """The image's sample with ``image`` ``uint8 [2, H, W]`` (T1, T2)."""
        own = self.dataset[index]
        j = self.partners[index]
        other = own.image if j is None else self.dataset[j].image
        if other.shape != own.image.shape:  # read size differs from the annotated one
            other = own.image
        first, second = ((own.image, other) if self.records[index].sequence != "T2"
                         else (other, own.image))
        return replace(own, image=np.stack([first, second]))

    def subset(self, indices: Sequence[int]) -> SequencePairs:
        """The pairs of a subset (partners outside it are lost: keep patients together)."""
        return SequencePairs(self.dataset.subset(indices), self.tolerance)
