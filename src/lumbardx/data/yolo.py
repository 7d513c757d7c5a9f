"""YOLO txt annotations (``class cx cy w h``, normalised) and their ``data.yaml`` class list.

Layout (Ultralytics convention): ``images/<sub>/<stem>.<ext>`` with its labels in
``labels/<sub>/<stem>.txt`` (stems may contain spaces, dots or end in ``_``), class names in a
``data.yaml`` whose ``names`` is a list or a mapping ``{index: name}``. LabelImg's YOLO mode
keeps the names in ``classes.txt`` instead (one per line); :func:`read_classes_txt` reads it.

One label line is ``class_index cx cy w h`` with ``cx = (x1 + x2) / 2 / W``,
``w = (x2 - x1) / W`` (likewise ``cy``, ``h`` with ``H``), all in [0, 1]; boxes convert to
lumbardx's continuous 0-based pixels with the image size, read from the image header without
decoding the pixels (:func:`lumbardx.data.images.image_dimensions`). An empty or absent label
file means an image without objects.

Label files and class lists are UTF-8 (a byte order mark and Windows line ends are accepted);
numbers are plain ASCII decimals (:func:`lumbardx.data.validate.parse_decimal`), and class names
must be usable in every format (:func:`lumbardx.data.validate.name_problem`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.errors import AnnotationError
from lumbardx.data.images import image_dimensions
from lumbardx.data.validate import (
    DEFAULT_TOLERANCE_PX,
    annotation_problems,
    name_problem,
    parse_decimal,
    read_utf8,
)
from lumbardx.io import write_text_atomic

DEFAULT_DECIMALS: int = 6  # six decimals, as Ultralytics and the yolospine labels write them


#: ``(width, height, depth)`` of an image from its header, without decoding pixels
#: (:func:`lumbardx.data.images.image_dimensions`; the name the YOLO reader has always used).
read_image_size = image_dimensions


_SCALAR = (str, int, float)


def _checked(names: list[str], path: Path) -> list[str]:
    """``names`` unchanged when each is a usable class name; the error gives the class index."""
    for i, name in enumerate(names):
        problem = name_problem(name)
        if problem is not None:
            raise AnnotationError(path, f"class {i} {name!r}: {problem}")
    return names


def parse_names(names: object, path: Path) -> list[str]:
    """Class names from a ``names`` value: a list, or a mapping ``{0: a, 1: b, ...}``.

    Every name must be a scalar (text or a number): anything else is refused without being
    turned into text, as a YAML alias can make a small file stand for a nested list of 10**8
    items.
    """
    if isinstance(names, Mapping) and all(isinstance(v, _SCALAR) for v in names.values()):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise AnnotationError(path, "'names' mapping keys must be class indices") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise AnnotationError(
                path, f"'names' indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}"
            )
        return _checked([by_index[i] for i in range(len(by_index))], path)
    if isinstance(names, list) and all(isinstance(n, _SCALAR) for n in names):
        return _checked([str(n) for n in names], path)
    raise AnnotationError(path, "'names' must be a list of class names or a mapping index: name")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line saying what is wrong in the YAML and where (PyYAML's text spans lines)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def read_data_yaml(path: Path) -> list[str]:
    """Class names (index = position) from a YOLO ``data.yaml``.

    Raises:
        AnnotationError: unreadable or malformed YAML (including nesting deeper than the parser
            can follow), no ``names``, malformed ``names`` or an unusable class name
            (:func:`lumbardx.data.validate.name_problem`), or an ``nc`` that disagrees with the
            number of names.
    """
    path = Path(path)
    text = read_utf8(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AnnotationError(path, f"malformed YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise AnnotationError(path, "malformed YAML: nested too deeply") from None
    if not isinstance(data, dict) or "names" not in data:
        raise AnnotationError(path, "missing required field 'names' (the class names)")
    names = parse_names(data["names"], path)
    nc = data.get("nc", len(names))
    if not isinstance(nc, int) or isinstance(nc, bool):
        raise AnnotationError(path, f"'nc' must be the number of class names ({len(names)})")
    if nc != len(names):
        raise AnnotationError(path, f"'nc' is {nc} but {len(names)} names are listed")
    return names


def format_data_yaml(class_names: Sequence[str]) -> str:
    """``data.yaml`` text: ``path: .``, ``names`` as a list, and ``nc``."""
    body = yaml.safe_dump(
        {"path": ".", "names": list(class_names), "nc": len(class_names)},
        sort_keys=False,
        allow_unicode=True,
    )
    return "# YOLO class names for labels/ (class index = position in 'names')\n" + body


def write_data_yaml(path: Path, class_names: Sequence[str]) -> None:
    """Write :func:`format_data_yaml` to ``path`` atomically."""
    write_text_atomic(Path(path), format_data_yaml(class_names))


def read_classes_txt(path: Path) -> list[str]:
    """Class names from a LabelImg ``classes.txt`` (one per line, blank lines ignored).

    Raises:
        AnnotationError: unreadable file, not UTF-8, or a line holding control characters.
    """
    path = Path(path)
    names = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
    return _checked(names, path)


def _class_index(token: str, path: Path, line_no: int) -> int:
    try:
        value = parse_decimal(token)
    except ValueError:
        raise AnnotationError(path, f"line {line_no}: class {token!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise AnnotationError(path, f"line {line_no}: class {token!r} is not a class index")
    return int(value)


def parse_yolo(
    text: str,
    path: Path,
    image_size: tuple[int, int],
    class_names: Sequence[str] | None,
    filename: str = "",
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> ImageAnnotation:
    """Parse YOLO label text; ``path`` names the file in errors (see :func:`read_yolo`)."""
    width, height = image_size
    ann = ImageAnnotation(filename=filename, width=int(width), height=int(height))
    problems: list[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        try:
            box = _line_box(line, line_no, path, image_size, class_names, validate)
        except AnnotationError as err:
            problems.append(err.problem)
            continue
        if box is not None:
            ann.boxes.append(box)
    if validate and not problems:
        problems = annotation_problems(ann, class_names, tolerance)
    if problems:
        raise AnnotationError.of(path, problems)
    return ann


def _line_box(line: str, line_no: int, path: Path, image_size: tuple[int, int],
              class_names: Sequence[str] | None, validate: bool) -> Box | None:
    """The box of one label line (pixels), ``None`` for a blank line."""
    width, height = image_size
    parts = line.split()
    if not parts:
        return None
    if len(parts) != 5:
        raise AnnotationError(
            path, f"line {line_no}: expected 5 columns 'class cx cy w h', got {len(parts)}"
        )
    index = _class_index(parts[0], path, line_no)
    try:
        cx, cy, w, h = (parse_decimal(p) for p in parts[1:])
    except ValueError:
        raise AnnotationError(
            path, f"line {line_no}: non-numeric box value in {line.strip()!r}"
        ) from None
    if class_names is not None and index < len(class_names):
        label = class_names[index]
    elif validate:
        n = len(class_names) if class_names is not None else 0
        raise AnnotationError(
            path, f"line {line_no}: unknown class index {index} (the class list has {n})"
        )
    else:
        label = str(index)  # kept so a checker can report it as an unknown class
    return Box(
        label=label,
        x1=(cx - w / 2) * width,
        y1=(cy - h / 2) * height,
        x2=(cx + w / 2) * width,
        y2=(cy + h / 2) * height,
    )


def read_yolo(
    path: Path,
    image_path: Path | None = None,
    class_names: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> ImageAnnotation:
    """Read one YOLO label file.

    Args:
        path: the ``.txt`` label file.
        image_path: its image; gives the size (header only), file name, depth and folder.
        class_names: class names by index (from :func:`read_data_yaml`); ``None`` only with
            ``validate=False``, and boxes are then labelled with their index as text.
        image_size: ``(width, height)`` in pixels, instead of reading ``image_path``.
        validate: raise on invalid boxes or unknown class indices (one error holding every
            problem of the file, :meth:`AnnotationError.of`); when false, return what was
            parsed (unknown indices become the label ``"<index>"``).
        tolerance: pixels a box may reach outside the image.

    Returns:
        Boxes in continuous 0-based pixels, in line order.

    Raises:
        AnnotationError: unreadable or not UTF-8 file, a line without 5 columns, a
            non-numeric value, always; invalid boxes or unknown class indices when ``validate``.
        ImageReadError: the image size cannot be read.
    """
    path = Path(path)
    depth, filename, folder, image = 1, path.with_suffix("").name, "", ""
    if image_size is None:
        if image_path is None:
            raise AnnotationError(path, "the image size is needed to read YOLO labels")
        width, height, depth = image_dimensions(image_path)
        image_size = (width, height)
    if image_path is not None:
        image_path = Path(image_path)
        filename, folder, image = image_path.name, image_path.parent.name, str(image_path)
    ann = parse_yolo(read_utf8(path), path, image_size, class_names, filename, validate, tolerance)
    ann.depth, ann.folder, ann.path = depth, folder, image
    return ann


def format_yolo(
    ann: ImageAnnotation, class_names: Sequence[str], decimals: int = DEFAULT_DECIMALS
) -> str:
    """YOLO label text of ``ann``: one ``class cx cy w h`` line per box (``""`` if none).

    Boxes are cut at the image edges first, so every value lies in [0, 1] as YOLO trainers
    require (a box reaching past the image, within the validation tolerance, loses the part
    outside).

    Raises:
        AnnotationError: a box's class is not in ``class_names``, or the image size is not
            positive (normalising needs it).
    """
    if ann.width <= 0 or ann.height <= 0:
        raise AnnotationError(ann.filename, f"image size {ann.width}x{ann.height} is not positive")
    index = {name: i for i, name in enumerate(class_names)}
    lines = []
    for i, box in enumerate(ann.boxes, start=1):
        if box.label not in index:
            raise AnnotationError(
                ann.filename, f"object {i}: class {box.label!r} is not in the class list"
            )
        w, h = ann.width, ann.height
        x1, x2 = min(max(box.x1, 0.0), w), min(max(box.x2, 0.0), w)
        y1, y2 = min(max(box.y1, 0.0), h), min(max(box.y2, 0.0), h)
        values = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        lines.append(f"{index[box.label]} " + " ".join(f"{v:.{decimals}f}" for v in values))
    return "".join(line + "\n" for line in lines)


def write_yolo(
    ann: ImageAnnotation,
    path: Path,
    class_names: Sequence[str],
    decimals: int = DEFAULT_DECIMALS,
) -> None:
    """Write :func:`format_yolo` of ``ann`` to ``path`` atomically."""
    write_text_atomic(Path(path), format_yolo(ann, class_names, decimals))
