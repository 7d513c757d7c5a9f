"""The findings overlay as an RGB DICOM Secondary Capture image in the source study.

Built with :meth:`highdicom.sc.SCImage.from_ref_dataset`, which copies the patient and study
modules from the source header (Type 2 attributes missing there are written empty, see
:func:`lumbardx.pacs.sr.evidence_dataset`). The image gets a new series (Series Description
``lumbardx overlay``), Burned In Annotation ``YES`` (boxes and labels are drawn into the pixels),
a Derivation Description and Image Comments stating decision support, not a diagnosis, Content
Qualification ``RESEARCH``, and a Source Image Sequence item naming the analysed slice (and its
frame in a multi-frame file).

Orientation. Patient Orientation (row, column) is the patient axis nearest to the source's row and
column direction cosines (LPS: ``L``/``R``, ``P``/``A``, ``H``/``F``); without Image Orientation
(Patient) the source's own Patient Orientation is used, else it is left empty (Type 2: unknown).
Pixel Spacing is copied only when the overlay has the analysed image's size.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lumbardx import __version__
from lumbardx.data.dicom import frame_header, image_orientation, number_of_frames
from lumbardx.data.errors import InputError
from lumbardx.pacs.sr import DEFAULT_MANUFACTURER, character_set, evidence_dataset, source_header
from lumbardx.study import Study

SC_SERIES_NUMBER = 9902  # next to the SR's 9901
SC_SERIES_DESCRIPTION = "lumbardx overlay"
DERIVATION_DESCRIPTION = (
    "lumbardx detector findings (disc boxes, levels, labels) drawn over the analysed sagittal "
    "slice. Decision support for research and teaching; not a diagnosis.")
IMAGE_COMMENTS = ("Decision support, not a diagnosis: findings must be confirmed by a qualified "
                  "reader on the full examination.")
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # + / - direction of LPS x, y, z
_ORIENTATION_LETTERS = frozenset("LRAPHF")


def _letter(cosine: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(cosine)))
    return _AXIS_LETTERS[axis][0 if cosine[axis] > 0 else 1]


def patient_orientation(header: Dataset, frame: int | None = None) -> tuple[str, str] | None:
    """``(row, column)`` Patient Orientation letters of the source image, or ``None``.

    From Image Orientation (Patient): the dominant patient axis of each direction cosine (a
    sagittal slice with rows anterior -> posterior and columns head -> feet gives ``("P", "F")``);
    otherwise the source's single-letter Patient Orientation.
    """
    cosines = image_orientation(frame_header(header, frame))
    if cosines is not None:
        return _letter(cosines[0]), _letter(cosines[1])
    given = [str(v) for v in (header.get("PatientOrientation") or [])]
    if len(given) == 2 and all(v in _ORIENTATION_LETTERS for v in given):
        return given[0], given[1]
    return None


def _source_reference(header: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if number_of_frames(header) > 1:
        item.ReferencedFrameNumber = (frame or 0) + 1
    return item


def build_secondary_capture(study: Study, overlay_rgb: np.ndarray, *,
                            manufacturer: str = DEFAULT_MANUFACTURER,
                            series_number: int = SC_SERIES_NUMBER,
                            instance_number: int = 1) -> SCImage:
    """An RGB Secondary Capture of ``overlay_rgb`` filed in ``study``'s source study.

    Args:
        study: a study read from DICOM (``study.image.header`` set).
        overlay_rgb: uint8 ``[H, W, 3]`` RGB overlay (usually the analysed slice's size).
        manufacturer: Manufacturer of the new image.
        series_number, instance_number: Series / Instance Number of the new image.

    Raises:
        InputError: naming the source file: no DICOM header (PNG/JPEG input), missing UIDs, or
            a header whose patient / study attributes cannot be carried over.
        ValueError: ``overlay_rgb`` is not uint8 ``[H, W, 3]``.
    """
    if not (isinstance(overlay_rgb, np.ndarray) and overlay_rgb.dtype == np.uint8
            and overlay_rgb.ndim == 3 and overlay_rgb.shape[2] == 3):
        got = (f"{overlay_rgb.dtype} {overlay_rgb.shape}" if isinstance(overlay_rgb, np.ndarray)
               else type(overlay_rgb).__name__)
        raise ValueError(f"overlay must be a uint8 [H, W, 3] RGB array, got {got}")
    header = source_header(study)
    frame = study.image.frame
    ref = evidence_dataset(header, frame)
    orientation = patient_orientation(header, frame)
    same_size = overlay_rgb.shape[:2] == (study.image.height, study.image.width)
    spacing = study.image.pixel_spacing if same_size else None
    try:
        sc = SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=np.ascontiguousarray(overlay_rgb),
            photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=instance_number,
            manufacturer=manufacturer, pixel_spacing=spacing,
            patient_orientation=orientation or ("P", "F"),
            specific_character_set=character_set(ref, [manufacturer]),
            series_description=SC_SERIES_DESCRIPTION, manufacturer_model_name="lumbardx",
            software_versions=f"lumbardx {__version__}", content_qualification="RESEARCH")
    except (ValueError, TypeError) as exc:
        raise InputError(study.image.source, f"cannot build the DICOM secondary capture from "
                                             f"this header: {exc}") from exc
    if orientation is None:
        sc.PatientOrientation = ""  # Type 2: unknown (highdicom needs a value to build)
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = DERIVATION_DESCRIPTION
    sc.ImageComments = IMAGE_COMMENTS
    sc.SourceImageSequence = [_source_reference(header, frame)]
    return sc
