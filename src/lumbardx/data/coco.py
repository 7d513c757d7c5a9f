"""COCO "instances" JSON: ``images``, ``annotations`` and ``categories`` of a whole dataset.

``bbox`` is ``[x, y, w, h]`` in the same continuous 0-based pixel frame as lumbardx, so boxes
convert exactly (``x1 = x``, ``x2 = x + w``). Category ids may be any distinct integers (not
necessarily contiguous); class names are listed in ascending id order. ``iscrowd = 1`` regions
are read as boxes with ``difficult = True`` and written back as ``iscrowd = 1``: both mean
"ignore in evaluation" (pycocotools and the VOC metric alike). ``file_name`` may include
sub-folders; :class:`ImageAnnotation` keeps its base name in ``filename`` and the full value,
the image id and the annotation ids in ``extra`` (``coco_file_name``, ``coco_image_id``,
``coco_annotation_ids``).

The file is UTF-8 JSON (a byte order mark is accepted). Anything that breaks the file's
structure makes the whole file unusable, named with the entry at fault: a missing or mistyped
field, ids that are not integers (``NaN``, ``Infinity``, text, beyond 2**53) or are listed twice
(images, categories, annotations), an annotation whose image is not listed, a category name that
is not usable text (:func:`lumbardx.data.validate.name_problem`). An invalid box (non-finite,
negative or zero size, out of the image) or an unknown ``category_id`` is a problem of that
image's annotation, raised only when validating. Every entry is checked before the file is
refused: the error's message names the first fault and counts the others, and
``AnnotationError.problems`` holds them all (``lumbardx data check`` lists each), so that a
file's faults are fixed in one round, not found one at a time. Values quoted in messages are
shortened, so an error stays one short line whatever the file holds.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.errors import AnnotationError
from lumbardx.data.validate import (
    DEFAULT_TOLERANCE_PX,
    annotation_problems,
    name_problem,
    read_utf8,
)
from lumbardx.io import write_text_atomic

_MAX_ID = 2**53  # larger JSON integers lose precision in most JSON readers
_TOP_LEVEL = ("images", "annotations", "categories")


@dataclass
class CocoData:
    """A parsed COCO file.

    Attributes:
        class_names: category names in ascending category id order.
        category_ids: the COCO id of each class, parallel to ``class_names``.
        annotations: one per ``images`` entry, in file order; boxes in 0-based pixels.
    """

    class_names: list[str]
    category_ids: list[int]
    annotations: list[ImageAnnotation] = field(default_factory=list)


def _require(obj: dict[str, Any], key: str, where: str, path: Path) -> Any:
    if key not in obj:
        raise AnnotationError(path, f"{where}: missing required field {key!r}")
    return obj[key]


def _shown(value: Any) -> str:
    """``repr(value)`` cut short (long lists, strings and numbers end in ``...``)."""
    return reprlib.repr(value)


def _int(value: Any, what: str, path: Path) -> int:
    """``value`` as an integer: a JSON integer, or a float with no fraction (``3.0``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise AnnotationError(path, f"{what} must be an integer, got {_shown(value)}")
    if abs(value) > _MAX_ID:
        raise AnnotationError(path, f"{what} must be an integer within ±2**53, got {_shown(value)}")
    return int(value)


def _bbox(value: Any, where: str, path: Path) -> tuple[float, float, float, float]:
    """``[x, y, w, h]`` as floats; non-finite floats are kept for validation to report."""
    if (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        try:
            x, y, w, h = (float(v) for v in value)
            return x, y, w, h
        except OverflowError:  # an integer beyond the float range
            pass
    raise AnnotationError(path,
                          f"{where}: bbox must be 4 numbers [x, y, w, h], got {_shown(value)}")


def _categories(data: dict[str, Any], path: Path, problems: list[str]) -> dict[int, str]:
    """Category id -> name in ascending id order; a faulty entry is added to ``problems``
    and left out."""
    cats: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        try:
            if not isinstance(cat, dict):
                raise AnnotationError(path, f"categories[{i}] is not an object")
            cid = _int(_require(cat, "id", f"categories[{i}]", path), f"categories[{i}].id",
                       path)
            name = _require(cat, "name", f"categories[{i}]", path)
            if not isinstance(name, str):
                raise AnnotationError(
                    path, f"categories[{i}].name must be a string, got {_shown(name)}")
            problem = name_problem(name)
            if problem is not None:
                raise AnnotationError(path, f"categories[{i}].name {name!r}: {problem}")
            if cid in cats:
                raise AnnotationError(path, f"category id {cid} is listed twice")
            if name in cats.values():
                raise AnnotationError(path, f"category name {name!r} is listed twice")
        except AnnotationError as err:
            problems.append(err.problem)
            continue
        cats[cid] = name
    return dict(sorted(cats.items()))


def _image(img: Any, i: int, images: dict[int, ImageAnnotation], path: Path
           ) -> tuple[int, ImageAnnotation]:
    """Entry ``images[i]`` as its id and an empty :class:`ImageAnnotation`."""
    if not isinstance(img, dict):
        raise AnnotationError(path, f"images[{i}] is not an object")
    where = f"images[{i}]"
    iid = _int(_require(img, "id", where, path), f"{where}.id", path)
    if iid in images:
        raise AnnotationError(path, f"image id {iid} is listed twice")
    file_name = _require(img, "file_name", where, path)
    if not isinstance(file_name, str) or not file_name.strip():
        raise AnnotationError(
            path, f"{where}.file_name must be a non-empty string, got {_shown(file_name)}"
        )
    return iid, ImageAnnotation(
        filename=PurePosixPath(file_name.replace("\\", "/")).name,
        width=_int(_require(img, "width", where, path), f"{where}.width", path),
        height=_int(_require(img, "height", where, path), f"{where}.height", path),
        extra={"coco_image_id": iid, "coco_file_name": file_name, "coco_annotation_ids": []},
    )


def _hashable(value: Any) -> bool:
    """``value`` can be a set member (JSON scalars; not lists or objects)."""
    return isinstance(value, (int, float, str, type(None)))


def _raise_problems(path: Path, problems: list[str]) -> None:
    """Raise :meth:`AnnotationError.of` ``problems`` unless there are none."""
    if problems:
        raise AnnotationError.of(path, problems)


def parse_coco(
    data: Any,
    path: Path,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> CocoData:
    """Build :class:`CocoData` from decoded JSON; ``path`` names the file in errors.

    Every entry is checked before the file is refused, so that one error reports every
    structural fault (the first in its message, all in ``AnnotationError.problems``); an
    annotation of an image or category whose own entry is at fault is not reported again. With
    ``validate``, the boxes are checked once the structure holds, all of them likewise.
    """
    if not isinstance(data, dict):
        raise AnnotationError(
            path, "not a COCO instances file: the top level must be an object holding lists "
            "'images', 'annotations' and 'categories'"
        )
    for key in _TOP_LEVEL:
        if key not in data:
            raise AnnotationError(
                path, f"not a COCO instances file: missing required field {key!r}"
            )
        if not isinstance(data[key], list):
            raise AnnotationError(path, f"not a COCO instances file: {key!r} must be a list")
    problems: list[str] = []
    cats = _categories(data, path, problems)
    bad_categories = {c.get("id") for c in data["categories"]
                      if isinstance(c, dict) and _hashable(c.get("id"))} - set(cats)
    images: dict[int, ImageAnnotation] = {}
    bad_images: set[Any] = set()
    for i, img in enumerate(data["images"]):
        try:
            iid, ann = _image(img, i, images, path)
        except AnnotationError as err:
            problems.append(err.problem)
            if isinstance(img, dict) and _hashable(img.get("id")) \
                    and img.get("id") not in images:
                bad_images.add(img.get("id"))
            continue
        images[iid] = ann
    annotation_ids: set[int] = set()
    for i, obj in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        try:
            if not isinstance(obj, dict):
                raise AnnotationError(path, f"{where} is not an object")
            if "id" in obj:
                aid = _int(obj["id"], f"{where}.id", path)
                if aid in annotation_ids:
                    raise AnnotationError(path, f"annotation id {aid} is listed twice")
                annotation_ids.add(aid)
            iid = _int(_require(obj, "image_id", where, path), f"{where}.image_id", path)
            cid = _int(_require(obj, "category_id", where, path), f"{where}.category_id", path)
            x, y, w, h = _bbox(_require(obj, "bbox", where, path), where, path)
            iscrowd = obj.get("iscrowd", 0)
            if iscrowd not in (0, 1):  # false/true read as 0/1
                raise AnnotationError(
                    path, f"{where}.iscrowd must be 0 or 1, got {_shown(iscrowd)}")
            if iid in bad_images or cid in bad_categories:
                continue  # its image or category entry is reported already
            if iid not in images:
                raise AnnotationError(path, f"{where}: image_id {iid} is not in 'images'")
            if cid not in cats and validate:
                raise AnnotationError(path, f"{where}: unknown category_id {cid}")
        except AnnotationError as err:
            problems.append(err.problem)
            continue
        ann = images[iid]
        ann.boxes.append(
            Box(
                label=cats.get(cid, str(cid)),
                x1=x,
                y1=y,
                x2=x + w,
                y2=y + h,
                difficult=bool(iscrowd),
            )
        )
        ann.extra["coco_annotation_ids"].append(obj.get("id"))
    _raise_problems(path, problems)  # boxes are numbered per image once every entry reads
    result = CocoData(class_names=list(cats.values()), category_ids=list(cats))
    for ann in images.values():
        if validate:
            found = annotation_problems(ann, result.class_names, tolerance)
            problems += [f"image {ann.extra['coco_file_name']!r}: {p}" for p in found]
        result.annotations.append(ann)
    _raise_problems(path, problems)
    return result


def load_json(path: Path) -> Any:
    """The decoded JSON of ``path`` (UTF-8, a byte order mark accepted).

    Raises:
        AnnotationError: unreadable or not UTF-8 file, malformed JSON, nesting deeper than the
            parser can follow, or an integer past Python's digit limit.
    """
    path = Path(path)
    text = read_utf8(path)
    try:
        return json.loads(text)
    except RecursionError:
        raise AnnotationError(path, "malformed JSON: nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, or an integer past the digit limit
        raise AnnotationError(path, f"malformed JSON: {e}") from None


def read_coco(
    path: Path, validate: bool = True, tolerance: float = DEFAULT_TOLERANCE_PX
) -> CocoData:
    """Read a COCO instances JSON file.

    Args:
        path: the ``.json`` file.
        validate: raise on invalid boxes or unknown ``category_id`` (the message names the
            file, the image and the object of the first, ``problems`` all of them); when
            false, return what was parsed (unknown category ids become the label ``"<id>"``).
        tolerance: pixels a box may reach outside the image.

    Raises:
        AnnotationError: a file :func:`load_json` refuses, a file that is not COCO instances,
            or a structural fault (see the module docstring), always; invalid boxes when
            ``validate``.
    """
    path = Path(path)
    return parse_coco(load_json(path), path, validate, tolerance)


def to_coco_dict(
    annotations: Sequence[ImageAnnotation],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The COCO instances dictionary of ``annotations``.

    Args:
        annotations: one per image; boxes in 0-based pixels.
        class_names: the categories, in order.
        category_ids: COCO id per class (default ``1..n``, the COCO convention).
        file_names: ``file_name`` per image (default ``extra["coco_file_name"]`` or
            ``filename``).

    Image ids are kept from ``extra["coco_image_id"]`` when every image has a distinct one,
    otherwise numbered from 1; annotation ids are numbered from 1. ``area`` is ``w * h``.

    Raises:
        AnnotationError: a box's class is not in ``class_names``, or ids are not distinct.
    """
    ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    if len(ids) != len(class_names) or len(set(ids)) != len(ids):
        raise AnnotationError(None, "category_ids must be distinct, one per class name")
    cat_of = dict(zip(class_names, ids, strict=True))
    kept = [a.extra.get("coco_image_id") for a in annotations]
    if None in kept or len(set(kept)) != len(kept):
        kept = list(range(1, len(annotations) + 1))
    images, objects = [], []
    for n, (ann, iid) in enumerate(zip(annotations, kept, strict=True)):
        name = file_names[n] if file_names is not None else ann.extra.get("coco_file_name")
        images.append(
            {"id": iid, "file_name": name or ann.filename, "width": ann.width, "height": ann.height}
        )
        for i, box in enumerate(ann.boxes, start=1):
            if box.label not in cat_of:
                raise AnnotationError(
                    ann.filename, f"object {i}: class {box.label!r} is not in the class list"
                )
            if not all(math.isfinite(v) for v in box.xyxy()):
                raise AnnotationError(ann.filename, f"object {i}: coordinate is not finite")
            objects.append(
                {
                    "id": len(objects) + 1,
                    "image_id": iid,
                    "category_id": cat_of[box.label],
                    "bbox": [box.x1, box.y1, box.width, box.height],
                    "area": box.width * box.height,
                    "iscrowd": int(box.difficult),
                }
            )
    categories = [
        {"id": cid, "name": name, "supercategory": "spine"}
        for name, cid in zip(class_names, ids, strict=True)
    ]
    return {"images": images, "annotations": objects, "categories": categories}


def write_coco(
    path: Path,
    annotations: Sequence[ImageAnnotation],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
) -> None:
    """Write :func:`to_coco_dict` as JSON to ``path`` atomically."""
    data = to_coco_dict(annotations, class_names, category_ids, file_names)
    write_text_atomic(Path(path), json.dumps(data, indent=1, ensure_ascii=False) + "\n")
