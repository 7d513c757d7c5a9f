"""Patient identifiers for the images of a dataset.

Images of one patient (T1 and T2 of the same exam, neighbouring slices) must stay in the same
cross-validation fold, or the scores leak. Patient ids come from, in order of preference:

1. a CSV table with columns ``image``, ``patient`` and optionally ``sequence`` (``T1``, ``T2``,
   ...). ``image`` is matched on the image's path relative to the dataset root first and on its
   file name second. A ``patients.csv`` at the dataset root is used automatically.
2. a file-name regular expression with a named group ``patient`` (and optionally ``sequence``),
   e.g. ``r"_(?P<patient>\\d{4})_\\d{3}_"``, searched (``re.search``) in the file name.
3. nothing: every image is its own patient, and a warning says that patient grouping is
   impossible (folds may then leak between images of one patient).

An image that the table does not list (or whose name the pattern does not match) is a reported
problem; it falls back to the pattern when one is given, and to its own image id otherwise.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lumbardx.data.errors import InputError

PATIENTS_CSV = "patients.csv"


@dataclass(frozen=True)
class PatientInfo:
    """Patient and (when known) MRI sequence of one image.

    Attributes:
        patient: patient identifier as written in the source (kept as text: ``"0002"``).
        sequence: sequence name such as ``"T2"``, or ``None`` when unknown.
    """

    patient: str
    sequence: str | None = None


@dataclass
class PatientTable:
    """A patients CSV read into memory.

    Attributes:
        path: the CSV file.
        rows: the ``image`` column as written -> patient info.
        by_name: file name (last path component of ``image``) -> patient info; names that
            occur twice with different patients are left out (matched by full path only).
    """

    path: Path
    rows: dict[str, PatientInfo]
    by_name: dict[str, PatientInfo]

    def lookup(self, image_id: str) -> PatientInfo | None:
        """Patient of the image with id (path relative to the dataset root) ``image_id``."""
        info = self.rows.get(image_id)
        if info is None:
            info = self.by_name.get(Path(image_id).name)
        return info


@dataclass
class PatientAssignment:
    """Patient and sequence for every image of a dataset, in the order given.

    Attributes:
        patients: patient id per image.
        sequences: sequence per image (``None`` when unknown).
        source: ``"csv"``, ``"pattern"`` or ``"none"`` (each image its own patient).
        table: the CSV file used, when any.
        problems: images missing from the table or not matched by the pattern.
        extra_rows: ``image`` entries of the table that name no image of the dataset.
        warnings: statements about the grouping as a whole (e.g. that it is impossible).
    """

    patients: list[str]
    sequences: list[str | None]
    source: str
    table: Path | None = None
    problems: list[InputError] = field(default_factory=list)
    extra_rows: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def grouped(self) -> bool:
        """Whether patient ids come from a table or a pattern (not one patient per image)."""
        return self.source != "none"


def read_patients_csv(path: Path) -> PatientTable:
    """Read a patients CSV (columns ``image``, ``patient``, optional ``sequence``).

    Column names are matched case-insensitively; extra columns are ignored.

    Raises:
        InputError: the file cannot be read, lacks a required column, or has rows without
            image or patient or listing one image twice with different patients (every such
            row in one error, ``InputError.problems``).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip().lower(): name for name in reader.fieldnames or []}
            missing = [col for col in ("image", "patient") if col not in header]
            if missing:
                raise InputError(
                    path,
                    f"patients table lacks column(s) {', '.join(missing)}; "
                    f"expected image, patient and optionally sequence (found: "
                    f"{', '.join(header.values()) or 'no header'})",
                )
            raw = list(reader)
    except OSError as err:
        raise InputError(path, f"cannot read patients table: {err}") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"patients table is not a readable CSV file: {err}") from err

    rows: dict[str, PatientInfo] = {}
    names: dict[str, PatientInfo | None] = {}
    problems: list[str] = []  # every faulty row, refused together (InputError.of)
    for line, row in enumerate(raw, start=2):
        image = (row.get(header["image"]) or "").strip()
        patient = (row.get(header["patient"]) or "").strip()
        sequence = (row.get(header["sequence"]) or "").strip() if "sequence" in header else ""
        if not image or not patient:
            problems.append(f"line {line}: empty image or patient")
            continue
        info = PatientInfo(patient, sequence or None)
        key = image.replace("\\", "/")
        if key in rows and rows[key].patient != patient:
            problems.append(f"line {line}: image {image!r} is listed with two patients "
                            f"({rows[key].patient!r} and {patient!r})")
            continue
        rows[key] = info
        name = Path(key).name
        if name in names and (names[name] is None or names[name] != info):
            names[name] = None  # ambiguous by file name: full path required
        else:
            names[name] = info
    if problems:
        raise InputError.of(path, problems)
    by_name = {name: info for name, info in names.items() if info is not None}
    return PatientTable(path=path, rows=rows, by_name=by_name)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a patient file-name pattern; it must have a named group ``patient``.

    Raises:
        InputError: the pattern is not a valid regular expression or has no ``patient`` group.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(None, f"patient pattern {pattern!r} is not a valid regex: {err}") from err
    if "patient" not in regex.groupindex:
        raise InputError(
            None, f"patient pattern {pattern!r} needs a named group (?P<patient>...)"
        )
    return regex


def match_pattern(regex: re.Pattern[str], image_id: str) -> PatientInfo | None:
    """Patient (and sequence, if the pattern has that group) from an image's file name."""
    found = regex.search(Path(image_id).name)
    if found is None or not found.group("patient"):
        return None
    sequence = found.group("sequence") if "sequence" in regex.groupindex else None
    return PatientInfo(found.group("patient"), sequence or None)


def assign_patients(
    image_ids: Sequence[str],
    root: Path,
    patients: Path | None = None,
    patient_pattern: str | None = None,
) -> PatientAssignment:
    """Patient and sequence of every image.

    Args:
        image_ids: image paths relative to ``root`` (``/``-separated).
        root: the dataset root; its ``patients.csv`` is used when ``patients`` is ``None``.
        patients: a patients CSV (see :func:`read_patients_csv`).
        patient_pattern: a regex with a named group ``patient`` matched on file names.

    Raises:
        InputError: the CSV or the pattern is unusable (see the readers above).
    """
    root = Path(root)
    table_path = patients
    if table_path is None and (root / PATIENTS_CSV).is_file():
        table_path = root / PATIENTS_CSV
    table = read_patients_csv(table_path) if table_path is not None else None
    regex = compile_pattern(patient_pattern) if patient_pattern else None

    if table is None and regex is None:
        return PatientAssignment(
            patients=list(image_ids),
            sequences=[None] * len(image_ids),
            source="none",
            warnings=[
                f"{root}: no patients table and no patient pattern: each image is treated as "
                "its own patient, so images of one patient cannot be kept in one fold"
            ],
        )

    out = PatientAssignment(
        patients=[],
        sequences=[],
        source="csv" if table is not None else "pattern",
        table=table_path,
    )
    used: set[str] = set()
    for image_id in image_ids:
        info: PatientInfo | None = None
        if table is not None:
            info = table.lookup(image_id)
            if info is None:
                out.problems.append(
                    InputError(root / image_id, f"image is missing from {table.path.name}")
                )
            else:
                used.add(image_id if image_id in table.rows else Path(image_id).name)
        if info is None and regex is not None:
            info = match_pattern(regex, image_id)
            if info is None:
                out.problems.append(
                    InputError(
                        root / image_id,
                        f"file name does not match the patient pattern {patient_pattern!r}",
                    )
                )
        if info is None:
            info = PatientInfo(image_id)
        out.patients.append(info.patient)
        out.sequences.append(info.sequence)
    if table is not None:
        out.extra_rows = [
            key for key in table.rows if key not in used and Path(key).name not in used
        ]
    return out
