"""A model as a reader: predictions on a labelled set -> READS and TRUTH rows at disc level.

Inputs:

* predictions: a COCO-style JSON object with ``images`` (``id``, ``file_name``, ``width``,
  ``height``), ``categories`` (``id``, ``name``) and ``annotations`` (``image_id``,
  ``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels, ``score``); category names are mapped
  to the study classes with :func:`lumbardx.data.classes.study_map` (others are dropped).
* a labelled dataset folder in any format :func:`lumbardx.data.convert.scan_dataset` reads;
  its classes mapped the same way.

Per image, the ground-truth discs come from :func:`lumbardx.clinical.findings.build_findings`
(their level names are the ``site``; an ``"?"`` level becomes ``disc<k>``), the predicted discs
from the same function with the class thresholds, and each ground-truth disc is matched to the
predicted disc at the same place along the ground-truth spine curve
(:func:`lumbardx.clinical.findings.match_discs`: arc-length distance under half the local
inter-disc spacing, one-to-one). ``truth`` is the ground-truth disc's status and ``call`` the
matched predicted disc's status; an unmatched ground-truth disc is called ``normal`` (the
reader did not flag it). Predicted discs matching no ground-truth disc are counted as
``unmatched_predictions`` (a reader study scores the reference discs only).

``case`` is the patient id from the dataset's ``patients.csv`` when present, else the image
stem. A patient with several images (T1 and T2 of one exam carry the same boxes) is read once:
from its T2 image when the table gives sequences, else from its first image by path; the other
images are listed in ``skipped``. Columns follow :mod:`lumbardx.clinical.readerstudy`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lumbardx.clinical.findings import boxes_from_annotation, build_findings, match_discs
from lumbardx.clinical.readerstudy import READS_COLUMNS, TRUTH_COLUMNS
from lumbardx.clinical.thresholds import DEFAULT_THRESHOLDS
from lumbardx.data.boxes import Box
from lumbardx.data.classes import study_map
from lumbardx.data.convert import Record, scan_dataset
from lumbardx.data.errors import InputError
from lumbardx.data.patients import PATIENTS_CSV, read_patients_csv


@dataclass
class ReadsResult:
    """Rows for the reader study and what happened on the way.

    Attributes:
        reads: rows ``{reader, case, site, call}``.
        truth: rows ``{case, site, truth}``.
        images: images read.
        unmatched_predictions: predicted discs that matched no ground-truth disc.
        skipped: ``"<image>: <why>"`` for images left out.
        problems: unusable inputs (label files, prediction entries), each naming its file.
    """

    reads: list[dict[str, str]] = field(default_factory=list)
    truth: list[dict[str, str]] = field(default_factory=list)
    images: int = 0
    unmatched_predictions: int = 0
    skipped: list[str] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)


def _need(obj: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(path, f"{where}: missing field {key!r}")
    return obj[key]


def load_predictions(path: str | Path) -> tuple[dict[str, list[Box]], dict[str, tuple[int, int]]]:
    """Read a COCO-style predictions file.

    Returns:
        ``file_name -> boxes`` (study class names, scores) and ``file_name -> (W, H)``.

    Raises:
        InputError: unreadable file, missing fields, unknown ids, bad boxes or scores.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read predictions JSON: {err}") from err
    for key in ("images", "categories", "annotations"):
        if not isinstance(_need(data, key, "top level", path), list):
            raise InputError(path, f"{key!r} must be a list")
    cmap = study_map()
    cats = {int(_need(c, "id", f"categories[{i}]", path)):
            cmap.target(str(_need(c, "name", f"categories[{i}]", path)))
            for i, c in enumerate(data["categories"])}
    names: dict[int, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, im in enumerate(data["images"]):
        where = f"images[{i}]"
        name = str(PurePosixPath(str(_need(im, "file_name", where, path)).replace("\\", "/")))
        names[int(_need(im, "id", where, path))] = name
        sizes[name] = (int(_need(im, "width", where, path)), int(_need(im, "height", where, path)))
    boxes: dict[str, list[Box]] = {n: [] for n in sizes}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        img = int(_need(ann, "image_id", where, path))
        cat = int(_need(ann, "category_id", where, path))
        if img not in names:
            raise InputError(path, f"{where}: image_id {img} is not in 'images'")
        if cat not in cats:
            raise InputError(path, f"{where}: category_id {cat} is not in 'categories'")
        bbox, score = _need(ann, "bbox", where, path), _need(ann, "score", where, path)
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)) or bbox[2] <= 0 or bbox[3] <= 0:
            raise InputError(path, f"{where}: bbox must be [x, y, w, h] with w, h > 0, "
                                   f"got {bbox!r}")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise InputError(path, f"{where}: score must be a number in [0, 1], got {score!r}")
        label = cats[cat]
        if label is None:
            continue
        x, y, w, h = map(float, bbox)
        boxes[names[img]].append(Box(label, x, y, x + w, y + h, score=float(score)))
    return boxes, sizes


def _relative(rec: Record, root: Path) -> str:
    rel = rec.image_path.relative_to(root) if rec.image_path.is_relative_to(root) else \
        Path(rec.image_path.name)
    return rel.as_posix()


def _pred_key(rel: str, preds: Mapping[str, list[Box]],
              by_name: Mapping[str, str | None]) -> str | None:
    """Find an image's predictions by path below the root, below ``images/``, or by name."""
    for key in (rel, rel.split("/", 1)[1] if rel.startswith("images/") else rel):
        if key in preds:
            return key
    return by_name.get(PurePosixPath(rel).name)


def reads_from_predictions(preds_path: str | Path, data: str | Path, reader: str = "AI",
                           thresholds: Mapping[str, float] | None = None) -> ReadsResult:
    """Build READS and TRUTH rows (rules in the module docstring).

    Args:
        preds_path: the predictions JSON.
        data: the labelled dataset folder.
        reader: the reader name written in READS.
        thresholds: class -> threshold (:data:`DEFAULT_THRESHOLDS` when ``None``).

    Raises:
        InputError: unreadable predictions or dataset folder.
    """
    root = Path(data)
    preds, _ = load_predictions(preds_path)
    by_name: dict[str, str | None] = {}
    for key in preds:
        name = PurePosixPath(key).name
        by_name[name] = None if name in by_name else key
    scan = scan_dataset(root)
    result = ReadsResult(problems=list(scan.problems))
    table = read_patients_csv(root / PATIENTS_CSV) if (root / PATIENTS_CSV).is_file() else None
    chosen: dict[str, tuple[int, Record, str]] = {}
    for rec in scan.records:
        rel = _relative(rec, root)
        if rec.annotation is None:
            result.skipped.append(f"{rel}: no usable annotation")
            continue
        info = table.lookup(rel) if table else None
        if table is not None and info is None:
            result.problems.append(InputError(table.path, f"image {rel!r} is not listed"))
        case = info.patient if info else PurePosixPath(rel).stem
        rank = 0 if info is not None and (info.sequence or "").upper() == "T2" else 1
        if case in chosen and chosen[case][0] <= rank:
            result.skipped.append(f"{rel}: patient {case} is read from {chosen[case][2]}")
            continue
        if case in chosen:
            result.skipped.append(f"{chosen[case][2]}: patient {case} is read from {rel}")
        chosen[case] = (rank, rec, rel)

    thr = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    cmap = study_map()
    for case, (_, rec, rel) in sorted(chosen.items()):
        ann = rec.annotation
        assert ann is not None
        size = (ann.width, ann.height)
        key = _pred_key(rel, preds, by_name)
        if key is None:
            result.skipped.append(f"{rel}: no predictions entry for this image")
            continue
        gt = build_findings(boxes_from_annotation(ann, cmap), size)
        pred = build_findings(preds[key], size, thresholds=thr, default_threshold=0.25)
        match = match_discs(gt, pred)
        result.images += 1
        result.unmatched_predictions += len(pred.discs) - sum(m is not None for m in match)
        seen: set[str] = set()
        for k, (disc, j) in enumerate(zip(gt.discs, match)):
            site = disc.level if disc.level != "?" and disc.level not in seen else f"disc{k + 1}"
            seen.add(site)
            call = pred.discs[j].status if j is not None else "normal"
            result.truth.append({"case": case, "site": site, "truth": disc.status})
            result.reads.append({"reader": reader, "case": case, "site": site, "call": call})
    return result


def write_reads(result: ReadsResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``reads.csv`` and ``truth.csv`` into folder ``out`` (created); returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "reads.csv", out / "truth.csv")
    for path, cols, rows in ((paths[0], READS_COLUMNS, result.reads),
                             (paths[1], TRUTH_COLUMNS, result.truth)):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(cols))
            writer.writeheader()
            writer.writerows(rows)
    return paths
