"""Results back to PACS: a TID 1500 Structured Report and an RGB Secondary Capture overlay.

Both objects join the source study (same Study Instance UID and patient module) in new series,
so a PACS files them with the examination they describe. Only studies read from DICOM can be
sent back; an image input (PNG / JPEG) is refused with an :class:`InputError`.

:func:`write_dicom_outputs` writes ``sr.dcm`` and ``overlay_sc.dcm`` into a folder, each through
a temporary file renamed into place (``os.replace``, :mod:`lumbardx.io`), so a reader never
sees half a file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from lumbardx.data.errors import InputError
from lumbardx.io import atomic_save
from lumbardx.pacs.sc import build_secondary_capture
from lumbardx.pacs.sr import DEFAULT_MANUFACTURER, build_sr
from lumbardx.study import Study

SR_FILENAME = "sr.dcm"
SC_FILENAME = "overlay_sc.dcm"

__all__ = ["build_sr", "build_secondary_capture", "write_dicom_outputs", "save_atomic",
           "SR_FILENAME", "SC_FILENAME"]


def save_atomic(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` as a DICOM Part 10 file at ``path`` atomically
    (:func:`lumbardx.io.atomic_save`): a reader never sees half a file, and a failed save
    leaves no temporary file and any previous file untouched."""
    return atomic_save(path, lambda fh: ds.save_as(fh, enforce_file_format=True))


def write_dicom_outputs(study: Study, overlay_rgb: np.ndarray, out_dir: str | Path, *,
                        manufacturer: str = DEFAULT_MANUFACTURER) -> dict[str, Path]:
    """Write the SR and the overlay Secondary Capture of ``study`` into ``out_dir``.

    Both objects are built before anything is written, so a refused study leaves no file.

    Args:
        study: a study read from DICOM.
        overlay_rgb: uint8 ``[H, W, 3]`` RGB overlay of the findings.
        out_dir: folder to write into (created when missing).
        manufacturer: Manufacturer written into both objects.

    Returns:
        ``{"sr": out_dir / "sr.dcm", "overlay_sc": out_dir / "overlay_sc.dcm"}``.

    Raises:
        InputError: the study has no DICOM header (image input) or a header that cannot be
            carried over (naming the source file); ``out_dir`` is a file.
        ValueError: ``overlay_rgb`` is not uint8 ``[H, W, 3]``.
    """
    sr = build_sr(study, manufacturer=manufacturer)
    sc = build_secondary_capture(study, overlay_rgb, manufacturer=manufacturer)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file, not a folder for the DICOM outputs")
    out.mkdir(parents=True, exist_ok=True)
    return {"sr": save_atomic(sr, out / SR_FILENAME),
            "overlay_sc": save_atomic(sc, out / SC_FILENAME)}
