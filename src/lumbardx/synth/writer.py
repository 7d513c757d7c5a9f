"""Write a synthetic data set: per case PNG + Pascal VOC XML + ground-truth JSON (+ DICOM series),
and one ``ground_truth.csv`` (a row per disc in view) and ``manifest.json`` for the set.

Layout of ``OUT`` (LabelImg with "Open Dir" ``images/`` and "Change Save Dir" ``annotations/``,
which ``lumbardx data check`` / ``lumbardx train`` read as a VOC dataset)::

    images/case_00000.png        annotations/case_00000.xml     truth/case_00000.json
    [dicom/case_00000/IM_0001.dcm ...]   classes.txt   patients.csv   ground_truth.csv   manifest.json

The DICOM series sit outside ``images/``, so they are studies to diagnose, not training images.

Case ``i`` draws from ``np.random.SeedSequence(seed).spawn(n)[i]``, so a case depends only on
``seed`` and ``i`` (not on ``n``), and the same seed gives byte-identical PNG, XML, JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lumbardx import __version__
from lumbardx.data.classes import STUDY_CLASSES
from lumbardx.data.errors import InputError
from lumbardx.data.voc import write_voc
from lumbardx.io import atomic_write_bytes
from lumbardx.synth.anatomy import SynthConfig
from lumbardx.synth.case import SynthCase, generate_case

CSV_COLUMNS = ("case", "image", "level", "status", "box_labels", "x1", "y1", "x2", "y2",
               "centre_x", "centre_y", "pixel_spacing_mm", "pfirrmann", "herniation_type",
               "herniation_extent_mm", "slip_percent", "meyerding_grade")


def case_name(index: int) -> str:
    """File stem of case ``index``: ``case_00000``."""
    return f"case_{index:05d}"


def _write_bytes(path: Path, data: bytes) -> None:
    """Atomic write (:func:`lumbardx.io.atomic_write_bytes`) so an interrupted run leaves no
    half file; a failure is an :class:`InputError` naming the file."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise InputError(path, f"cannot write the file: {e.strerror or e}") from None


def png_bytes(image: np.ndarray) -> bytes:
    """8-bit grayscale PNG of ``image`` uint8 ``[H, W]`` (deterministic encoder settings)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def truth_path(image_path: Path) -> Path:
    """The ground-truth JSON of a synthetic image ``OUT/images/<case>.png``."""
    return image_path.parent.parent / "truth" / f"{image_path.stem}.json"


def write_case(case: SynthCase, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``images/<name>.png``, ``annotations/<name>.xml`` and ``truth/<name>.json`` into
    ``out``; returns the manifest entry (paths relative to ``out``)."""
    name = case.name
    for sub in ("images", "annotations", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    case.annotation.folder = "images"  # LabelImg writes the image folder's name
    case.annotation.path = f"images/{name}.png"
    _write_bytes(out / "images" / f"{name}.png", png_bytes(case.image))
    write_voc(case.annotation, out / "annotations" / f"{name}.xml")
    truth = {"generator": "lumbardx.synth", "version": __version__, **meta, **case.truth}
    _write_bytes(out / "truth" / f"{name}.json", (json.dumps(truth, indent=2) + "\n").encode())
    return {"case": name, "patient": name, "image": f"images/{name}.png",
            "voc": f"annotations/{name}.xml", "truth": f"truth/{name}.json", "dicom": None, "width": case.view.width,
            "height": case.view.height, "pixel_spacing_mm": case.pixel_spacing[0],
            "levels": case.truth["levels_in_view"], "sacrum_visible": case.truth["sacrum_visible"],
            "boxes": dict(Counter(b.label for b in case.annotation.boxes))}


def csv_rows(case: SynthCase) -> list[dict[str, Any]]:
    """One ``ground_truth.csv`` row per disc in view (see :data:`CSV_COLUMNS`)."""
    slips = {li["level"]: li for li in case.truth["listheses"]}
    rows = []
    for d in case.truth["discs"]:
        her = d["herniation"] or {}
        li = slips.get(d["level"], {})
        x1, y1, x2, y2 = d["box"]
        rows.append({"case": case.name, "image": f"images/{case.name}.png", "level": d["level"],
                     "status": d["status"], "box_labels": ";".join(d["boxes"]),
                     "x1": x1, "y1": y1, "x2": x2, "y2": y2, "centre_x": d["centre_px"][0],
                     "centre_y": d["centre_px"][1], "pixel_spacing_mm": case.pixel_spacing[0],
                     "pfirrmann": d["pfirrmann"], "herniation_type": her.get("type", ""),
                     "herniation_extent_mm": her.get("extent_mm", ""),
                     "slip_percent": li.get("slip_percent", ""),
                     "meyerding_grade": li.get("grade", "")})
    return rows


def generate_dataset(out: Path, n: int, seed: int, dicom: bool = False,
                     config: SynthConfig | None = None, t1: bool = False,
                     on_case: Callable[[int, SynthCase], None] | None = None,
                     on_error: Callable[[str, Exception], None] | None = None) -> list[Path]:
    """Generate ``n`` cases into ``out`` (created if needed); returns the PNG paths written.

    Args:
        out: output folder.
        n: number of cases (>= 1).
        seed: master seed; case ``i`` uses ``SeedSequence(seed).spawn(n)[i]``.
        dicom: also write each case as a sagittal MR series under ``out/dicom/<case>/``.
        config: sampling settings (defaults: :class:`SynthConfig`).
        t1: with ``dicom``, write each study as two co-registered series, T2 in
            ``out/dicom/<case>/t2/`` and its co-registered T1 series in ``out/dicom/<case>/t1/``
            (:func:`lumbardx.synth.dicom_series.write_dicom_series`), so that a detector
            trained on T1/T2 pairs reads them together.
        on_case: called after each case is written (progress display).
        on_error: called with the case name and the error when a case cannot be written; the
            run then continues with the next case. Without it the error is raised.

    Raises:
        InputError: ``out`` is not a usable folder, ``n < 1``, or a file cannot be written.
    """
    out = Path(out)
    if n < 1:
        raise InputError(None, f"the number of cases must be at least 1, not {n}")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the folder: {e.strerror or e}") from None
    cfg = config or SynthConfig()
    written: list[Path] = []
    entries: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        name = case_name(i)
        try:
            case = generate_case(np.random.default_rng(child), cfg, name)
            entry = write_case(case, out, {"seed": seed, "index": i})
            if dicom:
                from lumbardx.synth.dicom_series import write_dicom_series

                if t1:
                    write_dicom_series(case, out / "dicom" / name / "t2", cfg)
                    write_dicom_series(case, out / "dicom" / name / "t1", cfg, weighting="T1")
                else:
                    write_dicom_series(case, out / "dicom" / name, cfg)
                entry["dicom"] = f"dicom/{name}"
        except (InputError, OSError) as e:
            if on_error is None:
                raise
            on_error(name, e)
            continue
        entries.append(entry)
        rows += csv_rows(case)
        written.append(out / "images" / f"{name}.png")
        if on_case is not None:
            on_case(i, case)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_bytes(out / "ground_truth.csv", buf.getvalue().encode())
    _write_bytes(out / "classes.txt", ("\n".join(STUDY_CLASSES) + "\n").encode())
    patients = "image,patient,sequence\n" + "".join(
        f"{e['case']}.png,{e['patient']},T2\n" for e in entries)
    _write_bytes(out / "patients.csv", patients.encode())
    manifest = {"generator": "lumbardx.synth", "version": __version__, "seed": seed, "n": n,
                "dicom": dicom, "classes": list(STUDY_CLASSES), "config": asdict(cfg),
                "cases": entries}
    _write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return written
