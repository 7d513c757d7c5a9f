"""Stage ``outputs``: overlay, ``findings.json``, reports (HTML, PDF) and, for DICOM input, the
SR (TID 1500) and the overlay Secondary Capture.

:func:`write_outputs` writes the files into a folder. :func:`publish_outputs` (``lumbardx
diagnose``) makes the whole folder appear at once, ending with a completion record
(:data:`COMPLETE_RECORD`), so that a run killed at any instant leaves every visible output
folder complete and an interrupted batch can tell which studies are done. Its work folders are
hidden siblings of the output folder, ``.<name>.partial-<pid>`` (being written) and
``.<name>.old-<pid>`` (a folder being deleted); :func:`remove_work_folders` deletes those that
a killed run left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lumbardx.io import atomic_write_text
from lumbardx.study import Study

#: The completion record of an output folder written by :func:`publish_outputs`, written last.
COMPLETE_RECORD = "complete.json"

#: Names of the hidden work folders of :func:`publish_outputs` and :func:`discard_folder`.
_WORK_FOLDER = re.compile(r"\..+\.(?:partial|old)-\d+")


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


def publish_outputs(study: Study, out_dir: str | Path, record: Mapping[str, Any], *,
                    dicom: bool = True, pdf: bool = True) -> dict[str, Path]:
    """Write the study's outputs (:func:`write_outputs`) and then :data:`COMPLETE_RECORD`
    (``record`` with ``files``: the output file names) into the hidden folder
    ``.<name>.partial-<pid>`` beside ``out_dir``, and only then move that folder to
    ``out_dir`` (:func:`replace_folder`, replacing an earlier one).

    ``out_dir`` is therefore never seen half-written, and a folder holding the record is
    complete. ``study.outputs`` gets the final paths.

    Returns:
        Output key -> final path, as :func:`write_outputs`.

    Raises:
        As :func:`write_outputs`; the work folder is then removed and an earlier ``out_dir``
        left as it was.
    """
    target = Path(out_dir)
    partial = _work_folder(target, "partial")
    try:
        written = write_outputs(study, partial, dicom=dicom, pdf=pdf)
        files = sorted(p.relative_to(partial).as_posix() for p in written.values())
        atomic_write_text(partial / COMPLETE_RECORD,
                          json.dumps({**record, "files": files}, indent=2) + "\n")
        replace_folder(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    paths = {key: target / p.relative_to(partial) for key, p in written.items()}
    study.outputs.update(paths)
    return paths


def replace_folder(new: Path, target: Path) -> None:
    """Move the folder ``new`` to ``target`` by renames (atomic on one file system): an
    existing ``target`` is first renamed aside (``.<name>.old-<pid>``) and deleted once
    ``new`` is in place, so ``target`` is at every instant absent, the old folder or the new
    one. When ``new`` cannot be moved in, the old folder is put back."""
    if not target.exists():
        os.rename(new, target)
        return
    old = _move_aside(target)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)  # a leftover is removed by remove_work_folders


def discard_folder(folder: Path) -> None:
    """Delete ``folder``, renaming it aside (``.<name>.old-<pid>``) first, so that a kill
    while deleting leaves no visible half-deleted folder."""
    shutil.rmtree(_move_aside(folder), ignore_errors=True)


def remove_work_folders(out: Path) -> list[Path]:
    """Delete the work folders (``.<name>.partial-<pid>``, ``.<name>.old-<pid>``) that a
    killed run left in ``out``; returns them. Nothing else is touched, so two runs must not
    write into the same ``out`` at the same time."""
    if not out.is_dir():
        return []
    stale = sorted(p for p in out.iterdir() if p.is_dir() and _WORK_FOLDER.fullmatch(p.name))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _work_folder(target: Path, kind: str) -> Path:
    """The hidden sibling ``.<target name>.<kind>-<pid>`` of ``target``."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def _move_aside(folder: Path) -> Path:
    """Rename ``folder`` to its hidden ``old`` work folder; returns the new path."""
    old = _work_folder(folder, "old")
    os.rename(folder, old)
    return old
