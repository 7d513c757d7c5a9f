"""The image type every reader returns, and the intensity helpers they share.

Kept apart from the readers (:mod:`lumbardx.data.images` for PNG / JPEG and dispatch,
:mod:`lumbardx.data.dicom` for DICOM) so that each reader imports it without importing the
other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import pydicom

ImageKind = Literal["png", "jpeg", "dicom"]

#: Largest image accepted, in pixels (rows x columns). Lumbar MRI slices are at most about
#: 1024 x 1024 and exported screenshots a few megapixels; 50 megapixels leaves ample room while
#: stopping decompression bombs. Override per call (``max_pixels=``) or for the whole process
#: with the environment variable ``LUMBARDX_MAX_PIXELS``.
MAX_PIXELS: int = int(os.environ.get("LUMBARDX_MAX_PIXELS", 50_000_000))

#: Percentiles of the robust display window used when a file carries no window of its own.
DISPLAY_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: What EXIF Orientation 2-8 does to the stored pixels to show them upright (TIFF 6.0 /
#: EXIF 2.3 tag 0x0112; 1 = as stored).
EXIF_ORIENTATIONS: dict[int, str] = {
    2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
    5: "mirrored and rotated 90 degrees", 6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated 90 degrees", 8: "rotated 90 degrees counter-clockwise"}

#: ITU-R BT.601 luma weights (the weights Pillow's ``convert("L")`` uses) for RGB -> gray.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

@dataclass
class MedicalImage:
    """One 2-D grayscale image ready for detection and display.

    Attributes:
        pixels: float32 ``[H, W]`` raw grayscale intensities: for DICOM the stored values after
            the modality transform (Rescale Slope / Intercept or Modality LUT), not inverted for
            MONOCHROME1; for PNG / JPEG the stored gray values, RGB converted to BT.601 luminance
            (alpha ignored).
        display: uint8 ``[H, W]`` display image, dark = low signal as in MONOCHROME2. DICOM:
            the file's VOI LUT or window centre / width, else a robust 0.5-99.5 percentile
            window, MONOCHROME1 inverted. 8-bit PNG / JPEG: the gray values as stored. 16-bit
            PNG: the 0.5-99.5 percentile window.
        pixel_spacing: ``(row, column)`` spacing in millimetres (DICOM Pixel Spacing), or
            ``None`` when unknown (always ``None`` for PNG / JPEG: their DPI is not anatomy).
        source: the file read.
        kind: ``"png"``, ``"jpeg"`` or ``"dicom"``.
        header: for DICOM, the data set without its pixel data (for referencing in DICOM SR or
            Secondary Capture output); ``None`` otherwise.
        bits: bits per sample as stored (DICOM Bits Stored; 8 or 16 for PNG; 1 for bilevel).
        frame: 0-based frame index inside a multi-frame DICOM file, else ``None``.
        exif_orientation: the EXIF Orientation (2-8) of a PNG / JPEG that was applied to give
            the pixels as image viewers show them (``read_image(..., exif=True)``); 1 when
            none was applied.
    """

    pixels: np.ndarray
    display: np.ndarray
    pixel_spacing: tuple[float, float] | None
    source: Path
    kind: ImageKind
    header: pydicom.Dataset | None = None
    bits: int = 8
    frame: int | None = None
    exif_orientation: int = 1

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2 or self.pixels.dtype != np.float32:
            raise ValueError(f"pixels must be float32 [H, W], got {self.pixels.dtype} "
                             f"{self.pixels.shape}")
        if self.display.shape != self.pixels.shape or self.display.dtype != np.uint8:
            raise ValueError(f"display must be uint8 {self.pixels.shape}, got "
                             f"{self.display.dtype} {self.display.shape}")

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.pixels.shape[1])


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``values`` linearly so that ``low`` -> 0 and ``high`` -> 255, clipped, as uint8.

    ``high < low`` gives an inverted ramp; ``high == low`` gives a threshold at ``low``.
    """
    values = np.asarray(values, dtype=np.float64)
    if high == low:
        return np.where(values > low, 255, 0).astype(np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def percentile_display(
    pixels: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES
) -> np.ndarray:
    """uint8 ``[H, W]`` display of ``pixels`` windowed between two percentiles.

    Falls back to the min-max range when the percentiles coincide (e.g. mostly background).
    """
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0:
        return np.zeros(pixels.shape, dtype=np.uint8)
    low, high = np.percentile(finite, percentiles)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    return window_to_uint8(np.nan_to_num(pixels, nan=low), float(low), float(high))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """float32 ``[H, W]`` BT.601 luminance of an RGB(A) array ``[H, W, 3 or 4]`` (alpha dropped)."""
    rgb = rgb[..., :3].astype(np.float32)
    return (rgb @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)).astype(np.float32)
