"""Reading one DICOM image (one slice, or one frame of a multi-frame file) with pydicom.

Rules:

* Only DICOM Part 10 files (128-byte preamble + ``DICM``) are read. A file without the marker is
  refused with a message that says whether it looks like a bare DICOM data set; reading such
  files needs the explicit ``force=True`` (never applied silently).
* Pixels: ``pixels`` = stored values through the modality transform
  (:func:`pydicom.pixels.apply_rescale`: Rescale Slope / Intercept or Modality LUT); ``display`` =
  the file's VOI LUT or first window centre / width (:func:`pydicom.pixels.apply_voi_lut`) mapped
  to 0-255, or the 0.5-99.5 percentile window when the file has none. MONOCHROME1 displays are
  inverted so that high signal is bright, as in MONOCHROME2. Colour images (RGB, YBR, PALETTE
  COLOR) become BT.601 luminance.
* Multi-frame files (e.g. Enhanced MR): one frame per call, chosen with ``frame=`` (0-based);
  without it a multi-frame file is refused (``load_study`` picks the mid-sagittal frame).
  Per-frame and shared functional groups are flattened into the frame's header view
  (:func:`frame_header`), so spacing, orientation, rescale and window come from the frame.
* Compressed (encapsulated) transfer syntaxes are decoded by pydicom's pixel plugins (pylibjpeg
  with openjpeg and rle, GDCM, pydicom's own RLE decoder) in a child process
  (:func:`lumbardx.data.decode.run_isolated`): a native decoder that aborts, hangs or exhausts
  memory on damaged data gives an :class:`ImageReadError`, and the caller lives on. Native
  (uncompressed) pixel data is read in the process.
* Headers are checked before any pixel data is read (:func:`check_header`): Rows / Columns
  present, positive and at most :data:`MAX_SIDE`, Bits Allocated 8, 16 or 32, Bits Stored at
  most Bits Allocated, Samples per Pixel 1 or 3, Number of Frames positive, one frame at most
  :data:`MAX_FRAME_BYTES`, a file at most :data:`MAX_FILE_BYTES`; native Pixel Data must hold
  exactly what they declare; Rescale Slope must be finite and non-zero. A Pixel Spacing that is
  not two positive finite numbers is treated as unknown (``None``, as when absent) with a
  warning; a window whose width is not positive and finite is ignored (percentile window) with a
  warning.
* Images longer than ``max_side`` (default :data:`~lumbardx.data.decode.MAX_DISPLAY_SIDE`) on
  a side are reduced on read by the mean of ``step x step`` blocks of stored values; the pixel
  spacing is multiplied by ``step``. The header keeps the file's Rows / Columns.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_rescale, apply_voi_lut, get_decoder
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.uid import UID

from lumbardx.data.decode import (
    MAX_DISPLAY_SIDE,
    DecoderFailed,
    block_mean,
    reduction_step,
    run_isolated,
)
from lumbardx.data.errors import ImageReadError
from lumbardx.data.medical_image import (
    MAX_PIXELS,
    MedicalImage,
    luminance,
    percentile_display,
    window_to_uint8,
)
from lumbardx.data.sniff import sniff_kind

log = logging.getLogger(__name__)

#: Largest angle (degrees) between the slice normal and the patient's left-right (x) axis for a
#: slice to count as sagittal. Lumbar sagittal series are often planned slightly oblique to the
#: spine; 20 degrees accepts those and rejects coronal / axial planes (90 degrees away).
SAGITTAL_TOL_DEG: float = 20.0

#: Largest Rows or Columns accepted. MR slices have at most 1024; digitised films and
#: mammograms reach about 5000. A header claiming more is refused before any pixel data is read.
MAX_SIDE: int = 8192
#: Largest decoded frame accepted, in bytes (Rows x Columns x Samples x Bits Allocated / 8):
#: 50 megapixels of 16-bit gray or 8-bit RGB fit, and no header makes the reader allocate more.
MAX_FRAME_BYTES: int = 256 * 2**20
#: Largest DICOM file read: pydicom reads the whole file into memory. An MR series stored as
#: one multi-frame file is tens of megabytes.
MAX_FILE_BYTES: int = 384 * 2**20
ALLOWED_BITS_ALLOCATED: frozenset[int] = frozenset({8, 16, 32})

PIXEL_DATA_KEYWORDS: tuple[str, ...] = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as written in little endian files
_GROUP_SEQUENCES = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_MODALITY_NAMES = {"CT": "computed tomography", "CR": "computed radiography",
                   "DX": "digital radiography", "US": "ultrasound", "PT": "PET",
                   "NM": "nuclear medicine", "OT": "other", "SR": "structured report",
                   "XA": "X-ray angiography", "MG": "mammography"}


def read_header(path: str | Path, *, force: bool = False) -> Dataset:
    """The data set of ``path`` without pixel data (``stop_before_pixels``).

    Raises:
        ImageReadError: not DICOM (no ``DICM`` marker), damaged or truncated header, unreadable.
    """
    path = Path(path)
    return _dcmread(path, stop_before_pixels=True, force=force)


def _dcmread(path: Path, *, stop_before_pixels: bool, force: bool) -> Dataset:
    if not path.is_file():
        raise ImageReadError(path, "file does not exist" if not path.exists() else "is a folder")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if not stop_before_pixels and size > MAX_FILE_BYTES:
        raise ImageReadError(path, f"file is {size / 2**20:,.0f} MiB, above the limit of "
                                   f"{MAX_FILE_BYTES / 2**20:,.0f} MiB for one DICOM image")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force)
    except InvalidDicomError as exc:
        raise ImageReadError(path, _why_not_dicom(path)) from exc
    except Exception as exc:  # EOFError, struct.error, OSError, ValueError on damaged files
        raise ImageReadError(path, f"damaged or truncated DICOM file: {exc}") from exc


def _why_not_dicom(path: Path) -> str:
    """Explain a missing ``DICM`` marker; a forced read is used only to word the message."""
    kind = sniff_kind(path)
    if kind in ("png", "jpeg"):
        return (f"holds a {kind.upper()} image, not DICOM (whatever its name says); read it as "
                "an image (read_image and load_study go by the content)")
    try:
        probe = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        looks_dicom = "SOPClassUID" in probe or ("Rows" in probe and "Columns" in probe)
    except Exception:
        looks_dicom = False
    if looks_dicom:
        return ("has no DICOM file header (no 'DICM' marker at byte 128) but looks like a bare "
                "DICOM data set; re-save it as a DICOM Part 10 file, or read it with force=True "
                "if you trust its source")
    return "is not a DICOM file (no 'DICM' marker at byte 128)"


def number_of_frames(header: Dataset) -> int:
    """Number of frames (1 for a classic single-slice file)."""
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frame_header(header: Dataset, frame: int | None = None) -> Dataset:
    """A flat view of ``header`` for one frame: the items of the shared and then the frame's
    per-frame functional group macros (Pixel Measures, Plane Orientation / Position, Pixel Value
    Transformation, Frame VOI LUT ...) copied to the top level, per-frame winning.

    Returns ``header`` itself when it has no functional groups (classic DICOM).
    """
    if not any(k in header for k in _GROUP_SEQUENCES):
        return header
    view = Dataset()
    for elem in header:
        if elem.keyword not in _GROUP_SEQUENCES and elem.keyword not in PIXEL_DATA_KEYWORDS:
            view.add(elem)
    if hasattr(header, "file_meta"):
        view.file_meta = header.file_meta
    groups = []
    if header.get("SharedFunctionalGroupsSequence"):
        groups.append(header.SharedFunctionalGroupsSequence[0])
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    if frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    for group in groups:
        for macro in group:
            if macro.VR == "SQ" and macro.value:
                for elem in macro.value[0]:
                    view[elem.tag] = elem
    return view


def image_orientation(header: Dataset) -> np.ndarray | None:
    """float64 ``[2, 3]`` unit row and column direction cosines (patient LPS), or ``None``
    when Image Orientation (Patient) is absent or unusable."""
    iop = frame_header(header, 0).get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    try:
        cosines = np.asarray([float(v) for v in iop], dtype=np.float64).reshape(2, 3)
    except (TypeError, ValueError):
        return None
    norms = np.linalg.norm(cosines, axis=1, keepdims=True)
    if not np.all(np.isfinite(cosines)) or np.any(norms < 1e-6):
        return None
    cosines = cosines / norms
    if np.linalg.norm(np.cross(cosines[0], cosines[1])) < 0.5:  # row ~ parallel to column
        return None
    return cosines


def slice_normal(header: Dataset) -> np.ndarray:
    """float64 ``[3]`` unit slice normal = row cosine x column cosine (patient LPS axes).

    Raises:
        ImageReadError: Image Orientation (Patient) missing or degenerate.
    """
    cosines = image_orientation(header)
    if cosines is None:
        raise ImageReadError(getattr(header, "filename", None) or None,
                             "has no usable Image Orientation (Patient)")
    normal = np.cross(cosines[0], cosines[1])
    return normal / np.linalg.norm(normal)


def plane_name(header: Dataset, tol_deg: float = SAGITTAL_TOL_DEG) -> str:
    """``"sagittal"``, ``"coronal"``, ``"axial"``, ``"oblique"`` (normal more than ``tol_deg``
    from every patient axis) or ``"unknown"`` (no usable orientation)."""
    if image_orientation(header) is None:
        return "unknown"
    normal = np.abs(slice_normal(header))
    axis = int(np.argmax(normal))
    if normal[axis] < np.cos(np.deg2rad(tol_deg)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def is_sagittal(header: Dataset, tol_deg: float = SAGITTAL_TOL_DEG) -> bool:
    """``True`` when the slice normal lies within ``tol_deg`` of the patient x (left-right) axis,
    i.e. the row and column cosines have ~0 x-component. ``False`` without orientation."""
    if image_orientation(header) is None:
        return False
    return bool(abs(slice_normal(header)[0]) >= np.cos(np.deg2rad(tol_deg)))


def pixel_spacing(header: Dataset, frame: int | None = None) -> tuple[float, float] | None:
    """``(row, column)`` Pixel Spacing in mm (functional groups included), or ``None``."""
    value = frame_header(header, frame).get("PixelSpacing")
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 and np.isfinite([row, col]).all() else None


def check_modality(header: Dataset, path: str | Path, require_mr: bool) -> None:
    """Raise :class:`ImageReadError` when ``require_mr`` and Modality is not ``MR``."""
    if not require_mr:
        return
    modality = str(header.get("Modality", "") or "").upper()
    if modality == "MR":
        return
    what = (f"{modality} ({_MODALITY_NAMES[modality]})" if modality in _MODALITY_NAMES
            else modality or "not stated")
    raise ImageReadError(path, f"modality is {what}, not MR: lumbardx analyses MR images only")


#: Body Part Examined (0018,0015) values, spaces, hyphens and underscores removed, of regions
#: that cannot show the lumbar spine (DICOM PS3.16 CID 4031 and common vendor spellings). A
#: study of one of these is refused; a missing, generic (``SPINE``, ``ABDOMEN``) or unknown
#: value is not (the attribute is often empty or vendor-specific).
NOT_LUMBAR_BODY_PARTS = frozenset({
    "HEAD", "BRAIN", "SKULL", "FACE", "ORBIT", "IAC", "SELLA", "SINUS", "JAW", "TMJ", "NECK",
    "CSPINE", "CERVICALSPINE", "TSPINE", "THORACICSPINE", "CHEST", "THORAX", "HEART",
    "BREAST", "SHOULDER", "ARM", "UPPERARM", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER",
    "THUMB", "HIP", "THIGH", "FEMUR", "KNEE", "LEG", "LOWERLEG", "ANKLE", "FOOT", "TOE",
    "EXTREMITY", "UPPEREXTREMITY", "LOWEREXTREMITY", "UPPERLIMB", "LOWERLIMB"})


def body_part(header: Dataset) -> str:
    """Body Part Examined as written (stripped; ``""`` when absent)."""
    return str(header.get("BodyPartExamined", "") or "").strip()


def not_lumbar(part: str) -> bool:
    """Whether a Body Part Examined value names a region that cannot show the lumbar spine
    (:data:`NOT_LUMBAR_BODY_PARTS`)."""
    return re.sub(r"[\s_\-]", "", part.upper()) in NOT_LUMBAR_BODY_PARTS


def check_body_part(header: Dataset, path: str | Path) -> None:
    """Raise :class:`ImageReadError` when Body Part Examined names a region that cannot show
    the lumbar spine (e.g. ``CSPINE``, ``KNEE``)."""
    part = body_part(header)
    if not_lumbar(part):
        raise ImageReadError(path, f"Body Part Examined is {part!r}: lumbardx reads sagittal "
                                   "MRI of the lumbar spine")


def dicom_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` = ``(Columns, Rows)`` read from the header only."""
    path = Path(path)
    header = read_header(path)
    try:
        return int(header.Columns), int(header.Rows)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(path, "has no Rows / Columns: it is not an image") from exc


def _display_gray(values: np.ndarray, view: Dataset, path: Path) -> np.ndarray:
    """uint8 display of modality-transformed ``values`` through the file's VOI, else percentiles.

    The VOI output range is found by passing the VOI's own extremes through
    :func:`apply_voi_lut` (the whole LUT, or values far outside the window), then mapped
    linearly to 0-255.
    """
    lut_items = view.get("VOILUTSequence") or []
    has_lut = bool(lut_items) and "LUTDescriptor" in lut_items[0] and "LUTData" in lut_items[0]
    has_window = view.get("WindowCenter") is not None and view.get("WindowWidth") is not None
    try:
        if has_lut:
            n_entries, first_map = int(lut_items[0].LUTDescriptor[0] or 2**16), int(
                lut_items[0].LUTDescriptor[1])
            lut_view = _voi_lut_view(view)
            inputs = np.arange(first_map, first_map + n_entries, dtype=np.int64)
            lut = apply_voi_lut(inputs, lut_view).astype(np.float64)
            clipped = np.clip(np.rint(values), first_map, first_map + n_entries - 1)
            out = apply_voi_lut(clipped.astype(np.int64), lut_view).astype(np.float64)
            low, high = (lut[0], lut[-1]) if lut[0] != lut[-1] else (lut.min(), lut.max())
            return window_to_uint8(out, float(low), float(high))
        if has_window:
            centre = float(_first(view.WindowCenter))
            width = float(_first(view.WindowWidth))
            if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
                raise ValueError(f"Window Center / Width {centre:g} / {width:g}: the width "
                                 "must be positive and both finite")
            far = np.asarray([centre - 50 * width - 1, centre + 50 * width + 1])
            low, high = apply_voi_lut(far, view, prefer_lut=False)
            out = apply_voi_lut(values.astype(np.float64), view, prefer_lut=False)
            return window_to_uint8(out, float(low), float(high))
    except (ValueError, TypeError, IndexError, NotImplementedError) as exc:
        log.warning("%s: unusable VOI LUT / window (%s); using a percentile window", path, exc)
    return percentile_display(values.astype(np.float32))


def _voi_lut_view(view: Dataset) -> Dataset:
    """The first VOI LUT of ``view`` in a small data set for :func:`apply_voi_lut`.

    pydicom 3.0 indexes an 8-bit LUT with uint8 indices, so entries past 255 wrap around; the
    entry values of an 8-bit LUT fit in 16 bits, so the copy declares 16 bits per entry (the
    stored LUT Data is parsed the same way either way).
    """
    item = copy.deepcopy(view.VOILUTSequence[0])  # never alter the caller's header
    descriptor = [int(v) for v in item.LUTDescriptor]
    if descriptor[2] == 8:
        item.LUTDescriptor = [descriptor[0], descriptor[1], 16]
    out = Dataset()
    out.VOILUTSequence = [item]
    if hasattr(view, "file_meta"):
        out.file_meta = view.file_meta
    return out


def _first(value: object) -> object:
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def check_header(path: Path, header: Dataset, max_pixels: int = MAX_PIXELS) -> int:
    """Refuse an image header that contradicts itself or claims more than the limits, before
    any pixel data is read (rules: module docstring); returns the number of frames.

    Raises:
        ImageReadError: naming the file and the field.
    """
    rows, cols = _header_int(path, header, "Rows"), _header_int(path, header, "Columns")
    if rows is None or cols is None:
        sop = getattr(header.get("SOPClassUID"), "name", "unknown SOP class")
        raise ImageReadError(path, f"holds no image (no Rows / Columns; SOP class: {sop})")
    for keyword, value in (("Rows", rows), ("Columns", cols)):
        if value <= 0:
            raise ImageReadError(path, f"{keyword} is {value}: the header describes an image "
                                       "without pixels")
        if value > MAX_SIDE:
            raise ImageReadError(path, f"{keyword} is {value:,}, above the limit of "
                                       f"{MAX_SIDE:,} pixels a side")
    if rows * cols > max_pixels:
        raise ImageReadError(path, f"image is {cols} x {rows} = {rows * cols:,} pixels, above "
                                   f"the limit of {max_pixels:,} pixels")
    samples = _header_int(path, header, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise ImageReadError(path, f"Samples per Pixel is {samples}: images have 1 (gray) or "
                                   "3 (colour)")
    bits = _header_int(path, header, "BitsAllocated")
    if bits not in ALLOWED_BITS_ALLOCATED:
        raise ImageReadError(path, f"Bits Allocated is {'missing' if bits is None else bits}: "
                                   "lumbardx reads 8, 16 or 32 bits per sample")
    stored = _header_int(path, header, "BitsStored", bits)
    assert bits is not None and stored is not None
    if not 1 <= stored <= bits:
        raise ImageReadError(path, f"Bits Stored is {stored}, outside 1 to Bits Allocated "
                                   f"({bits})")
    frames = _header_int(path, header, "NumberOfFrames", 1)
    assert frames is not None
    if frames < 1:
        raise ImageReadError(path, f"Number of Frames is {frames}: a file with pixel data "
                                   "holds at least one frame")
    frame_bytes = rows * cols * samples * bits // 8
    if frame_bytes > MAX_FRAME_BYTES:
        raise ImageReadError(path, f"one frame of {cols} x {rows} x {samples} samples of "
                                   f"{bits} bits is {frame_bytes / 2**20:,.0f} MiB, above the "
                                   f"limit of {MAX_FRAME_BYTES / 2**20:,.0f} MiB")
    return frames


def _header_int(path: Path, header: Dataset, keyword: str, default: int | None = None
                ) -> int | None:
    """``header``'s ``keyword`` as an int, ``default`` when absent or empty."""
    value = header.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(_first(value))  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise ImageReadError(path, f"{dictionary_description(keyword)} is {value!r}, not a "
                                   "whole number") from exc


def _check_rescale(path: Path, view: Dataset) -> None:
    """Refuse a Rescale Slope that is 0 or not finite (every pixel would get one value, or
    none), and a Rescale Intercept that is not finite."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = view.get(keyword)
        if value is None or value == "":
            continue
        try:
            number = float(_first(value))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ImageReadError(path, f"{dictionary_description(keyword)} is {value!r}, not a "
                                       "number") from exc
        if not math.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
            raise ImageReadError(path, f"{dictionary_description(keyword)} is {number:g}: the "
                                       "modality transform needs a finite"
                                       + (", non-zero" if keyword == "RescaleSlope" else "")
                                       + " value")


def _check_native_length(path: Path, ds: Dataset, frames: int) -> None:
    """Refuse native (uncompressed) pixel data whose length differs from what Rows x Columns
    x Samples x Bits Allocated x Frames declare: the header does not describe the data, and
    decoding would misplace or invent pixels. Trailing zero bytes are padding (some writers
    add them; pydicom ignores them) and only logged."""
    element = next(ds[k] for k in PIXEL_DATA_KEYWORDS if k in ds)
    data = element.value or b""
    actual = len(data)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = 2 if photometric == "YBR_FULL_422" else int(ds.get("SamplesPerPixel", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated) // 8 * frames
    declared = (f"Rows {int(ds.Rows)} x Columns {int(ds.Columns)} x {samples} samples x "
                f"{int(ds.BitsAllocated)} bits x {frames} frame(s) = {expected:,} bytes")
    if actual < expected:
        raise ImageReadError(path, f"damaged or truncated pixel data: Pixel Data holds "
                                   f"{actual:,} bytes, the header declares {declared}")
    if actual > expected + expected % 2:  # beyond the byte that pads to an even length
        if np.frombuffer(data, np.uint8, offset=expected).any():
            raise ImageReadError(path, f"Pixel Data holds {actual:,} bytes, more than the "
                                       f"header declares ({declared}): Rows, Columns or Bits "
                                       "Allocated are wrong")
        log.warning("%s: Pixel Data ends with %d zero padding bytes beyond the %s; ignored",
                    path, actual - expected, declared)


def _check_decoder(path: Path, ts: UID) -> None:
    """Refuse a transfer syntax no installed pixel decoder handles, before starting one."""
    if not ts.is_transfer_syntax:
        raise ImageReadError(path, f"Transfer Syntax UID {ts} is not a known transfer syntax")
    try:
        available = get_decoder(ts).is_available
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        available = False
    if not available:
        raise ImageReadError(path, f"pixel data is compressed as {ts.name}, which no "
                                   "installed decoder handles (JPEG needs pylibjpeg-libjpeg "
                                   "or python-gdcm)")


def _decode(path: Path, ds: Dataset, frame: int | None) -> np.ndarray:
    """The pixel array of ``ds`` (one frame when ``frame`` is given), errors named by cause."""
    try:
        if frame is None:
            return ds.pixel_array
        return decode_pixels(ds, index=frame)
    except MemoryError:
        raise
    except Exception as exc:  # short pixel data, bad fragments, corrupt compressed stream
        reason = " ".join(str(exc).split())  # one line: pydicom lists each plugin's failure
        raise ImageReadError(path, f"damaged or truncated pixel data: {reason}") from exc


def _reduced_pixels(path: Path, ds: Dataset, frame: int | None, step: int) -> np.ndarray:
    """Stored values of ``frame`` (``[rows, cols]``, or ``[rows, cols, 3]`` for colour; a
    palette mapped to RGB first, as indices cannot be averaged), reduced by ``step``
    (:func:`~lumbardx.data.decode.block_mean`)."""
    arr = _decode(path, ds, frame)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except (ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
            raise ImageReadError(path, f"unusable Palette Color lookup table: {exc}") from exc
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"pixel data has shape {arr.shape}, expected one 2-D frame")
    return block_mean(arr, step)


def _decode_file(path: Path, frame: int | None, step: int, force: bool) -> np.ndarray | str:
    """In the decoder process (:func:`~lumbardx.data.decode.run_isolated`): the file's
    :func:`_reduced_pixels`, or why they cannot be decoded (returned, not raised: the decoder
    process hands back return values, and exceptions only as text)."""
    try:
        return _reduced_pixels(path, _dcmread(path, stop_before_pixels=False, force=force),
                               frame, step)
    except ImageReadError as exc:
        return exc.problem


def _decode_isolated(path: Path, frame: int | None, step: int, force: bool) -> np.ndarray:
    """:func:`_decode_file` in the decoder process; its death, time-out or out-of-memory is an
    :class:`ImageReadError` like any damaged file."""
    try:
        result = run_isolated(_decode_file, path, frame, step, force)
    except DecoderFailed as exc:
        raise ImageReadError(path, "compressed pixel data could not be decoded "
                                   f"({exc.reason})") from None
    if isinstance(result, str):
        raise ImageReadError(path, result)
    return result


def _spacing(path: Path, header: Dataset, frame: int | None, step: int
             ) -> tuple[float, float] | None:
    """Pixel Spacing of the returned (possibly reduced by ``step``) image in mm, ``None`` when
    unknown; a stated spacing that is unusable (zero, negative, NaN) is logged."""
    spacing = pixel_spacing(header, frame)
    if spacing is None:
        stated = frame_header(header, frame).get("PixelSpacing")
        if stated not in (None, ""):
            log.warning("%s: Pixel Spacing %s is not two positive finite numbers; spacing is "
                        "unknown, nothing is measured in mm", path, stated)
        return None
    return spacing[0] * step, spacing[1] * step


def read_dicom(
    path: str | Path,
    *,
    frame: int | None = None,
    require_mr: bool = False,
    max_pixels: int = MAX_PIXELS,
    force: bool = False,
    max_side: int | None = MAX_DISPLAY_SIDE,
) -> MedicalImage:
    """Read one DICOM image (see the module docstring for the rules).

    Args:
        path: a DICOM Part 10 file.
        frame: 0-based frame of a multi-frame file; required when it has more than one frame.
        require_mr: refuse files whose Modality is not MR.
        max_pixels: largest accepted Rows x Columns, checked before the pixel data is read.
        force: read a file that lacks the DICOM preamble (explicit opt-in).
        max_side: longest side of the returned image in pixels; larger images are reduced by
            an integer step and their pixel spacing multiplied by it (``None``: full size).

    Raises:
        ImageReadError: not DICOM, damaged / truncated, contradictory header, no pixel data,
            wrong modality, too large, multi-frame without ``frame``, undecodable compression,
            decoder crash / time-out / out of memory.
    """
    path = Path(path)
    header = _dcmread(path, stop_before_pixels=True, force=force)
    check_modality(header, path, require_mr)
    n_frames = check_header(path, header, max_pixels)
    if n_frames > 1 and frame is None:
        raise ImageReadError(path, f"holds {n_frames} frames; choose one with frame=0.."
                                   f"{n_frames - 1}, or use load_study to take the "
                                   "mid-sagittal frame")
    if frame is not None and not 0 <= frame < n_frames:
        raise ImageReadError(path, f"has {n_frames} frame(s); frame {frame} does not exist")
    view = frame_header(header, frame)
    _check_rescale(path, view)

    ds = _dcmread(path, stop_before_pixels=False, force=force)
    if not any(k in ds for k in PIXEL_DATA_KEYWORDS):
        if _PIXEL_DATA_TAG_LE in path.read_bytes():
            # pydicom drops an encapsulated Pixel Data element cut before its delimiter
            raise ImageReadError(path, "damaged or truncated pixel data: the Pixel Data "
                                       "element could not be read to its end")
        raise ImageReadError(path, "has no pixel data (Pixel Data element missing)")
    step = reduction_step(int(header.Rows), int(header.Columns), max_side)
    index = frame if n_frames > 1 else None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and (not ts.is_transfer_syntax or ts.is_compressed):
        _check_decoder(path, ts)
        del ds  # the decoder process reads the file itself
        arr = _decode_isolated(path, index, step, force)
    else:
        _check_native_length(path, ds, n_frames)
        arr = _reduced_pixels(path, ds, index, step)
        del ds
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = _header_int(path, header, "BitsStored", int(header.BitsAllocated))
    assert bits is not None

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise ImageReadError(path, f"{photometric} pixel data has shape {arr.shape}, "
                                       "expected one 2-D frame")
        try:
            values = apply_rescale(arr, view)
        except (ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
            raise ImageReadError(path, f"unusable Modality LUT: {exc}") from exc
        pixels = np.asarray(values, dtype=np.float32)
        display = _display_gray(np.asarray(values), view, path)
        if photometric == "MONOCHROME1":
            display = 255 - display
    else:
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageReadError(path, f"{photometric} pixel data has shape {arr.shape}, "
                                       "expected [rows, columns, 3]")
        pixels = luminance(arr)
        peak = 255.0 if arr.dtype == np.uint8 else float(2 ** bits - 1)
        display = window_to_uint8(pixels, 0.0, peak)

    return MedicalImage(pixels=pixels, display=display,
                        pixel_spacing=_spacing(path, header, frame, step), source=path,
                        kind="dicom", header=header, bits=bits, frame=index)
