"""Whole datasets: find their annotation format, list image/label pairs, convert between formats.

Layouts read (:func:`detect_format`, tried in this order):

* **yolo** -- a ``labels/`` folder holding ``.txt`` files, or a ``data.yaml``; images in
  ``images/`` (else the root), sub-folders mirrored: ``images/a/x.png`` <-> ``labels/a/x.txt``.
  Class names from ``data.yaml``, else a LabelImg ``classes.txt`` (root or ``labels/``).
* **coco** -- exactly one COCO instances ``.json`` in the root or in ``annotations/``;
  ``file_name`` is relative to ``images/`` (else the root). When no layout is found, a ``.json``
  there that cannot be read, or holds some COCO fields but not ``images`` and ``annotations``,
  is named with its problem (a truncated ``instances.json`` is the likely cause).
* **voc** -- ``.xml`` files in ``Annotations/`` or ``annotations/`` with images in
  ``JPEGImages/`` or ``images/`` (else the root), or LabelImg's default of each ``.xml`` beside
  its image. An optional ``classes.txt`` in the root fixes the class order; other names follow in
  order of first appearance.

Images are ``.png``, ``.jpg``, ``.jpeg`` and ``.dcm`` files (any case; hidden files skipped).

Layouts written (:func:`write_dataset`); each reads back with :func:`scan_dataset`:

* yolo: ``dst/images/<rel>``, ``dst/labels/<rel stem>.txt``, ``dst/data.yaml``.
* voc: ``dst/images/<rel>``, ``dst/annotations/<rel stem>.xml`` (LabelImg: open ``images/``,
  save dir ``annotations/``), ``dst/classes.txt`` keeping the class order.
* coco: ``dst/images/<rel>``, ``dst/annotations/instances.json``.

``<rel>`` is the image path below the source's image folder, so sub-folders (e.g. ``train/``)
are kept. Images whose label file is missing are copied without a label (a COCO file does not
list them), so "not annotated" stays distinct from "annotated, no findings". Images whose
annotation could not be used are not copied; they are reported, as are images a format cannot
hold: a file name that is not UTF-8 (VOC and COCO store it as text) or a box whose class name is
unusable (:func:`lumbardx.data.validate.name_problem`). Every file is written
atomically (:mod:`lumbardx.io`: a temporary file in the target folder, moved into place with
:func:`os.replace`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from lumbardx.data import coco, voc, yolo
from lumbardx.data.boxes import ImageAnnotation
from lumbardx.data.errors import AnnotationError, InputError
from lumbardx.data.validate import annotation_problems, name_problem
from lumbardx.io import atomic_copy, write_text_atomic

Format = Literal["voc", "yolo", "coco"]
FORMATS: tuple[str, ...] = ("voc", "yolo", "coco")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm"})
_IMAGE_DIRS = ("images", "JPEGImages")
_VOC_ANN_DIRS = ("Annotations", "annotations")


@dataclass
class Record:
    """One image of a dataset.

    Attributes:
        image_path: the image file (below the scanned root, as found).
        label_path: its label file (YOLO ``.txt``, VOC ``.xml``, the COCO ``.json``), or
            ``None`` when the image has none.
        annotation: the parsed boxes, or ``None`` when the label is missing or unusable.
    """

    image_path: Path
    label_path: Path | None
    annotation: ImageAnnotation | None


@dataclass
class ScanResult:
    """What :func:`scan_dataset` found.

    Attributes:
        format: ``"voc"``, ``"yolo"`` or ``"coco"``.
        class_names: the dataset's class names (a YOLO/COCO class index is a position here).
        records: one per image file, sorted by path.
        problems: unusable label files, label files without an image, invalid annotations.
        root: the scanned folder.
    """

    format: str
    class_names: list[str]
    records: list[Record]
    problems: list[InputError] = field(default_factory=list)
    root: Path | None = None


@dataclass
class ConvertSummary:
    """What :func:`write_dataset` / :func:`convert_dataset` did.

    Attributes:
        source_format, target_format: the formats converted from and to.
        dst: the written dataset folder.
        class_names: class names of the written dataset.
        images: images written (copied, or labelled when images are not copied).
        labelled: images written with an annotation.
        boxes_per_class: class name -> number of boxes written.
        problems: source problems and images left out, each naming its file.
    """

    source_format: str
    target_format: str
    dst: Path
    class_names: list[str]
    images: int = 0
    labelled: int = 0
    boxes_per_class: Counter[str] = field(default_factory=Counter)
    problems: list[InputError] = field(default_factory=list)


# -- atomic file writes ----------------------------------------------------------------------


# -- finding files ---------------------------------------------------------------------------


def _files(folder: Path, suffixes: frozenset[str] | set[str]) -> list[Path]:
    """Files below ``folder`` with one of ``suffixes`` (lower case), hidden ones skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in suffixes
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _image_dir(root: Path) -> Path:
    return _first_dir(root, _IMAGE_DIRS) or root


def _key(path: Path, base: Path) -> str:
    """Relative path without suffix, the key that pairs an image with its label file."""
    return path.relative_to(base).with_suffix("").as_posix()


def _coco_candidates(root: Path) -> tuple[list[Path], list[InputError]]:
    """The COCO instances files (JSON objects with ``images`` and ``annotations``) in ``root``
    and ``root/annotations``, and the problems of the ``.json`` files there that are unreadable
    or hold other COCO fields without those two (reported when no layout is found)."""
    found: list[Path] = []
    refused: list[InputError] = []
    for folder in (root, root / "annotations"):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                data = coco.load_json(path)
            except InputError as e:
                refused.append(e)
                continue
            if not isinstance(data, dict):
                continue
            missing = [key for key in ("images", "annotations") if key not in data]
            if not missing:
                found.append(path)
            elif len(missing) == 1 or "categories" in data:
                refused.append(AnnotationError(
                    path, f"not a COCO instances file: missing required field {missing[0]!r}"))
    return found, refused


def detect_format(root: Path) -> Format:
    """The annotation format of the dataset folder ``root`` (see the module docstring).

    Raises:
        InputError: ``root`` is not a folder, holds several COCO files, or no annotations (the
            error names a ``.json`` file that looks like a broken COCO file, if there is one).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    if (root / "data.yaml").is_file() or _files(root / "labels", {".txt"}):
        return "yolo"
    candidates, refused = _coco_candidates(root)
    if len(candidates) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in candidates)
        raise InputError(root, f"several COCO files ({names}); keep one per dataset folder")
    if candidates:
        return "coco"
    ann_dir = _first_dir(root, _VOC_ANN_DIRS) or _image_dir(root)
    if _files(ann_dir, {".xml"}):
        return "voc"
    if refused:
        raise refused[0]
    raise InputError(
        root,
        "no annotations found: expected labels/*.txt or data.yaml (YOLO), an instances .json "
        "(COCO), or .xml files in Annotations/, annotations/ or beside the images (VOC)",
    )


# -- scanning --------------------------------------------------------------------------------


def _unmatched(labels: dict[str, Path], used: set[str], image_dir: Path) -> list[InputError]:
    return [
        AnnotationError(path, f"label file has no image (looked for {key}.png/.jpg/.jpeg/.dcm "
                              f"in {image_dir})")
        for key, path in sorted(labels.items())
        if key not in used
    ]


def _pair_labels(
    image_dir: Path, label_dir: Path, labels: dict[str, Path],
    read: Callable[[Path, Path], ImageAnnotation],
) -> tuple[list[Record], list[InputError]]:
    """One :class:`Record` per image below ``image_dir`` (images inside a separate
    ``label_dir`` below it are skipped), paired with the label file of the same :func:`_key`
    in ``labels`` and parsed by ``read(label, image)``.

    Returns:
        ``(records, problems)``: problems are the labels ``read`` refused, then the label
        files that have no image.
    """
    records, used, problems = [], set(), []
    for image in _files(image_dir, IMAGE_SUFFIXES):
        if label_dir != image_dir and label_dir in image.parents:
            continue
        key = _key(image, image_dir)
        label = labels.get(key)
        ann = None
        if label is not None:
            used.add(key)
            try:
                ann = read(label, image)
            except InputError as e:
                problems.append(e)
        records.append(Record(image, label, ann))
    return records, problems + _unmatched(labels, used, image_dir)


def _scan_yolo(root: Path) -> ScanResult:
    image_dir, label_dir = _image_dir(root), root / "labels"
    problems: list[InputError] = []
    names: list[str] | None = None
    if (root / "data.yaml").is_file():
        names = yolo.read_data_yaml(root / "data.yaml")
    else:
        txt = next((p for p in (root / "classes.txt", label_dir / "classes.txt") if p.is_file()),
                   None)
        if txt is not None:
            names = yolo.read_classes_txt(txt)
        else:
            problems.append(InputError(root, "no data.yaml or classes.txt: class names unknown, "
                                             "boxes are labelled with their class index"))
    labels = {
        _key(p, label_dir): p for p in _files(label_dir, {".txt"}) if p.name != "classes.txt"
    }
    records, found = _pair_labels(
        image_dir, label_dir, labels,
        lambda label, image: yolo.read_yolo(label, image, names, validate=False))
    return ScanResult("yolo", list(names or []), records, problems + found, root)


def _scan_voc(root: Path) -> ScanResult:
    image_dir = _image_dir(root)
    ann_dir = _first_dir(root, _VOC_ANN_DIRS) or image_dir
    names: list[str] = []
    if (root / "classes.txt").is_file():
        names = yolo.read_classes_txt(root / "classes.txt")
    labels = {_key(p, ann_dir): p for p in _files(ann_dir, {".xml"})}

    def read(label: Path, image: Path) -> ImageAnnotation:
        ann = voc.read_voc(label, validate=False)
        for box in ann.boxes:  # class names in order of first appearance, each once
            if box.label not in names and name_problem(box.label) is None:
                names.append(box.label)  # an unusable name is left to validation to report
        return ann

    records, problems = _pair_labels(image_dir, ann_dir, labels, read)
    return ScanResult("voc", names, records, problems, root)


def _scan_coco(root: Path) -> ScanResult:
    (path,), _ = _coco_candidates(root)
    image_dir = _image_dir(root)
    images = _files(image_dir, IMAGE_SUFFIXES)
    try:
        data = coco.read_coco(path, validate=False)
    except InputError as e:
        return ScanResult("coco", [], [Record(i, path, None) for i in images], [e], root)
    by_rel = {i.relative_to(image_dir).as_posix(): i for i in images}
    by_name: dict[str, list[Path]] = {}
    for i in images:
        by_name.setdefault(i.name, []).append(i)
    found: dict[Path, ImageAnnotation] = {}
    problems: list[InputError] = []
    for ann in data.annotations:
        file_name = ann.extra["coco_file_name"].replace("\\", "/")
        image = by_rel.get(file_name)
        if image is None and len(by_name.get(ann.filename, [])) == 1:
            image = by_name[ann.filename][0]
        if image is None:
            problems.append(AnnotationError(image_dir / file_name,
                                            f"listed in {path.name} but the image is not found"))
        elif image in found:
            problems.append(AnnotationError(image, f"listed twice in {path.name}"))
        else:
            ann.folder, ann.path = image.parent.name, str(image)
            found[image] = ann
    records = [Record(i, path if i in found else None, found.get(i)) for i in images]
    return ScanResult("coco", data.class_names, records, problems, root)


def scan_dataset(root: Path, validate: bool = False) -> ScanResult:
    """List every image of the dataset folder ``root`` with its parsed annotation.

    Args:
        root: the dataset folder, in any layout of the module docstring.
        validate: also check every annotation (see
            :func:`lumbardx.data.validate.validate_annotation`); an invalid one is reported in
            ``problems`` (one error per problem, naming the label file, or for COCO the image)
            and its record's ``annotation`` is set to ``None``.

    Returns:
        One :class:`Record` per image file. A missing label file is not a problem
        (``label_path`` and ``annotation`` are ``None``); an unusable one is (``annotation``
        is ``None``), and so is a label file without an image.

    Raises:
        InputError: ``root`` is not a dataset folder (see :func:`detect_format`) or its class
            list (``data.yaml``) is unusable.
    """
    root = Path(root)
    fmt = detect_format(root)
    scan = {"yolo": _scan_yolo, "voc": _scan_voc, "coco": _scan_coco}[fmt](root)
    if validate:
        names = scan.class_names if scan.class_names else None
        for rec in scan.records:
            if rec.annotation is None:
                continue
            found = annotation_problems(rec.annotation, names)
            if found and fmt == "coco":
                where = f"in {rec.label_path.name if rec.label_path else ''}: "
                scan.problems += [AnnotationError(rec.image_path, where + p) for p in found]
            elif found:
                scan.problems += [AnnotationError(rec.label_path, p) for p in found]
            if found:
                rec.annotation = None
    return scan


# -- writing ---------------------------------------------------------------------------------


def _check_destination(src: Path | None, dst: Path, overwrite: bool) -> None:
    d = dst.resolve()
    if src is not None:
        s = src.resolve()
        if d == s or s in d.parents or d in s.parents:
            raise InputError(dst, f"the destination must lie outside the source {src} "
                                  "(and not contain it)")
    if d.exists() and not d.is_dir():
        raise InputError(dst, "the destination exists and is not a folder")
    if d.is_dir() and any(d.iterdir()) and not overwrite:
        raise InputError(dst, "the destination folder is not empty (pass overwrite=True, "
                              "--overwrite on the command line, to write into it)")


def _relative_image_path(image: Path, root: Path | None) -> Path:
    """The image path below the source's image folder (``images/a/x.png`` -> ``a/x.png``)."""
    if root is None:
        return Path(image.name)
    rel = image.relative_to(root)
    if len(rel.parts) > 1 and rel.parts[0] in _IMAGE_DIRS:
        rel = Path(*rel.parts[1:])
    return rel


def _unwritable(shown: Path, rel: Path, ann: ImageAnnotation | None, to: str) -> str | None:
    """Why format ``to`` cannot hold the annotation ``ann`` of the image ``rel`` (below
    ``images/``), or ``None`` when it can (always when there is no annotation to write).

    VOC stores the image's path (``shown``) and COCO its ``file_name`` (``rel``) as UTF-8 text,
    which a file name holding other bytes (possible on Linux) cannot be written as. Every
    format writes the class names, which must be usable (:func:`name_problem`).
    """
    if ann is None:
        return None
    text = str(shown.resolve()) if to == "voc" else rel.as_posix() if to == "coco" else ""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"its file name is not valid UTF-8, which a {to.upper()} file cannot hold"
    for i, box in enumerate(ann.boxes, start=1):
        problem = name_problem(box.label)
        if problem is not None:
            return f"object {i} ({box.label!r}): {problem}"
    return None


def write_dataset(
    scan: ScanResult,
    dst: Path,
    to: str,
    copy_images: bool = True,
    overwrite: bool = False,
) -> ConvertSummary:
    """Write the scanned dataset to ``dst`` in format ``to`` (layouts: module docstring).

    Args:
        scan: what :func:`scan_dataset` returned (validated or not: boxes are written as
            they are).
        dst: the new dataset folder; must not be, contain or lie inside ``scan.root``.
        to: ``"voc"``, ``"yolo"`` or ``"coco"``.
        copy_images: copy the images to ``dst/images/`` (else write only the labels; VOC
            ``<path>`` then points at the source image).
        overwrite: allow a non-empty ``dst`` (files of the same name are replaced, others kept).

    Returns:
        A :class:`ConvertSummary`; images with an unusable annotation, those format ``to``
        cannot hold (a file name that is not UTF-8 for VOC and COCO, a class name with control
        characters) and label file names that two images would share are left out and listed in
        ``problems``.

    Raises:
        InputError: unknown ``to``, or a refused destination.
    """
    if to not in FORMATS:
        raise InputError(None, f"unknown annotation format {to!r}: use one of {', '.join(FORMATS)}")
    dst = Path(dst)
    _check_destination(scan.root, dst, overwrite)
    names = [name for name in dict.fromkeys(
        [*scan.class_names]
        + [b.label for r in scan.records if r.annotation for b in r.annotation.boxes]
    ) if name_problem(name) is None]
    summary = ConvertSummary(scan.format, to, dst, names)
    image_out, seen = dst / "images", set()
    coco_anns: list[ImageAnnotation] = []
    coco_files: list[str] = []
    for rec in scan.records:
        if rec.annotation is None and rec.label_path is not None:
            summary.problems.append(
                InputError(rec.image_path, "left out: its annotation could not be used")
            )
            continue
        rel = _relative_image_path(rec.image_path, scan.root)
        key = rel.with_suffix("").as_posix()
        if key in seen:
            summary.problems.append(InputError(
                rec.image_path, f"left out: another image already uses the label name {key!r}"))
            continue
        target = image_out / rel
        shown = target if copy_images else rec.image_path
        problem = _unwritable(shown, rel, rec.annotation, to)
        if problem is not None:
            summary.problems.append(InputError(rec.image_path, f"left out: {problem}"))
            continue
        seen.add(key)
        if copy_images:
            atomic_copy(rec.image_path, target)
        summary.images += 1
        if rec.annotation is None:
            continue
        ann = replace(rec.annotation, filename=rel.name, folder=shown.parent.name,
                      path=str(shown.resolve()), extra=dict(rec.annotation.extra))
        try:
            if to == "yolo":
                yolo.write_yolo(ann, dst / "labels" / rel.with_suffix(".txt"), names)
            elif to == "voc":
                voc.write_voc(ann, dst / "annotations" / rel.with_suffix(".xml"))
            else:
                coco_anns.append(ann)
                coco_files.append(rel.as_posix())
        except InputError as e:
            summary.problems.append(InputError(rec.image_path, f"left out: {e.problem}"))
            continue
        summary.labelled += 1
        summary.boxes_per_class.update(b.label for b in ann.boxes)
    dst.mkdir(parents=True, exist_ok=True)
    if to == "yolo":
        yolo.write_data_yaml(dst / "data.yaml", names)
    elif to == "voc":
        write_text_atomic(dst / "classes.txt", "".join(n + "\n" for n in names))
    else:
        coco.write_coco(dst / "annotations" / "instances.json", coco_anns, names,
                        file_names=coco_files)
    return summary


def convert_dataset(src: Path, dst: Path, to: str, overwrite: bool = False) -> ConvertSummary:
    """Convert the dataset folder ``src`` to format ``to`` in the new folder ``dst``.

    The source is scanned with validation, so invalid annotations are reported and their images
    left out rather than written as broken labels; images are copied to ``dst/images/``.

    Returns:
        A :class:`ConvertSummary` whose ``problems`` hold the source's problems first.

    Raises:
        InputError: ``src`` is not a dataset, ``to`` is unknown, or ``dst`` is refused (the
            source itself, nested with it, or not empty without ``overwrite``).
    """
    if to not in FORMATS:
        raise InputError(None, f"unknown annotation format {to!r}: use one of {', '.join(FORMATS)}")
    _check_destination(Path(src), Path(dst), overwrite)
    scan = scan_dataset(Path(src), validate=True)
    summary = write_dataset(scan, Path(dst), to, copy_images=True, overwrite=overwrite)
    summary.problems = [*scan.problems, *summary.problems]
    return summary
