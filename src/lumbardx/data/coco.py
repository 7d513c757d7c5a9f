"""COCO "instances" JSON: ``images``, ``annotations`` and ``categories`` of a whole dataset.

``bbox`` is ``[x, y, w, h]`` in the same continuous 0-based pixel frame as lumbardx, so boxes
convert exactly (``x1 = x``, ``x2 = x + w``). Category ids may be any distinct integers (not
necessarily contiguous); class names are listed in ascending id order. ``iscrowd = 1`` regions
are read as boxes with ``difficult = True`` and written back as ``iscrowd = 1``: both mean
"ignore in evaluation" (pycocotools and the VOC metric alike). ``file_name`` may include
sub-folders; :class:`ImageAnnotation` keeps its base name in ``filename`` and the full value,
the image id and the annotation ids in ``extra`` (``coco_file_name``, ``coco_image_id``,
``coco_annotation_ids``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.errors import AnnotationError
from lumbardx.data.validate import DEFAULT_TOLERANCE_PX, annotation_problems
from lumbardx.io import write_text_atomic


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


def _int(value: Any, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise AnnotationError(path, f"{what} must be an integer, got {value!r}")
    return int(value)


def _categories(data: dict[str, Any], path: Path) -> dict[int, str]:
    cats: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict):
            raise AnnotationError(path, f"categories[{i}] is not an object")
        cid = _int(_require(cat, "id", f"categories[{i}]", path), f"categories[{i}].id", path)
        name = str(_require(cat, "name", f"categories[{i}]", path))
        if cid in cats:
            raise AnnotationError(path, f"category id {cid} is listed twice")
        if name in cats.values():
            raise AnnotationError(path, f"category name {name!r} is listed twice")
        cats[cid] = name
    return dict(sorted(cats.items()))


def parse_coco(
    data: Any,
    path: Path,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> CocoData:
    """Build :class:`CocoData` from decoded JSON; ``path`` names the file in errors."""
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise AnnotationError(
            path, "not a COCO instances file (needs lists 'images', 'annotations', 'categories')"
        )
    cats = _categories(data, path)
    images: dict[int, ImageAnnotation] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise AnnotationError(path, f"images[{i}] is not an object")
        where = f"images[{i}]"
        iid = _int(_require(img, "id", where, path), f"{where}.id", path)
        if iid in images:
            raise AnnotationError(path, f"image id {iid} is listed twice")
        file_name = str(_require(img, "file_name", where, path))
        images[iid] = ImageAnnotation(
            filename=PurePosixPath(file_name.replace("\\", "/")).name,
            width=_int(_require(img, "width", where, path), f"{where}.width", path),
            height=_int(_require(img, "height", where, path), f"{where}.height", path),
            extra={"coco_image_id": iid, "coco_file_name": file_name, "coco_annotation_ids": []},
        )
    for i, obj in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(obj, dict):
            raise AnnotationError(path, f"{where} is not an object")
        iid = _int(_require(obj, "image_id", where, path), f"{where}.image_id", path)
        cid = _int(_require(obj, "category_id", where, path), f"{where}.category_id", path)
        bbox = _require(obj, "bbox", where, path)
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        ):
            raise AnnotationError(
                path, f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
            )
        if iid not in images:
            raise AnnotationError(path, f"{where}: image_id {iid} is not in 'images'")
        if cid not in cats and validate:
            raise AnnotationError(path, f"{where}: unknown category_id {cid}")
        x, y, w, h = (float(v) for v in bbox)
        ann = images[iid]
        ann.boxes.append(
            Box(
                label=cats.get(cid, str(cid)),
                x1=x,
                y1=y,
                x2=x + w,
                y2=y + h,
                difficult=bool(obj.get("iscrowd", 0)),
            )
        )
        ann.extra["coco_annotation_ids"].append(obj.get("id"))
    result = CocoData(class_names=list(cats.values()), category_ids=list(cats))
    for ann in images.values():
        if validate:
            problems = annotation_problems(ann, result.class_names, tolerance)
            if problems:
                raise AnnotationError(path, f"image {ann.extra['coco_file_name']!r}: {problems[0]}")
        result.annotations.append(ann)
    return result


def read_coco(
    path: Path, validate: bool = True, tolerance: float = DEFAULT_TOLERANCE_PX
) -> CocoData:
    """Read a COCO instances JSON file.

    Args:
        path: the ``.json`` file.
        validate: raise on the first invalid box or unknown ``category_id`` (message names the
            file, the image and the object); when false, return what was parsed (unknown
            category ids become the label ``"<id>"``).
        tolerance: pixels a box may reach outside the image.

    Raises:
        AnnotationError: unreadable or malformed JSON, a file that is not COCO instances, a
            missing required field or a non-numeric value, always; invalid boxes when
            ``validate``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AnnotationError(path, f"cannot read the file: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(path, f"malformed JSON: {e}") from None
    return parse_coco(data, path, validate, tolerance)


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
