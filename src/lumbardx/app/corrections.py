"""Reviewed studies as training data: LabelImg Pascal VOC beside de-identified image copies.

Layout (``DATA_DIR/corrections``; :func:`lumbardx.data.convert.scan_dataset` reads it as a VOC
dataset and ``lumbardx train DATA_DIR/corrections`` trains on it)::

    images/<study_key>.png          the 8-bit slice the model saw (uint8 [H, W], gray)
    annotations/<study_key>.xml     boxes accepted, edited or added by the reader
    classes.txt                     class order (the model's classes, one per line)
    patients.csv                    image,patient -- patient = keyed hash of the DICOM Patient
                                    ID (HMAC-SHA256 with DATA_DIR/secret.key, 16 hex digits),
                                    else the study key; slices of one patient share a fold

Boxes go through :func:`lumbardx.data.voc.write_voc` (1-based inclusive integer pixels).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from lumbardx.app.files import private_dir, write_private
from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.voc import write_voc


def patient_pseudonym(secret: bytes, patient_id: str | None, study_key: str) -> str:
    """De-identified patient id: HMAC-SHA256 of the Patient ID (16 hex), else ``study_key``."""
    if not patient_id:
        return study_key
    return hmac.new(secret, b"patient:" + patient_id.encode("utf-8"),
                    hashlib.sha256).hexdigest()[:16]


class CorrectionsWriter:
    """Writes reviewed studies into one corrections folder; thread-safe."""

    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = Path(root)
        self.secret = secret
        self._lock = threading.Lock()

    def _classes(self, classes: Sequence[str]) -> list[str]:
        path = self.root / "classes.txt"
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip()] if path.exists() else []
        merged = names + [c for c in classes if c not in names]
        if merged != names:
            write_private(path, ("\n".join(merged) + "\n").encode("utf-8"))
        return merged

    def _patients(self, image: str, patient: str) -> None:
        path = self.root / "patients.csv"
        rows: dict[str, str] = {}
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                rows = {r["image"]: r["patient"] for r in csv.DictReader(fh)}
        if rows.get(image) == patient:
            return
        rows[image] = patient
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "patient"])
        writer.writerows(sorted(rows.items()))
        write_private(path, buf.getvalue().encode("utf-8"))

    def write(self, study_key: str, image_png: Path, width: int, height: int,
              boxes: list[Box], classes: Sequence[str], patient_id: str | None) -> Path:
        """Write (or rewrite) one study; returns its annotation file."""
        with self._lock:
            images = private_dir(self.root / "images")
            annotations = private_dir(self.root / "annotations")
            self._classes(classes)
            target = images / f"{study_key}.png"
            if not target.exists():
                tmp = images / f".{study_key}.png.tmp"
                shutil.copyfile(image_png, tmp)
                tmp.replace(target)
            ann = ImageAnnotation(filename=target.name, width=width, height=height, depth=1,
                                  boxes=boxes, folder="images",
                                  database="lumbardx corrections")
            xml = annotations / f"{study_key}.xml"
            write_voc(ann, xml)
            self._patients(f"images/{target.name}",
                           patient_pseudonym(self.secret, patient_id, study_key))
            return xml
