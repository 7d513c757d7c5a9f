"""Checks on one image's annotation: every problem a reader or a dataset checker must report.

Also the text rules every annotation reader shares: how a label file is decoded
(:func:`read_utf8`), what counts as a number (:func:`parse_decimal`) and as a class name
(:func:`name_problem`).

Boxes are in lumbardx's continuous 0-based pixel frame (see :mod:`lumbardx.data.boxes`). A box
may reach up to ``tolerance`` pixels outside the image before it counts as out of bounds: the
default of one pixel absorbs LabelImg's ``xmax = width`` edge and the rounding of YOLO's six
normalised decimals, and still catches boxes drawn for another image size.

Objects are numbered from 1 in file order ("object 3" is the third ``<object>`` of a VOC file,
the third box of a YOLO file, the third annotation of an image in a COCO file).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from lumbardx.data.boxes import ImageAnnotation
from lumbardx.data.errors import AnnotationError

DEFAULT_TOLERANCE_PX: float = 1.0

_DECIMAL = re.compile(
    r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)",
    re.ASCII | re.IGNORECASE,
)


def parse_decimal(text: str) -> float:
    """The number written as ``text``: ASCII digits with an optional sign, decimal point and
    exponent (``"12"``, ``"12.5"``, ``"1e-3"``), or ``nan``/``inf``.

    Stricter than :func:`float`, which also reads ``"1_000"`` and digits of other scripts
    (``"\uff11\uff12"``, ``"\u0661"``): no annotation tool writes those, so they are refused as
    junk rather than read as coordinates. ``nan`` and ``inf`` are read so that validation reports
    them as non-finite boxes, as it does for any other source of such values.

    Raises:
        ValueError: ``text`` is not such a number.
    """
    if _DECIMAL.fullmatch(text) is None:
        raise ValueError(f"not a decimal number: {text!r}")
    return float(text)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name, or ``None`` when it can.

    Class names are written into every format (VOC ``<name>``, ``data.yaml``, ``classes.txt``,
    COCO ``categories``) and printed in reports. Refused: an empty name; control characters (a
    tab or line break splits a ``classes.txt`` line, most others cannot be written in XML at
    all, an escape sequence rewrites the terminal); lone surrogates and U+FFFE/U+FFFF, which are
    not text (a ``"\\udcff"`` JSON escape) and cannot be written as UTF-8 or XML.
    """
    if not name.strip():
        return "empty class name"
    if any(unicodedata.category(c) in ("Cc", "Cs") or c in "\ufffe\uffff" for c in name):
        return "class name holds control characters or text that is not valid Unicode"
    return None


def read_utf8(path: Path) -> str:
    """The text of the label file ``path``, decoded as UTF-8.

    A leading byte order mark (Windows editors write one) is dropped; line ends are kept as
    written (every reader splits lines itself, so ``\\r\\n`` reads as ``\\n`` does).

    Raises:
        AnnotationError: the file cannot be read, or is not UTF-8 text (the message gives the
            first byte that is not and its offset, e.g. a Latin-1 or UTF-16 file).
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnnotationError(path, f"cannot read the file: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + len(data) - len(e.object)  # the BOM, when present, is not in e.object
        raise AnnotationError(
            path, f"not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset})"
        ) from None


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
    elif (bad_name := name_problem(label)) is not None:
        problems.append(f"{where}: {bad_name}")
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

    Checks: positive image size; per box a usable class name (:func:`name_problem`), known
    when ``class_names`` is given, finite coordinates, positive width and height (``x2 < x1``
    is reported as swapped corners, i.e. ``xmax < xmin`` in VOC terms) and corners within the
    image up to ``tolerance`` pixels.

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
    """Raise one :class:`AnnotationError` (naming ``source``) holding every problem of
    ``ann`` (:meth:`AnnotationError.of`: the message names the first and counts the rest)."""
    problems = annotation_problems(ann, class_names, tolerance)
    if problems:
        raise AnnotationError.of(source, problems)
