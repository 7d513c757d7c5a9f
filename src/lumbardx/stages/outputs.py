"""Stage ``outputs``: overlay, ``findings.json``, reports (HTML, PDF) and, for DICOM input, the
SR (TID 1500) and the overlay Secondary Capture."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lumbardx.study import Study


def write_outputs(study: Study, out_dir: str | Path, *, dicom: bool = True,
                  pdf: bool = True) -> dict[str, Path]:
    """Overlay, ``findings.json``, report (HTML, PDF) and, for DICOM input with ``dicom``, the
    SR (TID 1500) and overlay Secondary Capture, in ``out_dir``.

    ``study.timings_ms`` gets ``overlay`` (before ``findings.json`` is written) and then
    ``reports`` (everything else, so it is not in the file); ``study.outputs`` the paths.

    Raises:
        InputError: the DICOM outputs cannot be made from this study's header.
        OSError: ``out_dir`` cannot be written.
    """
    from PIL import Image

    from lumbardx import report

    t0 = time.perf_counter()
    out = Path(out_dir)
    paths = report.write_study_outputs(study, out, pdf=pdf)
    if dicom and study.image.kind == "dicom" and study.image.header is not None:
        from lumbardx.pacs import write_dicom_outputs

        with Image.open(paths["overlay"]) as im:  # the pixels just written, not a re-render
            rgb = np.asarray(im.convert("RGB"))
        dicom_paths = write_dicom_outputs(study, rgb, out)
        study.outputs.update(dicom_paths)
        paths = {**paths, **dicom_paths}
    total = 1000.0 * (time.perf_counter() - t0)
    study.timings_ms["reports"] = max(0.0, total - study.timings_ms.get("overlay", 0.0))
    return dict(paths)
