"""``check_dataset``: what a dataset folder holds and every problem in it, file by file.

The report lists images, patients, boxes per class, the distribution of image sizes, MRI
sequences (when a patients table gives them) and every problem with the file it concerns.

Problems have a severity. ``error``: the file cannot be used as it is or scores would be wrong
(unreadable image, missing or unusable label file, invalid box, unknown class, image missing from
the patients table, identical images of two different patients, label file without image,
annotated size differing from the image). ``warning``: legitimate but worth a look (empty label
= "no findings", identical images of one patient, patients-table rows naming no image, no
patient grouping at all, a PNG / JPEG with an EXIF orientation: training reads its stored
pixels, as LabelImg shows them, while viewers and some annotation tools turn it). For identical
images the message also says which boxes of one have no same-class box of the other at IoU >=
0.5: one of the two annotations is then incomplete or wrong (boxes redrawn a few pixels apart
agree).

Image check, decided for reliability over speed: every image is fully decoded with
:func:`lumbardx.data.images.read_image`, the same reader training and inference use, so a file
that passes will load later. A header check or PIL's ``verify()`` would miss truncated JPEG data
(``verify()`` does not decode JPEG scans). Decoding the 832 PNGs of 384x384 of the development
set takes about 2 s. Duplicates are found by the SHA-1 of the file bytes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lumbardx.data.classes import IGNORE_LABEL, IGNORED, build_class_map
from lumbardx.data.convert import scan_dataset
from lumbardx.data.dataset import map_annotation
from lumbardx.data.errors import ImageReadError, InputError
from lumbardx.data.images import EXIF_ORIENTATIONS, file_exif_orientation, read_image
from lumbardx.data.patients import assign_patients
from lumbardx.data.validate import annotation_problems

Severity = Literal["error", "warning"]

# Problem kinds (stable names, used in JSON output and tests).
UNREADABLE_IMAGE = "unreadable image"
MISSING_LABEL = "missing label"
UNUSABLE_LABEL = "unusable label"
EMPTY_LABEL = "empty label"
OUT_OF_BOUNDS = "box out of bounds"
ZERO_AREA = "zero-area box"
INVALID_BOX = "invalid box"
UNKNOWN_CLASS = "unknown class"
DUPLICATE_IMAGE = "duplicate image"
LABEL_WITHOUT_IMAGE = "label without image"
SIZE_MISMATCH = "size mismatch"
NOT_IN_PATIENTS = "missing from patients table"
EXTRA_PATIENT_ROW = "patients row without image"
NO_PATIENTS = "no patient grouping"
EXIF_ROTATED = "EXIF orientation"
DATASET = "dataset"


@dataclass
class Problem:
    """One problem found by :func:`check_dataset`.

    Attributes:
        severity: ``"error"`` or ``"warning"`` (see module docstring).
        kind: one of the kind constants of this module (e.g. ``"box out of bounds"``).
        path: the file concerned (``None`` for dataset-wide problems).
        message: what is wrong, in words a user can act on.
    """

    severity: Severity
    kind: str
    path: Path | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"[{self.severity}] {self.kind}: {where}{self.message}"


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: the dataset folder; format: ``"voc"``, ``"yolo"`` or ``"coco"``.
        class_names: the classes counted (after the class mapping).
        images: number of image files.
        patients: number of distinct patients (each image its own patient when unknown).
        patient_source: ``"csv"``, ``"pattern"`` or ``"none"``.
        boxes_per_class: class -> boxes, over every readable annotation (after mapping).
        dropped_per_class: source class -> boxes the mapping drops.
        image_sizes: ``"WxH"`` -> number of images (decoded size), most common first.
        sequences: sequence -> images, when the patients table gives sequences.
        problems: every problem, in the order found.
    """

    root: Path
    format: str
    class_names: list[str]
    images: int = 0
    patients: int = 0
    patient_source: str = "none"
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    dropped_per_class: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def boxes(self) -> int:
        """Total boxes counted (after mapping)."""
        return sum(self.boxes_per_class.values())

    @property
    def errors(self) -> list[Problem]:
        """Error-level problems."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Warning-level problems."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error-level problem (warnings allowed)."""
        return not self.errors

    def problems_by_kind(self) -> dict[str, int]:
        """Kind -> number of problems."""
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        out = asdict(self)
        out["root"] = str(self.root)
        out["boxes"] = self.boxes
        out["problems"] = [
            {**asdict(p), "path": None if p.path is None else str(p.path)} for p in self.problems
        ]
        return out


def _classify_box_problem(message: str) -> str:
    """Kind of a problem sentence from :func:`lumbardx.data.validate.annotation_problems`."""
    if "unknown class" in message or "class name" in message:
        return UNKNOWN_CLASS
    if "zero width" in message or "zero height" in message:
        return ZERO_AREA
    if "outside the image" in message:
        return OUT_OF_BOUNDS
    return INVALID_BOX


def _classify_scan_problem(err: InputError) -> str:
    """Kind of a problem reported by :func:`lumbardx.data.convert.scan_dataset`."""
    if isinstance(err, ImageReadError):
        return UNREADABLE_IMAGE
    if "has no image" in err.problem or "image is not found" in err.problem:
        return LABEL_WITHOUT_IMAGE
    if err.path is not None and err.path.is_dir():
        return DATASET
    return UNUSABLE_LABEL


def sha1_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of the file's bytes."""
    digest = hashlib.sha1()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _unmatched(boxes: list[Any], others: list[Any], iou: float) -> list[Any]:
    """Boxes of ``boxes`` without a same-label box of ``others`` at IoU >= ``iou`` (greedy in
    order, each box of ``others`` used once)."""
    import torch
    from torchvision.ops import box_iou

    if not boxes or not others:
        return list(boxes)

    def xyxy(bs: list[Any]) -> torch.Tensor:
        return torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in bs], dtype=torch.float64)

    overlap = box_iou(xyxy(boxes), xyxy(others))
    same = torch.tensor([[a.label == b.label for b in others] for a in boxes])
    overlap[~same] = 0.0
    used = torch.zeros(len(others), dtype=torch.bool)
    left = []
    for i, box in enumerate(boxes):
        row = overlap[i].masked_fill(used, 0.0)
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = True
        else:
            left.append(box)
    return left


def _boxes_differ(a: Any, b: Any, iou: float = 0.5) -> str:
    """How the boxes of two annotations of identical images disagree: boxes of one without a
    same-class box of the other at IoU >= ``iou`` (the evaluation's match), by class. ``""``
    when every box has its match (redrawn boxes a few pixels apart agree) or either annotation
    is unreadable."""
    if a is None or b is None:
        return ""
    only_a = Counter(box.label for box in _unmatched(a.boxes, b.boxes, iou))
    only_b = Counter(box.label for box in _unmatched(b.boxes, a.boxes, iou))
    if not only_a and not only_b:
        return ""

    def say(c: Counter[str]) -> str:
        return ", ".join(f"{n} {label}" for label, n in sorted(c.items())) or "none"

    return f"without a match at IoU {iou:g}: first {say(only_a)}; second {say(only_b)}"


def check_dataset(
    root: Path,
    classes: str | Mapping[str, str] = "all",
    patients: Path | None = None,
    patient_pattern: str | None = None,
) -> CheckReport:
    """Inventory and problems of the dataset folder ``root``.

    Args:
        root: dataset folder (VOC, YOLO or COCO layout, see :mod:`lumbardx.data.convert`).
        classes: class mapping for the box counts (``"all"``, ``"study"`` or a mapping);
            unknown classes are judged against the source's own class list.
        patients: patients CSV; ``root / patients.csv`` is used when present.
        patient_pattern: regex with a named group ``patient`` for file names.

    Raises:
        InputError: ``root`` is not a dataset folder, or the patients table/pattern is unusable.
    """
    root = Path(root)
    scan = scan_dataset(root, validate=False)
    class_map = build_class_map(classes, scan.class_names)
    report = CheckReport(root=root, format=scan.format, class_names=class_map.names)
    add = report.problems.append
    for err in scan.problems:
        kind = _classify_scan_problem(err)
        severity = "warning" if kind == DATASET else "error"
        for message in err.problems:  # every fault of the file, one row each
            add(Problem(severity, kind, err.path, message))

    ids = [rec.image_path.relative_to(root).as_posix() for rec in scan.records]
    assignment = assign_patients(ids, root, patients, patient_pattern)
    report.patient_source = assignment.source
    report.images = len(scan.records)
    report.patients = len(set(assignment.patients))
    if any(s is not None for s in assignment.sequences):
        report.sequences = dict(Counter(s or "unknown" for s in assignment.sequences))
    for err in assignment.problems:
        add(Problem("error", NOT_IN_PATIENTS, err.path, err.problem))
    for key in assignment.extra_rows:
        add(Problem("warning", EXTRA_PATIENT_ROW, assignment.table,
                    f"lists image {key!r}, which is not in the dataset"))
    for message in assignment.warnings:
        add(Problem("warning", NO_PATIENTS, None, message))

    known = scan.class_names or None
    boxes: Counter[str] = Counter({name: 0 for name in class_map.names})
    dropped: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    hashes: dict[str, list[int]] = {}
    reported_unreadable = {p.path for p in report.problems if p.kind == UNREADABLE_IMAGE}
    missing_label = (
        "not listed in the COCO file: the image is not annotated (list it with no "
        "annotations if it has no findings)"
        if scan.format == "coco"
        else "no label file: the image is not annotated (an image without findings needs an "
        "empty label file)"
    )
    for i, rec in enumerate(scan.records):
        ann = rec.annotation
        # A COCO file holds every image: name the image, and the file in the message.
        coco_file = scan.format == "coco" and rec.label_path is not None
        label = rec.image_path if coco_file else rec.label_path or rec.image_path
        where = f"in {rec.label_path.name}: " if coco_file and rec.label_path else ""
        if rec.label_path is None:
            add(Problem("error", MISSING_LABEL, rec.image_path, missing_label))
        elif ann is not None and not ann.boxes:
            add(Problem("warning", EMPTY_LABEL, label,
                        f"{where}no boxes (fine if the image truly has no findings)"))
        if ann is not None:
            for message in annotation_problems(ann, known):
                add(Problem("error", _classify_box_problem(message), label, where + message))
            _, labels, lost = map_annotation(ann, class_map)  # as training reads the file
            dropped.update(lost)
            boxes.update(IGNORED if i == IGNORE_LABEL else class_map.names[int(i)]
                         for i in labels)
        try:
            image = read_image(rec.image_path, max_side=None)  # boxes: full-size pixels
        except ImageReadError as err:
            if rec.image_path not in reported_unreadable:
                add(Problem("error", UNREADABLE_IMAGE, rec.image_path, err.problem))
            continue
        height, width = image.display.shape
        sizes[f"{width}x{height}"] += 1
        orientation = file_exif_orientation(rec.image_path)
        if orientation != 1:
            add(Problem("warning", EXIF_ROTATED, rec.image_path,
                        f"the file carries EXIF orientation {orientation} (viewers show it "
                        f"{EXIF_ORIENTATIONS[orientation]}); its boxes are read against the "
                        "stored pixels, as LabelImg draws them: check them on the overlay if "
                        "they were drawn in a tool that turns images by EXIF"))
        if ann is not None and (ann.width, ann.height) != (width, height):
            add(Problem("error", SIZE_MISMATCH, label,
                        f"annotation says {ann.width}x{ann.height} pixels but the image "
                        f"{rec.image_path.name} is {width}x{height}"))
        hashes.setdefault(sha1_of(rec.image_path), []).append(i)

    for digest, members in hashes.items():
        first = members[0]
        for other in members[1:]:
            same = assignment.patients[first] == assignment.patients[other]
            seq_a, seq_b = assignment.sequences[first], assignment.sequences[other]
            note = (
                f" (same patient {assignment.patients[first]!r}"
                if same
                else f" (different patients {assignment.patients[first]!r} and "
                f"{assignment.patients[other]!r}: the copies can fall into different folds"
            )
            if seq_a and seq_b and seq_a != seq_b:
                note += f"; sequences {seq_a} and {seq_b} differ, one is mislabelled"
            differ = _boxes_differ(scan.records[first].annotation,
                                   scan.records[other].annotation)
            if differ:
                note += f"; their boxes differ, {differ}: one annotation is incomplete or wrong"
            add(Problem("warning" if same else "error", DUPLICATE_IMAGE,
                        scan.records[other].image_path,
                        f"identical bytes (sha1 {digest[:12]}) to {ids[first]}{note})"))

    report.boxes_per_class = dict(boxes)
    report.dropped_per_class = dict(dropped)
    report.image_sizes = dict(sizes.most_common())
    return report
