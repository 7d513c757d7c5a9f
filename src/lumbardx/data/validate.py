"""Checks on one image's annotation: every problem a reader or a dataset checker must report.

Boxes are in lumbardx's continuous 0-based pixel frame (see :mod:`lumbardx.data.boxes`). A box
may reach up to ``tolerance`` pixels outside the image before it counts as out of bounds: the
default of one pixel absorbs LabelImg's ``xmax = width`` edge and the rounding of YOLO's six
normalised decimals, and still catches boxes drawn for another image size.

Objects are numbered from 1 in file order ("object 3" is the third ``<object>`` of a VOC file,
the third box of a YOLO file, the third annotation of an image in a COCO file).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lumbardx.data.boxes import ImageAnnotation
from lumbardx.data.errors import AnnotationError

DEFAULT_TOLERANCE_PX: float = 1.0


def _box_problems(
    index: int,
    label: str,
    xyxy: tuple[float, float, float, float],
    width: int,
    height: int,
    class_names: Sequence[str] | None,
    tolerance: float,
) -> list[str]:
    """Problems of one box; ``index`` is 1-based, ``xyxy`` in pixels."""
    where = f"object {index} ({label!r})"
    x1, y1, x2, y2 = xyxy
    problems: list[str] = []
    if not label.strip():
        problems.append(f"object {index}: empty class name")
    elif class_names is not None and label not in class_names:
        known = ", ".join(repr(n) for n in class_names) or "none"
        problems.append(f"{where}: unknown class (known classes: {known})")
    bad = [n for n, v in zip(("x1", "y1", "x2", "y2"), xyxy, strict=True) if not math.isfinite(v)]
    if bad:
        problems.append(f"{where}: coordinate {', '.join(bad)} is not a finite number")
        return problems
    for axis, lo, hi in (("x", x1, x2), ("y", y1, y2)):
        size = "width" if axis == "x" else "height"
        if hi < lo:
            problems.append(
                f"{where}: {axis}2={hi:g} < {axis}1={lo:g} (corners swapped, negative {size})"
            )
        elif hi == lo:
            problems.append(f"{where}: zero {size} ({axis}1 = {axis}2 = {lo:g})")
    if width > 0 and height > 0:
        for name, value, limit in (("x1", x1, width), ("x2", x2, width)):
            if value < -tolerance or value > limit + tolerance:
                problems.append(
                    f"{where}: {name}={value:g} is outside the image width 0..{limit} "
                    f"(tolerance {tolerance:g} px)"
                )
        for name, value, limit in (("y1", y1, height), ("y2", y2, height)):
            if value < -tolerance or value > limit + tolerance:
                problems.append(
                    f"{where}: {name}={value:g} is outside the image height 0..{limit} "
                    f"(tolerance {tolerance:g} px)"
                )
    return problems


def annotation_problems(
    ann: ImageAnnotation,
    class_names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> list[str]:
    """Every problem of ``ann`` as plain sentences (no file name), in object order.

    Args:
        ann: the annotation; boxes in continuous 0-based pixels.
        class_names: the allowed class names, or ``None`` to accept any non-empty name.
        tolerance: how far (pixels) a box may reach outside the image.
    """
    problems: list[str] = []
    if ann.width <= 0 or ann.height <= 0:
        problems.append(f"image size {ann.width}x{ann.height} is not positive")
    for i, box in enumerate(ann.boxes, start=1):
        problems += _box_problems(
            i, box.label, box.xyxy(), ann.width, ann.height, class_names, tolerance
        )
    return problems


def annotation_errors(
    ann: ImageAnnotation,
    class_names: Sequence[str] | None = None,
    source: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> list[AnnotationError]:
    """Every problem of ``ann`` as an :class:`AnnotationError` naming ``source``."""
    return [AnnotationError(source, p) for p in annotation_problems(ann, class_names, tolerance)]


def validate_annotation(
    ann: ImageAnnotation,
    class_names: Sequence[str] | None = None,
    source: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> list[str]:
    """List every problem of ``ann``; each message names ``source`` when it is given.

    Checks: positive image size; per box a non-empty, known class (when ``class_names`` is
    given), finite coordinates, positive width and height (``x2 < x1`` is reported as swapped
    corners, i.e. ``xmax < xmin`` in VOC terms) and corners within the image up to
    ``tolerance`` pixels.

    Returns:
        ``[]`` for a valid annotation, otherwise one message per problem, e.g.
        ``"labels/a.txt: object 2 ('Normal IVD'): zero width (x1 = x2 = 10)"``.
    """
    return [str(e) for e in annotation_errors(ann, class_names, source, tolerance)]


def check_annotation(
    ann: ImageAnnotation,
    class_names: Sequence[str] | None = None,
    source: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> None:
    """Raise :class:`AnnotationError` (naming ``source``) on the first problem of ``ann``."""
    errors = annotation_errors(ann, class_names, source, tolerance)
    if errors:
        raise errors[0]
