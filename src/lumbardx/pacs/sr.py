"""Findings as a DICOM Structured Report (TID 1500 Measurement Report) for the source study.

IOD. **Enhanced SR** (:class:`highdicom.sr.EnhancedSR`): the report holds only 2-D image
coordinates (SCOORD on the analysed slice), no 3-D coordinates (SCOORD3D) and no by-reference
relationships, so Comprehensive 3D SR adds nothing; Enhanced SR is the least demanding IOD that
holds TID 1500 with image regions and the one most PACS and viewers have stored and shown longest.

Content (DICOM PS3.16 TID 1500):

* observer context = a device: Device Observer Name ``lumbardx <version>``, Manufacturer, Model
  Name = the detector's registry name, UID stable per manufacturer, lumbardx version, model and
  weights;
* procedure reported: SCT 433141005 MRI of lumbar and sacral spine;
* one TID 1410 Planar ROI group per disc (top to bottom): the status box as a closed POLYLINE
  (5 points, first = last) on the source image (frame number for multi-frame files), tracking
  identifier ``"<level> disc"`` + a new UID, finding type and site (:mod:`lumbardx.pacs.codes`),
  the detector (Algorithm Name / Version), qualitative evaluations (each finding ``Present``,
  ``Disc level name uncertain`` Yes/No, Meyerding grade when estimated) and measurements
  (detector confidence ``{ratio}``, slip ``%``, herniation posterior extent ``mm``), each with a
  Measurement Method stating that it is an estimate;
* when no disc was detected, one TID 1501 image-level group instead (TID 1500 needs at least one
  group): tracking identifier ``"analysed slice"``, the source image, the detector, and the
  qualitative evaluation ``Intervertebral disc detected`` = No, so the PACS records that the
  slice was analysed and nothing was found (often a sign of the wrong image).

Coordinates. SCOORD image coordinates put ``(0, 0)`` at the top-left corner of the top-left
pixel (PS3.3 C.18.6.1.2), the same continuous 0-based frame as :mod:`lumbardx.data.boxes`, so
box corners are written unchanged (``x`` = column, ``y`` = row), clipped to the image.

Header. Patient and study modules are copied from the source header (the point of results back
to PACS: they file with the study); Type 2 attributes missing there are written empty. Series
and SOP Instance UIDs are new. The report is marked PRELIMINARY, PARTIAL (one slice analysed),
UNVERIFIED and Content Qualification RESEARCH; after a reader's complete review (the web app),
FINAL and VERIFIED by the reviewer, with the reviewed findings (:func:`build_sr`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence

import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.enum import SpecificCharacterSetValues
from highdicom.sr import (AlgorithmIdentification, DeviceObserverIdentifyingAttributes,
                          EnhancedSR, FindingSite, GraphicTypeValues, ImageRegion, Measurement,
                          MeasurementReport, MeasurementsAndQualitativeEvaluations,
                          ObservationContext, ObserverContext,
                          PersonObserverIdentifyingAttributes,
                          PlanarROIMeasurementsAndQualitativeEvaluations, QualitativeEvaluation,
                          SourceImageForMeasurementGroup, SourceImageForRegion,
                          TrackingIdentifier)
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lumbardx import __version__
from lumbardx.clinical.findings import NORMAL, DiscFindings
from lumbardx.data.dicom import frame_header, number_of_frames
from lumbardx.data.errors import InputError
from lumbardx.pacs import codes as lx
from lumbardx.study import ModelInfo, Study

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901  # high, to sort after the scanner's series in a PACS browser
SR_SERIES_DESCRIPTION = "lumbardx findings - decision support, not a diagnosis"
DEFAULT_MANUFACTURER = "lumbardx"
#: Verifying Organization of a reviewed report when the site does not name one.
DEFAULT_ORGANIZATION = "not recorded"

#: Type 2 attributes of the Patient / General Study modules that highdicom reads from the source.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_VALID_CHARSETS = frozenset(v.value for v in SpecificCharacterSetValues)
#: Descriptors TID 1604 (image library entry of a cross-sectional image) reads from the image.
_LIBRARY_KEYWORDS = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
                     "SliceThickness", "Rows", "Columns")


def source_header(study: Study) -> Dataset:
    """The source DICOM header of ``study``, checked for the UIDs results must reference.

    Raises:
        InputError: the study was read from a PNG / JPEG file (no header), or the header lacks
            SOP Class / SOP Instance / Study Instance UID.
    """
    header = study.image.header
    if header is None:
        raise InputError(study.image.source, f"was read from a {study.image.kind.upper()} image, "
                                             "not DICOM: DICOM results (SR, secondary capture) "
                                             "reference the source study and need DICOM input")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
        if not header.get(keyword):
            raise InputError(study.image.source, f"DICOM header has no {keyword}; results "
                                                 "cannot reference the source image")
    return header


def _texts(header: Dataset) -> list[str]:
    out: list[str] = []
    for elem in header:
        if elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            values = elem.value if elem.VM > 1 else [elem.value]
            out.extend(str(v) for v in values)
    return out


def _encodable(text: str, charset: Sequence[str]) -> bool:
    encodings = convert_encodings(list(charset))

    def ok(part: str, encoding: str) -> bool:
        try:
            part.encode(encoding)
        except (UnicodeError, LookupError):
            return False
        return True

    return any(ok(text, e) for e in encodings) or all(
        any(ok(ch, e) for e in encodings) for ch in text)


def character_set(header: Dataset, extra_texts: Iterable[str] = ()) -> str | list[str] | None:
    """Specific Character Set for outputs that copy text from ``header``.

    The source's own value when it can encode every text value of the header and
    ``extra_texts`` (``None`` for the default repertoire with ASCII text; an empty first value of
    a multi-valued set written as its equivalent ``ISO 2022 IR 6``); otherwise ``"ISO_IR 192"``
    (UTF-8), which holds any decoded value without loss.
    """
    raw = header.get("SpecificCharacterSet")
    terms = [] if raw is None else ([raw] if isinstance(raw, str) else [str(t) for t in raw])
    texts = [t for t in [*_texts(header), *extra_texts] if not t.isascii()]
    if all(t in _DEFAULT_REPERTOIRE for t in terms):
        return None if not texts else "ISO_IR 192"
    if len(terms) > 1 and terms[0] == "":  # default repertoire with code extensions
        terms[0] = "ISO 2022 IR 6"
    if all(t in _VALID_CHARSETS for t in terms) and all(_encodable(t, terms) for t in texts):
        return terms[0] if len(terms) == 1 else terms
    return "ISO_IR 192"


def evidence_dataset(header: Dataset, frame: int | None = None) -> Dataset:
    """A copy of ``header`` (flattened for ``frame`` of a multi-frame file) with the Type 2
    patient / study attributes that are missing written empty, and a Patient's Sex outside
    ``M``/``F``/``O`` emptied (unknown) with a warning."""
    view = copy.deepcopy(frame_header(header, frame))
    for keyword in _TYPE2:
        if keyword not in view:
            setattr(view, keyword, "")
    sex = str(view.PatientSex or "")
    if sex not in ("", "M", "F", "O"):
        log.warning("Patient's Sex %r is not a DICOM value (M, F, O); written empty", sex)
        view.PatientSex = ""
    return view


def device_uid(manufacturer: str, model: ModelInfo) -> str:
    """Device Observer UID: stable for one manufacturer, lumbardx version, model and weights."""
    return generate_uid(entropy_srcs=["lumbardx-device", manufacturer, __version__, model.name,
                                      model.version, model.weights_sha256 or ""])


def box_polyline(disc: DiscFindings, width: int, height: int) -> np.ndarray:
    """float32 ``[5, 2]`` closed polyline ``(column, row)`` of the disc's box, clipped to the
    image: top-left, top-right, bottom-right, bottom-left, top-left."""
    b = disc.box
    x1, x2 = float(np.clip(b.x1, 0, width)), float(np.clip(b.x2, 0, width))
    y1, y2 = float(np.clip(b.y1, 0, height)), float(np.clip(b.y2, 0, height))
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def _algorithm(model: ModelInfo) -> AlgorithmIdentification:
    params = [f"weights_sha256={model.weights_sha256}"] if model.weights_sha256 else None
    return AlgorithmIdentification(name=model.name, version=model.version or "unknown",
                                   parameters=params)


def disc_group(disc: DiscFindings, header: Dataset, frame: int | None, size: tuple[int, int],
               model: ModelInfo, reviewed: bool = False
               ) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 group of one disc (content listed in the module docstring); ``reviewed``
    adds the reader's decision on its status."""
    multi = number_of_frames(header) > 1
    source = SourceImageForRegion(
        referenced_sop_class_uid=str(header.SOPClassUID),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        referenced_frame_numbers=[(frame or 0) + 1] if multi else None)
    region = ImageRegion(graphic_type=GraphicTypeValues.POLYLINE,
                         graphic_data=box_polyline(disc, *size), source_image=source,
                         pixel_origin_interpretation="FRAME" if multi else None)
    severity = AlgorithmIdentification(name="lumbardx.clinical.severity", version=__version__)
    measurements: list[Measurement] = []
    if disc.confidence is not None:
        measurements.append(Measurement(
            name=lx.CONFIDENCE, value=float(disc.confidence), unit=lx.UNIT_RATIO,
            method=lx.DETECTOR_SCORE_METHOD, algorithm_id=_algorithm(model)))
    if disc.slip_percent is not None:
        measurements.append(Measurement(
            name=lx.SLIP_PERCENT, value=float(disc.slip_percent), unit=lx.UNIT_PERCENT,
            method=lx.SEVERITY_METHOD, algorithm_id=severity))
    if disc.herniation_extent_mm is not None:
        measurements.append(Measurement(
            name=lx.HERNIATION_EXTENT, value=float(disc.herniation_extent_mm), unit=lx.UNIT_MM,
            method=lx.SEVERITY_METHOD, algorithm_id=severity))
    evaluations = [QualitativeEvaluation(lx.finding_code(f.label), lx.PRESENT)
                   for f in disc.findings if f.label != NORMAL or disc.status == NORMAL]
    evaluations.append(QualitativeEvaluation(lx.LEVEL_UNCERTAIN,
                                             lx.YES if disc.level_uncertain else lx.NO))
    if reviewed:  # the status box: the model's score stands (confirmed) or the reader's call
        evaluations.append(QualitativeEvaluation(
            lx.READER_DECISION,
            lx.READER_DECISION_VALUES["model" if disc.confidence is not None else "reader"]))
    if disc.meyerding_grade in lx.MEYERDING_VALUES:
        evaluations.append(QualitativeEvaluation(lx.MEYERDING_GRADE,
                                                 lx.MEYERDING_VALUES[disc.meyerding_grade]))
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(),
                                               identifier=f"{disc.level} disc"),
        referenced_region=region,
        finding_type=lx.finding_code(disc.status),
        algorithm_id=_algorithm(model),
        finding_sites=[FindingSite(anatomic_location=lx.level_code(disc.level))],
        measurements=measurements or None,
        qualitative_evaluations=evaluations)


def no_disc_group(header: Dataset, frame: int | None, model: ModelInfo
                  ) -> MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group of a slice on which no disc was detected (module docstring)."""
    multi = number_of_frames(header) > 1
    source = SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(header.SOPClassUID),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        referenced_frame_numbers=[(frame or 0) + 1] if multi else None)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="analysed slice"),
        algorithm_id=_algorithm(model), source_images=[source],
        qualitative_evaluations=[QualitativeEvaluation(lx.DISC_DETECTED, lx.NO)])


def reviewer_name(user: str | None) -> str:
    """A reviewer's account name as a DICOM Person Name (PN: no backslash, at most 64
    characters per component group; a single name is written as the family name, ``alice^``,
    so it is not mistaken for a malformed name)."""
    name = (user or "unknown reader").replace("\\", "/").replace("=", "-")[:63]
    return name if "^" in name else name + "^"  # one component: the family name


def build_sr(study: Study, *, manufacturer: str = DEFAULT_MANUFACTURER,
             series_number: int = SR_SERIES_NUMBER, instance_number: int = 1,
             organization: str = DEFAULT_ORGANIZATION) -> EnhancedSR:
    """The TID 1500 Enhanced SR of ``study``'s findings, filed in the source study.

    A study with a complete review (``study.review``) is reported as the reader reviewed it:
    its findings are the reviewed ones, the reviewer is a person observer beside the device,
    each disc group says whether its status is the model's finding confirmed or the reader's
    call, and the document is VERIFIED (Verifying Observer = the reviewer, ``organization``)
    and FINAL; without one it stays PRELIMINARY and UNVERIFIED.

    Args:
        study: a study read from DICOM (``study.image.header`` set).
        manufacturer: Manufacturer of the SR and of the observing device.
        organization: Verifying Organization of a reviewed report.
        series_number, instance_number: Series / Instance Number of the new SR.

    Raises:
        InputError: naming the source file: no DICOM header (PNG/JPEG input), missing UIDs, or
            a header whose patient / study attributes cannot be carried into the SR.
    """
    header = source_header(study)
    frame = study.image.frame
    evidence = evidence_dataset(header, frame)
    size = (study.image.width, study.image.height)
    try:
        review = study.review if study.review is not None and study.review.complete else None
        groups = [disc_group(d, header, frame, size, study.model, review is not None)
                  for d in study.findings.discs] or [no_disc_group(header, frame, study.model)]
        device = DeviceObserverIdentifyingAttributes(
            uid=device_uid(manufacturer, study.model), name=f"lumbardx {__version__}",
            manufacturer_name=manufacturer, model_name=study.model.name)
        person = None if review is None else ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=reviewer_name(review.reviewer)))
        context = ObservationContext(observer_person_context=person,
                                     observer_device_context=ObserverContext(
                                         observer_type=codes.cid270.Device,
                                         observer_identifying_attributes=device))
        library = all(k in evidence for k in _LIBRARY_KEYWORDS)
        report = MeasurementReport(
            observation_context=context, procedure_reported=lx.PROCEDURE_CODE,
            imaging_measurements=groups,
            referenced_images=[evidence] if library else None)
        extra = [*(d.level for d in study.findings.discs),
                 *(f.label for d in study.findings.discs for f in d.findings), study.model.name,
                 manufacturer, *([] if review is None else [reviewer_name(review.reviewer),
                                                             organization])]
        return EnhancedSR(
            evidence=[evidence], content=report[0], series_instance_uid=generate_uid(),
            series_number=series_number, sop_instance_uid=generate_uid(),
            instance_number=instance_number, manufacturer=manufacturer,
            is_complete=False, is_final=review is not None,
            is_verified=review is not None,
            verifying_observer_name=None if review is None else reviewer_name(review.reviewer),
            verifying_organization=None if review is None else organization,
            specific_character_set=character_set(evidence, extra),
            series_description=SR_SERIES_DESCRIPTION, manufacturer_model_name=study.model.name,
            software_versions=f"lumbardx {__version__}", content_qualification="RESEARCH",
            coding_schemes=[CodingSchemeIdentificationItem(
                designator=lx.LOCAL_SCHEME, name=lx.LOCAL_SCHEME_NAME,
                version=lx.LOCAL_SCHEME_VERSION,
                responsible_organization=lx.LOCAL_SCHEME_ORGANIZATION)])
    except (ValueError, TypeError) as exc:
        raise InputError(study.image.source, f"cannot build the DICOM SR from this header: "
                                             f"{exc}") from exc
