"""Stage ``severity``: Meyerding slip and posterior herniation extent (mm, from the pixel
spacing) from :mod:`lumbardx.clinical.severity`, on the raw pixel intensities."""

from __future__ import annotations

from lumbardx.clinical import severity as sev
from lumbardx.clinical.findings import HERNIATION, SLIP, SpineFindings
from lumbardx.data.images import MedicalImage

SEVERITY_NOTE = f"Slip: {sev.SLIP_VALIDATION} Herniation extent: " \
                f"{sev.HERNIATION_VALIDATION}".rstrip(".")


def anterior_left(image: MedicalImage) -> bool:
    """Whether the patient faces image left: from the DICOM row direction (patient LPS, +y is
    posterior), else the usual sagittal display (anterior left)."""
    if image.header is None:
        return True
    from lumbardx.data.dicom import image_orientation

    cosines = image_orientation(image.header)
    if cosines is None or abs(cosines[0][1]) < 0.5:
        return True
    return bool(cosines[0][1] > 0)


def estimate_severity(image: MedicalImage, spine: SpineFindings,
                      anterior: bool = True) -> list[str]:
    """Severity estimates on the raw pixels, in place
    (:func:`lumbardx.clinical.severity.annotate_severity`: Meyerding slip on discs with a
    spondylolisthesis finding and no slip measured yet, posterior extent in mm on discs with a
    herniation finding).

    Returns:
        warnings for estimates that could not be made.
    """
    refused = sev.annotate_severity(image.pixels, spine, image.pixel_spacing, anterior)
    warnings: list[str] = []
    for i, disc in enumerate(spine.discs):
        if disc.has(SLIP) and disc.slip_percent is None:
            why = f": {refused[i]}" if i in refused else ""
            warnings.append(f"{disc.level}: slip grade not measurable on this slice{why}")
        if disc.has(HERNIATION) and disc.herniation_extent_mm is None \
                and image.pixel_spacing is not None:
            warnings.append(f"{disc.level}: herniation extent not measurable on this slice")
    if image.pixel_spacing is None and any(d.has(HERNIATION) for d in spine.discs):
        warnings.append("pixel spacing unknown (not DICOM): herniation extent in mm not "
                        "measured")
    return warnings
