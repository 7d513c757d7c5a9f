"""Reading 2-D images (PNG, JPEG, single DICOM slices) into one :class:`MedicalImage` type.

Every reader returns the raw grayscale intensities (``pixels``, float32 ``[H, W]``) and an 8-bit
display image (``display``, uint8 ``[H, W]``) that detectors and overlays use. Pixel rows and
columns are kept as stored in the file (no EXIF rotation, no flipping), so boxes drawn on the
file by annotation tools such as LabelImg stay valid.

The file type is found from the file's first bytes, not its extension (a PNG or JPEG named
``.dcm`` is read as what it is, with a warning). Sizes are checked from the header before anything
is decoded: an image with more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`) is
refused. An image longer than ``max_side`` (default
:data:`~lumbardx.data.decode.MAX_DISPLAY_SIDE`) on a side is reduced on read by an integer step
(JPEG: decoded at 1/2, 1/4 or 1/8 scale by libjpeg first, ``draft``), so that the float copies
made from it stay small whatever the file's size. Every problem raises
:class:`~lumbardx.data.errors.ImageReadError` naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from lumbardx.data.decode import MAX_DISPLAY_SIDE, reduction_step
from lumbardx.data.dicom import dicom_size, read_dicom, read_header
from lumbardx.data.errors import ImageReadError
from lumbardx.data.medical_image import (  # noqa: F401 - the image type is public here too
    DISPLAY_PERCENTILES,
    EXIF_ORIENTATIONS,
    LUMA_WEIGHTS,
    MAX_PIXELS,
    ImageKind,
    MedicalImage,
    luminance,
    percentile_display,
    window_to_uint8,
)
from lumbardx.data.sniff import sniff_kind, unknown_format

log = logging.getLogger(__name__)

DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom", ".dic", ".ima", ""})
# Bits per sample of Pillow modes (MedicalImage.bits); modes not listed have 8.
_MODE_BITS: dict[str, int] = {"1": 1, "I": 16, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}
# Modes Image.reduce averages meaningfully; others are converted first (palette indices and
# bilevel pixels cannot be averaged, Pillow does not reduce 16-bit modes).
_REDUCIBLE_MODES: frozenset[str] = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "I", "F"})
# EXIF Orientation -> the transpose showing the stored pixels upright (ImageOps.exif_transpose)
_EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90}

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


def _pil_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels float32 [H, W], display uint8 [H, W])`` from a decoded Pillow image."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(img).astype(np.float32)
        return pixels, percentile_display(pixels)
    if mode in ("L", "1"):
        display = np.asarray(img.convert("L") if mode == "1" else img, dtype=np.uint8).copy()
        return display.astype(np.float32), display
    if mode == "LA":
        display = np.asarray(img, dtype=np.uint8)[..., 0].copy()
        return display.astype(np.float32), display
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img, dtype=np.uint8)
    else:  # P, PA, CMYK, YCbCr, LAB, HSV: through Pillow's RGB conversion
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    pixels = luminance(rgb)
    return pixels, np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """The decoded ``img``, or a copy at most ``max_side`` pixels long: the mean of
    ``step x step`` blocks (:func:`~lumbardx.data.decode.reduction_step`), as for DICOM."""
    step = reduction_step(img.height, img.width, max_side)
    if step == 1:
        return img
    if img.mode not in _REDUCIBLE_MODES:
        img = img.convert("I" if img.mode.startswith("I;16") else
                          "L" if img.mode == "1" else "RGB")
    return img.reduce(step)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation of an opened PNG / JPEG (1-8; 1 when absent or invalid)."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no orientation
        return 1
    return value if value in EXIF_ORIENTATIONS else 1


def _read_pil(path: Path, kind: ImageKind, max_pixels: int, max_side: int | None,
              exif: bool = False) -> MedicalImage:
    img = _open_pil(path, kind, max_pixels)
    with img:
        orientation = exif_orientation(img) if exif else 1
        bits = _MODE_BITS.get(img.mode, 8)
        step = reduction_step(img.height, img.width, max_side)
        if kind == "jpeg" and step > 1:  # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly
            img.draft(img.mode, (-(-img.width // step), -(-img.height // step)))
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"image is too large to decode safely ({exc})") from exc
        except Exception as exc:  # truncated data, bad CRC, broken Huffman tables ...
            raise ImageReadError(path, f"damaged or truncated {kind.upper()} data: {exc}"
                                 ) from exc
        reduced = _reduced(img, max_side)
        if orientation != 1:  # transposed as viewers show it (Pillow's exif_transpose)
            reduced = reduced.transpose(_EXIF_TRANSPOSE[orientation])
        pixels, display = _pil_arrays(reduced)
    return MedicalImage(pixels=pixels, display=display, pixel_spacing=None, source=path,
                        kind=kind, header=None, bits=bits, exif_orientation=orientation)


def read_image(
    path: str | Path, max_pixels: int = MAX_PIXELS, *, require_mr: bool = False,
    max_side: int | None = MAX_DISPLAY_SIDE, exif: bool = False,
) -> MedicalImage:
    """Read a PNG, JPEG or single-frame DICOM file.

    Args:
        path: the file; its type is found from its content (a file named ``.dcm`` that is not
            DICOM is refused with a clear message; one that holds a PNG or JPEG is read as
            such, with a warning).
        max_pixels: largest accepted rows x columns, checked from the header before decoding.
        require_mr: for DICOM, refuse files whose Modality is not ``MR``.
        max_side: longest side of the returned image in pixels; larger images are reduced
            by an integer step (DICOM pixel spacing scaled by it; ``None``: full size).
        exif: apply a PNG / JPEG's EXIF Orientation, so that the pixels are those image
            viewers show (``MedicalImage.exif_orientation`` records it). Off for annotated
            datasets: LabelImg draws boxes on the stored pixels.

    Returns:
        The image (see :class:`MedicalImage` for the arrays and their units).

    Raises:
        ImageReadError: missing, empty, unknown, damaged, truncated or oversized file.
    """
    path = Path(path)
    kind = sniff_kind(path)
    if kind == "dicom" or (kind is None and path.suffix.lower() in DICOM_EXTENSIONS):
        return read_dicom(path, max_pixels=max_pixels, require_mr=require_mr,
                          max_side=max_side)
    if kind is None:
        raise unknown_format(path)
    if path.suffix and path.suffix.lower() in DICOM_EXTENSIONS:
        log.warning("%s: named like a DICOM file but holds a %s image; reading it as %s "
                    "(no DICOM header: no pixel spacing, no patient data)", path,
                    kind.upper(), kind.upper())
    return _read_pil(path, kind, max_pixels, max_side, exif)


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
        raise unknown_format(path)
    img = _open_pil(path, kind, max_pixels=2**62)
    with img:
        return img.size[0], img.size[1], len(img.getbands())


def file_exif_orientation(path: str | Path) -> int:
    """The EXIF Orientation (1-8) a PNG / JPEG file carries, read from its header; 1 for
    other files, files without one and unreadable ones (:func:`read_image` reports those)."""
    path = Path(path)
    if sniff_kind(path) not in ("png", "jpeg"):
        return 1
    try:
        with Image.open(path) as img:
            return exif_orientation(img)
    except Exception:  # noqa: BLE001 - the reader, not this helper, reports damaged files
        return 1


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels read from the header only (:func:`image_dimensions`).

    Raises:
        ImageReadError: as :func:`read_image` for unknown or damaged files.
    """
    width, height, _ = image_dimensions(path)
    return width, height
