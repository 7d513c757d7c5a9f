"""Pascal VOC XML annotations, read and written exactly as LabelImg saves them.

LabelImg (``libs/pascal_voc_io.py``) writes, tab-indented, UTF-8, no XML declaration::

    <annotation>
    	<folder>images</folder>
    	<filename>case_001.png</filename>
    	<path>/data/images/case_001.png</path>
    	<source>
    		<database>Unknown</database>
    	</source>
    	<size>
    		<width>384</width>
    		<height>384</height>
    		<depth>1</depth>
    	</size>
    	<segmented>0</segmented>
    	<object>
    		<name>herniation</name>
    		<pose>Unspecified</pose>
    		<truncated>0</truncated>
    		<difficult>0</difficult>
    		<bndbox>
    			<xmin>11</xmin>
    			<ymin>21</ymin>
    			<xmax>40</xmax>
    			<ymax>30</ymax>
    		</bndbox>
    	</object>
    </annotation>

Coordinates are **1-based inclusive pixel indices** (``xmin = 1`` is the first column); they
become lumbardx boxes as ``x1 = xmin - 1, x2 = xmax`` and are written back as
``xmin = round(x1) + 1, xmax = round(x2)`` (see :mod:`lumbardx.data.boxes`). Readers accept float
text (``"12.0"``, ``"12.5"``) as some tools write it, but only plain ASCII decimals
(:func:`lumbardx.data.validate.parse_decimal`); ``pose``, ``truncated``, ``difficult``,
``segmented``, ``folder``, ``path``, ``source`` and ``depth`` are optional. ``<filename>`` may
name a sub-folder (some exporters write ``train/a.png``) but not an absolute path or ``..``.

Files with a DOCTYPE or entity declaration are rejected by an expat pass that stops at the
DOCTYPE, before any entity is declared, expanded or fetched: neither external entities (which
would read local files or URLs) nor nested internal ones ("billion laughs") are ever resolved,
whatever the expat version. LabelImg writes no DOCTYPE, so no genuine file is refused.

The ``truncated`` and ``difficult`` flags are written from the boxes, so a file read and
written again is unchanged; LabelImg's ``verified="yes"`` attribute is kept in
``ImageAnnotation.extra["verified"]``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Sequence
from pathlib import Path

from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.errors import AnnotationError
from lumbardx.data.validate import DEFAULT_TOLERANCE_PX, check_annotation, parse_decimal
from lumbardx.io import write_text_atomic

_COORDS = ("xmin", "ymin", "xmax", "ymax")
_DRIVE = re.compile(r"[A-Za-z]:")


class _Forbidden(Exception):
    """Raised inside the expat pre-pass when a DOCTYPE or entity declaration is met."""


def _reject_declarations(data: bytes, path: Path) -> None:
    """Raise :class:`AnnotationError` when ``data`` declares a DOCTYPE or entities."""

    def forbid(*_: object) -> None:
        raise _Forbidden

    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = forbid
    parser.EntityDeclHandler = forbid
    parser.ExternalEntityRefHandler = forbid
    try:
        parser.Parse(data, True)
    except _Forbidden:
        raise AnnotationError(
            path, "XML with a DOCTYPE or entity declaration is not accepted (LabelImg writes none)"
        ) from None
    except xml.parsers.expat.ExpatError as e:
        raise AnnotationError(path, f"malformed XML: {e}") from None


def _text(elem: ET.Element, tag: str, path: Path, where: str, required: bool) -> str | None:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise AnnotationError(path, f"{where}missing required field <{tag}>")
        return None
    return child.text.strip()


def _number(text: str, tag: str, path: Path, where: str) -> float:
    try:
        return parse_decimal(text)
    except ValueError:
        raise AnnotationError(path, f"{where}<{tag}> is not a number: {text!r}") from None


def _integer(text: str, tag: str, path: Path, where: str) -> int:
    value = _number(text, tag, path, where)
    if not math.isfinite(value) or value != int(value):
        raise AnnotationError(path, f"{where}<{tag}> is not a whole number: {text!r}")
    return int(value)


def _check_filename(filename: str, path: Path) -> None:
    """Refuse a ``<filename>`` that reaches outside the annotation's image folder.

    LabelImg writes the image's base name; a relative sub-folder is kept (some exporters write
    one), but an absolute path, a Windows drive or a ``..`` part is no image of this dataset and
    would lead any tool that joins it to a folder somewhere else on the disk.
    """
    parts = filename.replace("\\", "/").split("/")
    if filename.startswith(("/", "\\")) or _DRIVE.match(filename) or ".." in parts:
        raise AnnotationError(
            path, f"<filename> {filename!r} points outside the image folder (an absolute path or "
            "'..'); LabelImg writes the image's file name"
        )


def _flag(elem: ET.Element, tag: str, path: Path, where: str) -> bool:
    text = _text(elem, tag, path, where, required=False)
    return text is not None and _integer(text, tag, path, where) != 0


def parse_voc(
    data: bytes,
    path: Path,
    class_names: Sequence[str] | None = None,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> ImageAnnotation:
    """Parse the bytes of a VOC XML file; ``path`` names it in errors (see :func:`read_voc`)."""
    _reject_declarations(data, path)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise AnnotationError(path, f"malformed XML: {e}") from None
    if root.tag != "annotation":
        raise AnnotationError(path, f"root element is <{root.tag}>, expected <annotation>")
    filename = _text(root, "filename", path, "", required=True) or ""
    _check_filename(filename, path)
    size = root.find("size")
    if size is None:
        raise AnnotationError(path, "missing required field <size>")
    width = _integer(_text(size, "width", path, "<size>: ", True) or "", "width", path, "")
    height = _integer(_text(size, "height", path, "<size>: ", True) or "", "height", path, "")
    depth_text = _text(size, "depth", path, "<size>: ", required=False)
    depth = _integer(depth_text, "depth", path, "") if depth_text else 1
    segmented_text = _text(root, "segmented", path, "", required=False)
    source = root.find("source")
    database = _text(source, "database", path, "", False) if source is not None else None
    ann = ImageAnnotation(
        filename=filename,
        width=width,
        height=height,
        depth=depth,
        folder=_text(root, "folder", path, "", required=False) or "",
        path=_text(root, "path", path, "", required=False) or "",
        database=database or "Unknown",
        segmented=_integer(segmented_text, "segmented", path, "") if segmented_text else 0,
    )
    if root.get("verified") == "yes":
        ann.extra["verified"] = True
    problems: list[str] = []
    for i, obj in enumerate(root.iter("object"), start=1):
        try:
            ann.boxes.append(_object_box(obj, i, path, validate))
        except AnnotationError as err:  # every faulty object of the file is reported
            problems.append(err.problem)
    if problems:
        raise AnnotationError.of(path, problems)
    if validate:
        check_annotation(ann, class_names, path, tolerance)
    return ann


def _object_box(obj: ET.Element, i: int, path: Path, validate: bool) -> Box:
    """The box of ``<object>`` number ``i`` (continuous 0-based pixels)."""
    where = f"object {i}: "
    name = _text(obj, "name", path, where, required=True) or ""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise AnnotationError(path, f"{where}missing required field <bndbox>")
    xmin, ymin, xmax, ymax = (
        _number(_text(bndbox, t, path, f"{where}<bndbox>: ", True) or "", t, path, where)
        for t in _COORDS
    )
    if validate:
        for lo, hi, a in ((xmin, xmax, "x"), (ymin, ymax, "y")):
            if hi < lo:
                raise AnnotationError(
                    path, f"object {i} ({name!r}): {a}max={hi:g} < {a}min={lo:g} "
                    "(corners swapped)",
                )
    return Box(
        label=name,
        x1=xmin - 1.0,
        y1=ymin - 1.0,
        x2=xmax,
        y2=ymax,
        difficult=_flag(obj, "difficult", path, where),
        truncated=_flag(obj, "truncated", path, where),
        pose=_text(obj, "pose", path, where, required=False) or "Unspecified",
    )


def read_voc(
    path: Path,
    class_names: Sequence[str] | None = None,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> ImageAnnotation:
    """Read one Pascal VOC / LabelImg XML file.

    Args:
        path: the ``.xml`` file.
        class_names: allowed class names (checked when ``validate``); ``None`` accepts any.
        validate: raise :class:`AnnotationError` on invalid boxes (one error holding them
            all, :meth:`AnnotationError.of`; see
            :func:`lumbardx.data.validate.validate_annotation`); when false, return what was
            parsed so a checker can list every problem. Faulty ``<object>`` entries (no
            ``<bndbox>``, a coordinate that is not a number) are refused either way, all of
            them in one error.
        tolerance: pixels a box may reach outside the image.

    Returns:
        The annotation, boxes in continuous 0-based pixels (``x1 = xmin - 1``, ``x2 = xmax``).

    Raises:
        AnnotationError: unreadable or malformed file, DOCTYPE/entity declarations, a missing
            required field (``filename``, ``size``/``width``/``height``, ``object/name``,
            ``bndbox`` and its four coordinates), a ``filename`` outside the image folder or a
            non-numeric value, always; invalid boxes (including unusable class names) when
            ``validate``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnnotationError(path, f"cannot read the file: {e.strerror or e}") from None
    return parse_voc(data, path, class_names, validate, tolerance)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    elem = ET.SubElement(parent, tag)
    if text is not None:
        elem.text = text
    return elem


def _clamp(index: int, size: int) -> int:
    """A 1-based pixel index kept inside ``1..size`` (as LabelImg keeps boxes in the image)."""
    return min(max(index, 1), size) if size > 0 else index


def format_voc(ann: ImageAnnotation) -> str:
    """The LabelImg XML text of ``ann`` (tab-indented, trailing newline, no declaration).

    Element order and formatting follow LabelImg's ``PascalVocWriter``; ``<path>`` is written
    only when ``ann.path`` is set, as LabelImg does when it knows no local path. Coordinates are
    written as integers, ``xmin = round(x1) + 1``, ``ymin = round(y1) + 1``,
    ``xmax = round(x2)``, ``ymax = round(y2)``, kept within ``1..width`` and ``1..height``
    (a box reaching past the image, within the validation tolerance, is cut at its edge).
    """
    top = ET.Element("annotation")
    if ann.extra.get("verified"):
        top.set("verified", "yes")
    _sub(top, "folder", ann.folder)
    _sub(top, "filename", ann.filename)
    if ann.path:
        _sub(top, "path", ann.path)
    _sub(_sub(top, "source"), "database", ann.database)
    size = _sub(top, "size")
    _sub(size, "width", str(int(ann.width)))
    _sub(size, "height", str(int(ann.height)))
    _sub(size, "depth", str(int(ann.depth)))
    _sub(top, "segmented", str(int(ann.segmented)))
    for box in ann.boxes:
        obj = _sub(top, "object")
        _sub(obj, "name", box.label)
        _sub(obj, "pose", box.pose)
        _sub(obj, "truncated", "1" if box.truncated else "0")
        _sub(obj, "difficult", "1" if box.difficult else "0")
        bnd = _sub(obj, "bndbox")
        coords = (
            _clamp(round(box.x1) + 1, ann.width),
            _clamp(round(box.y1) + 1, ann.height),
            _clamp(round(box.x2), ann.width),
            _clamp(round(box.y2), ann.height),
        )
        for tag, value in zip(_COORDS, coords, strict=True):
            _sub(bnd, tag, str(int(value)))
    ET.indent(top, space="\t")
    return ET.tostring(top, encoding="unicode", short_empty_elements=False) + "\n"


def write_voc(ann: ImageAnnotation, path: Path) -> None:
    """Write ``ann`` to ``path`` as LabelImg XML, atomically (temp file + ``os.replace``).

    Raises:
        AnnotationError: a box coordinate is not finite (it cannot be written as an integer).
    """
    for i, box in enumerate(ann.boxes, start=1):
        if not all(math.isfinite(v) for v in box.xyxy()):
            raise AnnotationError(path, f"object {i} ({box.label!r}): coordinate is not finite")
    write_text_atomic(Path(path), format_voc(ann))
