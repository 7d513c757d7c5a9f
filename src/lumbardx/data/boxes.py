"""Core annotation types shared by every reader, writer, dataset and model.

Box convention (used everywhere inside lumbardx):
    ``x1, y1, x2, y2`` are **continuous pixel coordinates, 0-based**, with ``(x1, y1)`` the
    top-left corner of the top-left pixel inside the box and ``(x2, y2)`` the bottom-right
    corner of the bottom-right pixel inside the box. A box covering exactly pixel column 0 has
    ``x1 = 0, x2 = 1``; the whole image is ``(0, 0, width, height)``.

Pascal VOC (LabelImg) stores **1-based inclusive integer pixel indices**: a box covering pixel
columns 0..9 (0-based) is written ``xmin=1, xmax=10``. Conversion:
``x1 = xmin - 1``, ``x2 = xmax`` and back ``xmin = round(x1) + 1``, ``xmax = round(x2)``.
YOLO txt stores normalised centre and size: ``cx = (x1 + x2) / 2 / W``, ``w = (x2 - x1) / W``.
COCO stores ``[x, y, w, h]`` in the same continuous 0-based pixel frame as lumbardx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Box:
    """One labelled box in continuous 0-based pixel coordinates (see module docstring).

    Attributes:
        label: class name as written in the source (e.g. ``"Normal IVD"`` or ``"herniation"``).
        x1, y1, x2, y2: corners in pixels, ``x1 < x2`` and ``y1 < y2``.
        score: detector confidence in [0, 1]; ``None`` for ground truth.
        difficult, truncated, pose: Pascal VOC object flags, kept for lossless round trips.
    """

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None = None
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"

    @property
    def width(self) -> float:
        """Width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        """Height in pixels."""
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        """Area in square pixels (0 for degenerate boxes)."""
        return max(0.0, self.width) * max(0.0, self.height)

    def xyxy(self) -> tuple[float, float, float, float]:
        """The corners as a tuple ``(x1, y1, x2, y2)`` in pixels."""
        return (self.x1, self.y1, self.x2, self.y2)


@dataclass
class ImageAnnotation:
    """All boxes of one image, with the image facts every format needs.

    Attributes:
        filename: image file name (no folder), e.g. ``"case_001.png"``.
        width, height: image size in pixels.
        depth: number of channels (1 gray, 3 RGB), as LabelImg writes ``<size><depth>``.
        boxes: the objects, in file order.
        folder, path, database, segmented: VOC header fields, kept for lossless round trips.
        extra: format-specific fields that have no place above (e.g. a COCO image id).
    """

    filename: str
    width: int
    height: int
    depth: int = 1
    boxes: list[Box] = field(default_factory=list)
    folder: str = ""
    path: str = ""
    database: str = "Unknown"
    segmented: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One training / evaluation sample as a dataset yields it.

    Attributes:
        image: ``uint8`` array ``[H, W]`` (grayscale) in display orientation.
        boxes: ``float32`` array ``[N, 4]``, xyxy continuous pixels (module convention).
        labels: ``int64`` array ``[N]`` of class indices into the dataset's ``class_names``.
        image_id: stable identifier (the image path relative to the dataset root).
        patient: patient identifier (``""`` when unknown).
        pixel_spacing: ``(row, column)`` spacing in millimetres, or ``None`` when unknown.
        ignore: ``float32`` array ``[M, 4]`` xyxy pixels of regions the training loss ignores
            (neither a box to find nor background; ``study+ddd-ignore`` in
            :mod:`lumbardx.data.classes`), or ``None`` when there are none.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: str
    patient: str = ""
    pixel_spacing: tuple[float, float] | None = None
    ignore: np.ndarray | None = None
