"""Uploaded files of one study: type check by content, safe ZIP unpacking, staging under
neutral names.

Accepted (decided by the leading bytes, never by the file name):

* DICOM Part 10 (``DICM`` at byte 128), one or many files of one study;
* one PNG (``\\x89PNG\\r\\n\\x1a\\n``) or one JPEG (``\\xff\\xd8\\xff``);
* one ZIP (``PK\\x03\\x04``) of a DICOM folder. Members are checked before anything is written:
  no absolute path, no ``..`` component, no link, no encryption, at most ``max_members``
  members; while unpacking, the bytes actually inflated are counted against
  ``max_unpacked_bytes`` (a ZIP's declared sizes are not trusted). Members that are not DICOM
  (``DICOMDIR`` aside, e.g. a viewer program on a CD image) are ignored.

Files are staged as ``file-000.dcm``, ``file-001.dcm``, ... (``.png`` / ``.jpg``): uploaded
names often carry patient names and are not kept.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from lumbardx.app.files import private_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 20


class UploadError(Exception):
    """An upload refused as a whole: ``status`` is the HTTP status (400, 413, 415), ``detail``
    says why in words (naming the file as the user named it)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class StagedStudy:
    """Files of one study ready to read.

    Attributes:
        kind: ``"dicom"``, ``"png"`` or ``"jpeg"``.
        folder: the staging folder holding the files.
        files: the staged files (neutral names).
    """

    kind: str
    folder: Path
    files: list[Path]

    @property
    def input_path(self) -> Path:
        """What :func:`lumbardx.data.series.load_study` reads: the file when there is one,
        else the folder."""
        return self.files[0] if len(self.files) == 1 else self.folder


def sniff(head: bytes) -> str | None:
    """``"dicom"``, ``"png"``, ``"jpeg"``, ``"zip"`` or ``None`` from a file's first 132
    bytes."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    return None


def shown_name(name: str | None, index: int) -> str:
    """A file's name for an error message: its last component, printable, at most 80
    characters; ``file <index>`` when it has none."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name
    base = "".join(c if c.isprintable() else "?" for c in base)[:80]
    return base or f"file {index + 1}"


def _why_not(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if head[:1] in (b"{", b"[", b"<") or all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it is text, not an image (a DICOM file has 'DICM' at byte 128)"
    return "unknown content (a DICOM file has 'DICM' at byte 128)"


def _unsafe(name: str) -> bool:
    """Whether a ZIP member name could escape the folder it is unpacked into."""
    if not name or name.startswith(("/", "\\")) or "\x00" in name:
        return True
    if PureWindowsPath(name).drive:
        return True
    parts = name.replace("\\", "/").split("/")
    return any(p == ".." for p in parts)


def _check_zip(zf: zipfile.ZipFile, shown: str, max_members: int) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise UploadError(400, f"{shown}: ZIP holds {len(infos)} members; at most "
                               f"{max_members} are accepted")
    members = []
    for k, info in enumerate(infos, start=1):
        if _unsafe(info.filename):
            raise UploadError(400, f"{shown}: ZIP member {k} has an unsafe path "
                                   f"({info.filename[:80]!r}: absolute or with '..'); "
                                   "nothing was unpacked")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UploadError(400, f"{shown}: ZIP member {k} is a symbolic link; nothing was "
                                   "unpacked")
        if info.flag_bits & 0x1:
            raise UploadError(400, f"{shown}: ZIP member {k} is encrypted")
        if not info.is_dir():
            members.append(info)
    return members


def _unzip(source: Path, shown: str, dest: Path, first_index: int, max_bytes: int,
           max_members: int) -> list[Path]:
    """DICOM members of a ZIP written as ``file-NNN.dcm`` in ``dest``."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(400, f"{shown}: not a readable ZIP file ({exc})") from None
    written: list[Path] = []
    total = 0
    with zf:
        for info in _check_zip(zf, shown, max_members):
            target = dest / f"file-{first_index + len(written):03d}.dcm"
            try:
                with zf.open(info) as src, target.open("wb") as out:
                    head = b""
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise UploadError(413, f"{shown}: ZIP unpacks to more than "
                                                   f"{max_bytes // (1024 * 1024)} MB")
                        if len(head) < 132:
                            head += chunk[:132 - len(head)]
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
                target.unlink(missing_ok=True)
                raise UploadError(400, f"{shown}: ZIP member cannot be unpacked "
                                       f"({type(exc).__name__})") from None
            except UploadError:
                target.unlink(missing_ok=True)
                raise
            if sniff(head) == "dicom":
                written.append(target)
            else:
                target.unlink()
    if not written:
        raise UploadError(415, f"{shown}: ZIP holds no DICOM file")
    return written


def stage_upload(files: Sequence[tuple[str | None, BinaryIO]], staging: Path, *,
                 max_unpacked_bytes: int, max_zip_members: int) -> StagedStudy:
    """Check and copy the files of one upload into ``staging/files/``.

    Args:
        files: ``(name as uploaded, readable binary stream)`` pairs.
        staging: a fresh private folder.
        max_unpacked_bytes, max_zip_members: ZIP limits (module docstring).

    Raises:
        UploadError: no files (400), an unsupported type (415), several PNG/JPEG or a mix of
            types (400), an unsafe or oversized ZIP (400/413).
    """
    if not files:
        raise UploadError(400, "no files: send one study as the form field 'files'")
    out = private_dir(staging / "files")
    kinds: list[str] = []
    heads = []
    for i, (name, stream) in enumerate(files):
        stream.seek(0)
        head = stream.read(132)
        stream.seek(0)
        kind = sniff(head)
        if kind is None:
            raise UploadError(415, f"{shown_name(name, i)}: not a DICOM, PNG, JPEG or ZIP file "
                                   f"({_why_not(head)})")
        kinds.append(kind)
        heads.append(head)
    if "zip" in kinds and len(files) > 1:
        raise UploadError(400, "a ZIP must be uploaded on its own (one ZIP of one study)")
    if set(kinds) & {"png", "jpeg"} and len(files) > 1:
        raise UploadError(400, "upload one PNG or JPEG per study (or the DICOM files of one "
                               "study)")
    staged: list[Path] = []
    if kinds[0] == "zip":
        name, stream = files[0]
        raw = staging / "upload.zip"
        with raw.open("wb") as fh:
            shutil.copyfileobj(stream, fh, _CHUNK)
        try:
            staged = _unzip(raw, shown_name(name, 0), out, 0, max_unpacked_bytes,
                            max_zip_members)
        finally:
            raw.unlink(missing_ok=True)
        return StagedStudy("dicom", out, staged)
    suffix = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}
    for i, ((_, stream), kind) in enumerate(zip(files, kinds, strict=True)):
        target = out / f"file-{i:03d}{suffix[kind]}"
        with target.open("wb") as fh:
            shutil.copyfileobj(stream, fh, _CHUNK)
        staged.append(target)
    return StagedStudy(kinds[0], out, staged)


def stage_folder(folder: Path, staging: Path) -> StagedStudy:
    """Stage DICOM files already on disk (a PACS pull) under neutral names (moved)."""
    out = private_dir(staging / "files")
    staged = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        with path.open("rb") as fh:
            if sniff(fh.read(132)) != "dicom":
                continue
        target = out / f"file-{len(staged):03d}.dcm"
        shutil.move(str(path), target)
        staged.append(target)
    if not staged:
        raise UploadError(422, "the series holds no DICOM file")
    return StagedStudy("dicom", out, staged)
