"""Reading 2-D images (PNG, JPEG, single DICOM slices) into one :class:`MedicalImage` type.

Every reader returns the raw grayscale intensities (``pixels``, float32 ``[H, W]``) and an 8-bit
display image (``display``, uint8 ``[H, W]``) that detectors and overlays use. Pixel rows and
columns are kept as stored in the file (no EXIF rotation, no flipping), so boxes drawn on the
file by annotation tools such as LabelImg stay valid.

The file type is found from the file's first bytes, not its extension. Sizes are checked from the
header before anything is decoded: an image with more than ``max_pixels`` pixels (default
:data:`MAX_PIXELS`) is refused. Every problem raises :class:`~lumbardx.data.errors.ImageReadError`
naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lumbardx.data.dicom import dicom_size, read_dicom, read_header
from lumbardx.data.errors import ImageReadError
from lumbardx.data.medical_image import (  # noqa: F401 - the image type is public here too
    DISPLAY_PERCENTILES,
    LUMA_WEIGHTS,
    MAX_PIXELS,
    ImageKind,
    MedicalImage,
    luminance,
    percentile_display,
    window_to_uint8,
)

DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom", ".dic", ".ima", ""})

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


def _unknown_format(path: Path) -> ImageReadError:
    head = _check_file(path)
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return ImageReadError(path, f"is {name}; lumbardx reads PNG, JPEG and DICOM: "
                                        "convert it to PNG")
    return ImageReadError(path, "is not a PNG, JPEG or DICOM file (unrecognised content)")


def _open_pil(path: Path, kind: ImageKind, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the declared size against ``max_pixels``."""
    try:
        # lumbardx applies its own limit below. Pillow's global Image.MAX_IMAGE_PIXELS is left
        # alone (changing it would affect the whole process); its hard stop at twice that value
        # raises DecompressionBombError, turned into ImageReadError here.
        img = Image.open(path, formats=["PNG" if kind == "png" else "JPEG"])
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"declared image size is too large to decode safely ({exc})"
                             ) from exc
    except Exception as exc:  # Pillow raises several types for a damaged header
        raise ImageReadError(path, f"damaged {kind.upper()} header: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageReadError(path, f"image is {width} x {height} = {width * height:,} pixels, "
                                   f"above the limit of {max_pixels:,} pixels")
    if width == 0 or height == 0:
        img.close()
        raise ImageReadError(path, f"image has no pixels ({width} x {height})")
    return img


def _pil_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray, int]:
    """``(pixels float32 [H, W], display uint8 [H, W], bits)`` from a decoded Pillow image."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(img).astype(np.float32)
        return pixels, percentile_display(pixels), 16
    if mode == "L":
        display = np.asarray(img, dtype=np.uint8).copy()
        return display.astype(np.float32), display, 8
    if mode == "1":
        display = np.asarray(img.convert("L"), dtype=np.uint8).copy()
        return display.astype(np.float32), display, 1
    if mode == "LA":
        display = np.asarray(img, dtype=np.uint8)[..., 0].copy()
        return display.astype(np.float32), display, 8
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img, dtype=np.uint8)
    else:  # P, PA, CMYK, YCbCr, LAB, HSV: through Pillow's RGB conversion
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    pixels = luminance(rgb)
    return pixels, np.clip(np.rint(pixels), 0, 255).astype(np.uint8), 8


def _read_pil(path: Path, kind: ImageKind, max_pixels: int) -> MedicalImage:
    img = _open_pil(path, kind, max_pixels)
    with img:
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"image is too large to decode safely ({exc})") from exc
        except Exception as exc:  # truncated data, bad CRC, broken Huffman tables ...
            raise ImageReadError(path, f"damaged or truncated {kind.upper()} data: {exc}"
                                 ) from exc
        pixels, display, bits = _pil_arrays(img)
    return MedicalImage(pixels=pixels, display=display, pixel_spacing=None, source=path,
                        kind=kind, header=None, bits=bits)


def read_image(
    path: str | Path, max_pixels: int = MAX_PIXELS, *, require_mr: bool = False
) -> MedicalImage:
    """Read a PNG, JPEG or single-frame DICOM file.

    Args:
        path: the file; its type is found from its content (a file named ``.dcm`` that is not
            DICOM is refused with a clear message).
        max_pixels: largest accepted rows x columns, checked from the header before decoding.
        require_mr: for DICOM, refuse files whose Modality is not ``MR``.

    Returns:
        The image (see :class:`MedicalImage` for the arrays and their units).

    Raises:
        ImageReadError: missing, empty, unknown, damaged, truncated or oversized file.
    """
    path = Path(path)
    kind = sniff_kind(path)
    if kind == "dicom" or (kind is None and path.suffix.lower() in DICOM_EXTENSIONS):
        return read_dicom(path, max_pixels=max_pixels, require_mr=require_mr)
    if kind is None:
        raise _unknown_format(path)
    return _read_pil(path, kind, max_pixels)


def image_dimensions(path: str | Path) -> tuple[int, int, int]:
    """``(width, height, depth)`` in pixels read from the header only (no pixel decoding).

    ``depth`` is the number of samples per pixel: PNG / JPEG the number of bands (1 gray,
    2 gray + alpha, 3 RGB, 4 RGBA), DICOM ``Samples per Pixel`` (1 when absent).

    Raises:
        ImageReadError: as :func:`read_image` for unknown or damaged files.
    """
    path = Path(path)
    kind = sniff_kind(path)
    if kind == "dicom" or (kind is None and path.suffix.lower() in DICOM_EXTENSIONS):
        width, height = dicom_size(path)  # checks Rows / Columns
        return width, height, int(read_header(path).get("SamplesPerPixel") or 1)
    if kind is None:
        raise _unknown_format(path)
    img = _open_pil(path, kind, max_pixels=2**62)
    with img:
        return img.size[0], img.size[1], len(img.getbands())


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels read from the header only (:func:`image_dimensions`).

    Raises:
        ImageReadError: as :func:`read_image` for unknown or damaged files.
    """
    width, height, _ = image_dimensions(path)
    return width, height
