"""One dataset abstraction over a folder of images and annotations in any supported format.

``LumbarDataset(root)`` finds the annotation format (Pascal VOC XML, YOLO txt or COCO JSON, see
:mod:`lumbardx.data.convert`), maps the source classes to the wanted classes
(:func:`lumbardx.data.classes.build_class_map`: ``"study"`` = normal, herniation,
spondylolisthesis; ``"all"`` = every source class), attaches patient ids
(:mod:`lumbardx.data.patients`) and yields :class:`~lumbardx.data.boxes.Sample` objects.

Images whose annotation cannot be used (no label file, a malformed label file, invalid boxes
when ``validate`` is on) are left out and listed in :attr:`LumbarDataset.problems`; a single
warning says how many were left out. Boxes whose class the mapping drops are counted in
:attr:`LumbarDataset.dropped`.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lumbardx.data.boxes import Box, ImageAnnotation, Sample
from lumbardx.data.classes import FALLBACK_IOU, IGNORE_LABEL, ClassMap, build_class_map
from lumbardx.data.convert import scan_dataset
from lumbardx.data.errors import AnnotationError, InputError
from lumbardx.data.images import read_image
from lumbardx.data.patients import assign_patients


@dataclass
class ImageRecord:
    """One image of a dataset with its mapped boxes.

    Attributes:
        image_path: the image file.
        image_id: path relative to the dataset root, ``/``-separated (stable identifier).
        patient: patient id (the image id itself when patients are unknown).
        sequence: MRI sequence (``"T1"``, ``"T2"``, ...) or ``None`` when unknown.
        boxes: ``float32 [N, 4]`` xyxy in continuous 0-based pixels (see ``boxes.py``).
        labels: ``int64 [N]`` indices into the dataset's ``class_names``.
        width, height: image size in pixels, as the annotation states it.
        label_path: the annotation file (``None`` for COCO or when there is none).
        ignore: ``float32 [M, 4]`` xyxy pixels of regions the training loss ignores
            (:data:`~lumbardx.data.classes.IGNORE_LABEL`); empty under most mappings.
    """

    image_path: Path
    image_id: str
    patient: str
    sequence: str | None
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    label_path: Path | None = None
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def map_annotation(
    ann: ImageAnnotation, class_map: ClassMap
) -> tuple[np.ndarray, np.ndarray, Counter[str]]:
    """Boxes and class indices of an annotation under a class map. A box its mapping drops
    but its :attr:`~lumbardx.data.classes.ClassMap.fallback` names is kept as the fallback
    class when no mapped box overlaps it at IoU >= :data:`~lumbardx.data.classes.FALLBACK_IOU`
    (label :data:`~lumbardx.data.classes.IGNORE_LABEL` when that fallback is an ignored region).

    Returns:
        ``(boxes float32 [N, 4] xyxy pixels, labels int64 [N], dropped source names -> count)``.
    """
    rows: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    dropped: Counter[str] = Counter()
    fallback: list[tuple[Box, int]] = []
    for box in ann.boxes:
        index = class_map.index(box.label)
        if index is None:
            other = class_map.fallback_index(box.label)
            if other is None:
                dropped[box.label] += 1
            else:
                fallback.append((box, other))
            continue
        rows.append(box.xyxy())
        labels.append(index)
    if fallback:
        import torch
        from torchvision.ops import box_iou

        mapped = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
        for box, index in fallback:
            xyxy = box.xyxy()
            if len(mapped) and float(box_iou(torch.tensor([xyxy], dtype=torch.float64),
                                             mapped).max()) >= FALLBACK_IOU:
                dropped[box.label] += 1
                continue
            rows.append(xyxy)
            labels.append(index)
    return (
        np.asarray(rows, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        dropped,
    )


class LumbarDataset:
    """Images + boxes of one folder, with a class mapping and patient ids.

    Args:
        root: dataset folder (any layout :func:`lumbardx.data.convert.scan_dataset` reads).
        classes: ``"study"`` (normal, herniation, spondylolisthesis), ``"all"`` (every source
            class under its own name) or a mapping source name -> target name.
        patients: patients CSV (columns image, patient, optional sequence); ``root /
            patients.csv`` is used when present and this is ``None``.
        patient_pattern: regex with a named group ``patient`` matched on image file names.
        validate: check every annotation (boxes inside the image, positive area, known class)
            and leave out images that fail.
        cache: keep decoded images in memory (832 images of 384x384 take ~120 MB).

    Attributes:
        root, format (``"voc"``, ``"yolo"``, ``"coco"``), class_map, class_names, problems
        (unusable images and patient-table problems), dropped (source class -> boxes dropped by
        the mapping), patient_source (``"csv"``, ``"pattern"`` or ``"none"``).

    Raises:
        InputError: the folder is not a dataset, or the patients table/pattern is unusable.
    """

    def __init__(
        self,
        root: Path,
        classes: str | Mapping[str, str] = "study",
        patients: Path | None = None,
        patient_pattern: str | None = None,
        validate: bool = True,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        scan = scan_dataset(self.root, validate=validate)
        self.format: str = scan.format
        self.source_class_names: list[str] = list(scan.class_names)
        self.class_map: ClassMap = build_class_map(classes, scan.class_names)
        self.problems: list[InputError] = list(scan.problems)
        self.dropped: Counter[str] = Counter()
        self.cache = cache
        self._images: dict[str, np.ndarray] = {}
        self._spacing: dict[str, tuple[float, float] | None] = {}

        usable = []
        for rec in scan.records:
            if rec.annotation is not None:
                usable.append(rec)
            elif rec.label_path is None:  # unusable label files are already in scan.problems
                self.problems.append(
                    AnnotationError(
                        rec.image_path,
                        "image has no label file (not annotated); an image without findings "
                        "needs an empty label file",
                    )
                )
        ids = [rec.image_path.relative_to(self.root).as_posix() for rec in usable]
        assignment = assign_patients(ids, self.root, patients, patient_pattern)
        self.patient_source: str = assignment.source
        self.problems.extend(assignment.problems)
        for message in assignment.warnings:
            warnings.warn(message, stacklevel=2)

        self._records: list[ImageRecord] = []
        for rec, image_id, patient, sequence in zip(
            usable, ids, assignment.patients, assignment.sequences
        ):
            ann = rec.annotation
            assert ann is not None
            boxes, labels, dropped = map_annotation(ann, self.class_map)
            self.dropped.update(dropped)
            ignored = labels == IGNORE_LABEL
            self._records.append(
                ImageRecord(
                    image_path=rec.image_path,
                    image_id=image_id,
                    patient=patient,
                    sequence=sequence,
                    boxes=boxes[~ignored],
                    labels=labels[~ignored],
                    width=int(ann.width),
                    height=int(ann.height),
                    label_path=rec.label_path,
                    ignore=boxes[ignored],
                )
            )
        skipped = len(scan.records) - len(usable)
        if skipped:
            warnings.warn(
                f"{self.root}: {skipped} image(s) left out because their annotation cannot be "
                f"used (see .problems; run 'lumbardx data check {self.root}')",
                stacklevel=2,
            )

    # -- views -----------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Target class names; a label is an index into this list."""
        return self.class_map.names

    @property
    def records(self) -> list[ImageRecord]:
        """The usable images, in scan order."""
        return self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Sample:
        """The sample at ``index``: ``image`` ``uint8 [H, W]`` (display orientation), ``boxes``
        ``float32 [N, 4]`` xyxy pixels, ``labels`` ``int64 [N]``.

        Raises:
            ImageReadError: the image cannot be read.
            AnnotationError: the image size differs from the annotated size (boxes would be
                misplaced).
        """
        rec = self._records[index]
        image = self._images.get(rec.image_id)
        spacing = self._spacing.get(rec.image_id)
        if image is None:
            medical = read_image(rec.image_path, max_side=None)  # boxes: full-size pixels
            image = medical.display
            spacing = medical.pixel_spacing
            if image.shape != (rec.height, rec.width):
                raise AnnotationError(
                    rec.label_path or rec.image_path,
                    f"annotation says {rec.width}x{rec.height} pixels but image "
                    f"{rec.image_path.name} is {image.shape[1]}x{image.shape[0]}",
                )
            if self.cache:
                self._images[rec.image_id] = image
                self._spacing[rec.image_id] = spacing
        return Sample(
            image=image,
            boxes=rec.boxes.copy(),
            labels=rec.labels.copy(),
            image_id=rec.image_id,
            patient=rec.patient,
            pixel_spacing=spacing,
            ignore=rec.ignore.copy() if len(rec.ignore) else None,
        )

    def patients(self) -> list[str]:
        """Distinct patient ids, in order of first appearance."""
        return list(dict.fromkeys(rec.patient for rec in self._records))

    def sequences(self) -> dict[str, int]:
        """Sequence name -> number of images (``"unknown"`` when not known)."""
        return dict(Counter(rec.sequence or "unknown" for rec in self._records))

    def class_counts(self) -> dict[str, int]:
        """Class name -> number of boxes (after mapping), every class listed."""
        counts = np.zeros(len(self.class_names), dtype=np.int64)
        for rec in self._records:
            counts += np.bincount(rec.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}

    def subset(self, indices: Sequence[int]) -> LumbarDataset:
        """A view holding the records at ``indices`` (same classes, patients and cache)."""
        view = copy.copy(self)
        view._records = [self._records[int(i)] for i in indices]
        return view

    def __repr__(self) -> str:
        return (
            f"LumbarDataset({str(self.root)!r}, format={self.format!r}, images={len(self)}, "
            f"patients={len(self.patients())}, classes={self.class_names})"
        )
