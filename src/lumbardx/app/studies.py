"""Studies on disk: ``DATA_DIR/studies/<study_key>/`` with the original files, the analysed
slice, ``meta.json`` (worklist row) and, once analysed, the outputs of
:func:`lumbardx.diagnosis.write_outputs`.

``study_key`` is :func:`lumbardx.study.pixel_key` of the analysed slice's pixels, computed when
the files arrive (the same key the diagnosis writes into ``findings.json``), so a study sent
twice is recognised. A study that comes back with more series than it had (the T1 series
after the T2 alone; :func:`grows`) is not a duplicate: it is upgraded in place -- the earlier
upload, outputs and review kept in ``history/<n>/`` and listed in ``meta.json`` ``history``
-- and analysed again, e.g. as a T1+T2 pair. Files that cannot be read as a study are moved to
``DATA_DIR/quarantine/<id>/`` with ``reason.json``; they are never read with ``force=True``.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lumbardx.app.accounts import utc_now
from lumbardx.app.files import private_dir, read_json, write_json, write_private
from lumbardx.app.uploads import StagedStudy
from lumbardx.data.errors import InputError
from lumbardx.data.images import MedicalImage
from lumbardx.study import pixel_key

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("new", "analysed", "reviewed", "failed")
_KEY = re.compile(r"^[0-9a-f]{16}$")
_DISPLAY_PERCENTILES = (0.5, 99.5)


class StudyNotFound(LookupError):
    """No study with that key (or a malformed key)."""


@dataclass(frozen=True)
class Quarantined(Exception):
    """Files that could not be read; ``detail`` says why, ``quarantine_id`` where they are."""

    detail: str
    quarantine_id: str

    def __str__(self) -> str:
        return self.detail


def display_id(key: str) -> str:
    """Short de-identified id for speaking about a study: ``3F9A-0C1D``."""
    return f"{key[:4]}-{key[4:8]}".upper()


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):
        value = next(iter(value), None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def default_window(image: MedicalImage) -> dict[str, float]:
    """The window the viewer starts with on the stored pixels: the DICOM Window Center/Width
    when present, else the 0.5-99.5 percentile range (PNG/JPEG: 0..255)."""
    if image.kind != "dicom":
        return {"center": 127.5, "width": 255.0}
    header = image.header
    center = _first(header.get("WindowCenter")) if header is not None else None
    width = _first(header.get("WindowWidth")) if header is not None else None
    if center is not None and width is not None and width > 0:
        return {"center": center, "width": width}
    finite = image.pixels[np.isfinite(image.pixels)]
    if finite.size == 0:
        return {"center": 0.0, "width": 1.0}
    lo, hi = (float(v) for v in np.percentile(finite, _DISPLAY_PERCENTILES))
    return {"center": (lo + hi) / 2.0, "width": max(hi - lo, 1.0)}


def png_bytes(gray: np.ndarray) -> bytes:
    """PNG encoding of a ``uint8 [H, W]`` image."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(gray), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def series_uids(files: list[Path]) -> set[str]:
    """Series Instance UIDs of the DICOM files among ``files`` (headers only; files that are
    not DICOM or have none are skipped)."""
    from lumbardx.data.dicom import read_header

    uids = set()
    for f in files:
        try:
            uid = str(read_header(f).get("SeriesInstanceUID", "") or "")
        except InputError:
            continue
        if uid:
            uids.add(uid)
    return uids


def grows(stored: Path, files: list[Path]) -> bool:
    """Whether an upload of ``files`` whose analysed slice is a stored study's (same key)
    holds series the stored files (folder ``stored``) lack while keeping all of theirs: the
    study grows (a T1 series after the T2 alone) rather than arriving twice."""
    before = series_uids(sorted(p for p in stored.rglob("*") if p.is_file()))
    after = series_uids(files)
    return bool(before) and before < after


class StudyStore:
    """The ``studies/`` and ``quarantine/`` folders of a data folder; thread-safe."""

    def __init__(self, data_dir: Path) -> None:
        self.root = private_dir(Path(data_dir) / "studies")
        self.quarantine_root = private_dir(Path(data_dir) / "quarantine")
        self.staging_root = private_dir(Path(data_dir) / "staging")
        self._lock = threading.RLock()

    # -- paths and rows -------------------------------------------------------------------------
    def folder(self, key: str) -> Path:
        """The study's folder. Raises :class:`StudyNotFound`."""
        if not _KEY.match(key or "") or not (self.root / key / "meta.json").is_file():
            raise StudyNotFound(key)
        return self.root / key

    def meta(self, key: str) -> dict[str, Any]:
        """The study's ``meta.json`` (the worklist row plus internal fields)."""
        return read_json(self.folder(key) / "meta.json")

    def update(self, key: str, **fields: Any) -> dict[str, Any]:
        """Set fields of ``meta.json`` and return the new row."""
        with self._lock:
            meta = self.meta(key)
            meta.update(fields)
            write_json(self.root / key / "meta.json", meta)
            return meta

    @staticmethod
    def summary(meta: dict[str, Any]) -> dict[str, Any]:
        """The public worklist row of ``meta`` (docs/api.md, "study summary")."""
        keys = ("study_key", "display_id", "status", "created_at", "analysed_at", "reviewed_at",
                "kind", "origin", "n_files", "n_discs", "n_findings", "levels_with_findings",
                "uploaded_by", "error")
        return {k: meta.get(k) for k in keys}

    def list(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Worklist rows, newest first."""
        rows = []
        for folder in self.root.iterdir():
            meta_path = folder / "meta.json"
            if not _KEY.match(folder.name) or not meta_path.is_file():
                continue
            try:
                meta = read_json(meta_path)
            except (OSError, ValueError):
                log.warning("study %s: meta.json unreadable", folder.name)
                continue
            if status is None or meta.get("status") == status:
                rows.append(meta)
        rows.sort(key=lambda m: (m.get("created_at") or "", m["study_key"]), reverse=True)
        return [self.summary(m) for m in rows[:limit]]

    def new_staging(self) -> Path:
        """A fresh private staging folder."""
        return private_dir(self.staging_root / secrets.token_hex(8))

    # -- arrival --------------------------------------------------------------------------------
    def quarantine(self, staged_folder: Path, reason: str, user: str | None,
                   origin: str) -> str:
        """Move a staging folder's files to ``quarantine/<id>/`` with ``reason.json``."""
        qid = f"{utc_now().replace(':', '').replace('-', '')}-{secrets.token_hex(4)}"
        dest = self.quarantine_root / qid
        shutil.move(str(staged_folder), dest)
        files = sorted(p.name for p in dest.rglob("*") if p.is_file())
        write_json(dest / "reason.json", {"time": utc_now(), "user": user, "origin": origin,
                                          "reason": reason, "files": files})
        log.warning("upload quarantined as %s (%d files)", qid, len(files))
        return qid

    def ingest(self, staged: StagedStudy, *, origin: str, user: str | None,
               on_header: Any = None) -> tuple[dict[str, Any], bool]:
        """Read the staged files as a study and store them.

        Args:
            staged: the staged upload (its folder is consumed: moved or deleted).
            origin: ``"upload"`` or ``"pacs"``.
            user: who sent it.
            on_header: called with the DICOM header before anything is logged (registers the
                patient identifiers with the log redactor).

        Returns:
            ``(meta, duplicate)``.

        Raises:
            Quarantined: the files cannot be read as a study.
        """
        from lumbardx.data.series import load_study

        staging = staged.folder.parent
        try:
            image = load_study(staged.input_path, 1)[0]
        except InputError as exc:
            where = exc.path.name if exc.path is not None else "upload"
            detail = f"{where}: {exc.problem}"
            qid = self.quarantine(staged.folder, detail, user, origin)
            shutil.rmtree(staging, ignore_errors=True)
            raise Quarantined(detail, qid) from None
        if image.header is not None and on_header is not None:
            on_header(image.header)
        key = pixel_key(image.pixels)
        with self._lock:
            folder = self.root / key
            if (folder / "meta.json").is_file():
                if not grows(folder / "original", staged.files):
                    shutil.rmtree(staging, ignore_errors=True)
                    return self.meta(key), True
                meta = self._upgrade(key, staged, image, user, origin)
                shutil.rmtree(staging, ignore_errors=True)
                return meta, False
            shutil.rmtree(folder, ignore_errors=True)  # a half-made folder of a crash
            private_dir(folder)
            analysed = Path(image.source).name  # staging is flat (uploads.py)
            shutil.move(str(staged.folder), folder / "original")
            shutil.rmtree(staging, ignore_errors=True)
            write_private(folder / "image.png", png_bytes(image.display))
            with (folder / "pixels.npy").open("wb") as fh:
                np.save(fh, image.pixels.astype(np.float32))
            finite = image.pixels[np.isfinite(image.pixels)]
            meta = {
                "study_key": key, "display_id": display_id(key), "status": "new",
                "created_at": utc_now(), "analysed_at": None, "reviewed_at": None,
                "kind": image.kind, "origin": origin, "n_files": len(staged.files),
                "n_discs": None, "n_findings": None, "levels_with_findings": [],
                "uploaded_by": user, "error": None,
                "input": "original" if len(staged.files) > 1 else f"original/{analysed}",
                "analysed_file": f"original/{analysed}", "frame": image.frame,
                "width": image.width, "height": image.height, "bits": image.bits,
                "pixel_range": [float(finite.min()), float(finite.max())] if finite.size
                else [0.0, 0.0],
                "default_window": default_window(image),
            }
            write_json(folder / "meta.json", meta)
        log.info("study %s stored (%s, %d files)", key, image.kind, len(staged.files))
        return meta, False

    def _upgrade(self, key: str, staged: StagedStudy, image: MedicalImage, user: str | None,
                 origin: str) -> dict[str, Any]:
        """Replace ``key``'s files by a staged upload that holds more series of the same study
        (e.g. T1+T2 after T2 alone): the earlier files and every output and review move to
        ``history/<n>/``, the new files become ``original/``, and the study is ``new`` again
        (analysed anew, e.g. as a T1+T2 pair; a fresh review). Caller holds the lock."""
        folder = self.root / key
        meta = self.meta(key)
        history = folder / "history"
        history.mkdir(exist_ok=True)
        past = private_dir(history / str(len(meta.get("history", [])) + 1))
        for item in sorted(folder.iterdir()):
            if item.name not in ("history", "meta.json", "image.png", "pixels.npy"):
                shutil.move(str(item), past / item.name)
        analysed = Path(image.source).name
        shutil.move(str(staged.folder), folder / "original")
        record = {"time": utc_now(), "by": user, "origin": origin, "folder": f"history/{past.name}",
                  "n_files": meta.get("n_files"), "status": meta.get("status"),
                  "reviewed_at": meta.get("reviewed_at")}
        meta.update(status="new", analysed_at=None, reviewed_at=None, error=None,
                    n_discs=None, n_findings=None, levels_with_findings=[],
                    n_files=len(staged.files), analysed_file=f"original/{analysed}",
                    input="original" if len(staged.files) > 1 else f"original/{analysed}",
                    frame=image.frame, upgraded_at=record["time"],
                    history=[*meta.get("history", []), record])
        write_json(folder / "meta.json", meta)
        log.info("study %s upgraded: %d files now (earlier upload in %s)", key,
                 len(staged.files), record["folder"])
        return meta

    # -- images ---------------------------------------------------------------------------------
    def pixels(self, key: str) -> np.ndarray:
        """float32 ``[H, W]`` stored values of the analysed slice (after the modality
        transform for DICOM)."""
        return np.load(self.folder(key) / "pixels.npy", allow_pickle=False)

    def header(self, key: str) -> Any:
        """The DICOM header of the analysed slice, or ``None`` for PNG/JPEG."""
        meta = self.meta(key)
        if meta.get("kind") != "dicom":
            return None
        from lumbardx.data.dicom import read_header

        return read_header(self.folder(key) / meta["analysed_file"])
