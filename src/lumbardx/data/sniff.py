"""What a file holds, from its leading bytes: PNG, JPEG, DICOM, or what else a user may have
handed in by mistake (TIFF, BMP, PDF, ZIP...), for a message that says so.

Shared by the image readers (:mod:`lumbardx.data.images`) and the DICOM reader
(:mod:`lumbardx.data.dicom`), which import it and not each other.
"""

from __future__ import annotations

from pathlib import Path

from lumbardx.data.errors import ImageReadError
from lumbardx.data.medical_image import ImageKind

# Leading bytes of formats users may hand in by mistake, for a helpful message.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (unpack it first)"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file"),
)


def _check_file(path: Path) -> bytes:
    """The first 132 bytes of ``path``, after checking that it is a non-empty regular file."""
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageReadError(path, f"cannot be opened: {exc.strerror or exc}") from exc
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return head


def sniff_kind(path: Path) -> ImageKind | None:
    """The image kind from the file's leading bytes, or ``None`` when not PNG, JPEG or DICOM.

    DICOM means a Part 10 file with the ``DICM`` marker at byte 128.

    Raises:
        ImageReadError: the file is missing, a folder, unreadable or empty.
    """
    head = _check_file(Path(path))
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def unknown_format(path: Path) -> ImageReadError:
    """The error for a file that is not PNG, JPEG or DICOM, naming what it is when known."""
    head = _check_file(path)
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return ImageReadError(path, f"is {name}; lumbardx reads PNG, JPEG and DICOM: "
                                        "convert it to PNG")
    return ImageReadError(path, "is not a PNG, JPEG or DICOM file (unrecognised content)")
