"""Coded concepts that lumbardx writes into DICOM results: findings, disc levels, measurements.

Standard codes come from SNOMED CT (``SCT``), DICOM (``DCM``) and UCUM, mostly through
:data:`pydicom.sr.codedict.codes`. Where no standard concept was found (or none could be
verified) a local code of the private coding scheme :data:`LOCAL_SCHEME` (``99LUMBARDX``) is
used; its meaning states what it is, and the SR header describes the scheme (Coding Scheme
Identification Sequence, PS3.3 C.12.1), as DICOM asks of private schemes.

Finding types (checked against published SNOMED CT value sets):

* ``herniation`` -> SCT 73589001 "Herniation of intervertebral disc". lumbardx's herniation class
  also takes disc *bulges* from sources that label them apart (yolospine-dev ``Lumbar Disc Bulge
  (LDB)``, see :mod:`lumbardx.data.classes`); the code follows the class, not the NASS/ASSR
  distinction between bulge and herniation. (SCT 76107001, sometimes quoted for lumbar disc
  herniation, is "Spinal stenosis", used for ``stenosis`` below.)
* ``spondylolisthesis`` -> SCT 274152003 "Spondylolisthesis".
* ``normal`` -> local ``NORMAL-DISC``: no herniation or slip detected on the disc. SNOMED's
  "Normal" (17621005) is a qualifier, not a finding of a disc, so it is not used here.
* ``stenosis`` (segment reader, ``--classes all``) -> SCT 76107001 "Spinal stenosis";
  ``degeneration`` -> local ``DISC-DEGEN``.
* any other detector class -> local ``CLS-<8 hex>`` (a hash of the class name) with the class
  name as meaning.

Finding sites: SCT disc structures (``codes.SCT.L4L5Disc`` ... ``C2C3Disc``), for every level
lumbardx names (:data:`lumbardx.clinical.levels.DISC_LEVELS`); an unnamed level (``"?"``) gets
the local ``DISC-UNNAMED``.
"""

from __future__ import annotations

import hashlib

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from lumbardx.clinical.findings import HERNIATION, NORMAL, SLIP

LOCAL_SCHEME = "99LUMBARDX"
LOCAL_SCHEME_NAME = "lumbardx local codes"
LOCAL_SCHEME_VERSION = "1"
LOCAL_SCHEME_ORGANIZATION = "lumbardx project"


def local(value: str, meaning: str) -> CodedConcept:
    """A concept of the local scheme ``99LUMBARDX`` (value <= 16 characters, meaning <= 64)."""
    if len(value) > 16 or len(meaning) > 64:
        raise ValueError(f"local code {value!r} / {meaning!r} too long for SH / LO")
    return CodedConcept(value, LOCAL_SCHEME, meaning, scheme_version=LOCAL_SCHEME_VERSION)


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "SCT", meaning)


# --- Finding types -------------------------------------------------------------------------
HERNIATION_CODE = _sct("73589001", "Herniation of intervertebral disc")
SPONDYLOLISTHESIS_CODE = _sct("274152003", "Spondylolisthesis")
NORMAL_DISC_CODE = local("NORMAL-DISC", "Disc without detected herniation or spondylolisthesis")
#: The segment reader's further findings (``--classes all``): canal stenosis at the level, and
#: a degenerated disc (the dev set's "Degenerative Disc Disease" boxes; no SNOMED concept is
#: asserted for it here).
STENOSIS_CODE = _sct("76107001", "Spinal stenosis")
DEGENERATION_CODE = local("DISC-DEGEN", "Degenerated intervertebral disc")
FINDING_CODES: dict[str, CodedConcept] = {
    NORMAL: NORMAL_DISC_CODE,
    HERNIATION: HERNIATION_CODE,
    SLIP: SPONDYLOLISTHESIS_CODE,
    "stenosis": STENOSIS_CODE,
    "degeneration": DEGENERATION_CODE,
}

# --- Procedure reported (TID 1500 row 3) ---------------------------------------------------
#: SNOMED CT "Magnetic resonance imaging of lumbar and sacral spine (procedure)".
PROCEDURE_CODE = _sct("433141005", "Magnetic resonance imaging of lumbar and sacral spine")

# --- Qualitative evaluations ---------------------------------------------------------------
PRESENT = CodedConcept.from_code(codes.SCT.Present)
YES = CodedConcept.from_code(codes.SCT.Yes)
NO = CodedConcept.from_code(codes.SCT.No)
LEVEL_UNCERTAIN = local("LEVEL-UNCERTAIN", "Disc level name uncertain")
DISC_DETECTED = local("DISC-DETECTED", "Intervertebral disc detected")
MEYERDING_GRADE = local("MEYERDING", "Meyerding grade of slip (estimate)")
MEYERDING_VALUES: dict[str, CodedConcept] = {
    g: local(f"MEYERDING-{g}", f"Meyerding grade {g}") for g in ("I", "II", "III", "IV", "V")
}

#: The reader's decision on a disc's status, in a reviewed report.
READER_DECISION = local("READER-DECISION", "Reader's decision on the finding")
READER_DECISION_VALUES: dict[str, CodedConcept] = {
    "model": local("READER-CONFIRMED", "Model finding confirmed by the reader"),
    "reader": local("READER-CALL", "Finding called or changed by the reader"),
}

# --- Measurements --------------------------------------------------------------------------
CONFIDENCE = CodedConcept.from_code(codes.DCM.CertaintyOfFinding)
SLIP_PERCENT = local("SLIP-PERCENT", "Vertebral slip, percent of endplate width")
HERNIATION_EXTENT = local("HERN-EXTENT", "Posterior extent of disc material")
DETECTOR_SCORE_METHOD = local("DETECTOR-SCORE", "Detector score: uncalibrated estimate")
SEVERITY_METHOD = local("SLICE-ESTIMATE", "Estimate from one mid-sagittal slice")
UNIT_RATIO = CodedConcept.from_code(codes.UCUM.Ratio)  # "{ratio}"
UNIT_PERCENT = CodedConcept.from_code(codes.UCUM.Percent)
UNIT_MM = CodedConcept.from_code(codes.UCUM.Millimeter)

UNNAMED_DISC = local("DISC-UNNAMED", "Intervertebral disc, level not determined")


def finding_code(label: str) -> CodedConcept:
    """The finding-type concept for a lumbardx class name (see the module docstring)."""
    if label in FINDING_CODES:
        return FINDING_CODES[label]
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:8].upper()
    return local(f"CLS-{digest}", f"Detector class: {label}"[:64])


def level_code(level: str) -> CodedConcept:
    """The finding-site concept of a disc level name such as ``"L4-L5"`` or ``"T12-L1"``.

    Levels without an SCT disc concept in pydicom's dictionary (and ``"?"``) map to the local
    ``DISC-UNNAMED``.
    """
    parts = level.split("-")
    if len(parts) == 2 and all(parts):
        try:
            return CodedConcept.from_code(getattr(codes.SCT, f"{parts[0]}{parts[1]}Disc"))
        except AttributeError:
            pass
    return UNNAMED_DISC

