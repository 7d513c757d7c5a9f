"""Finding DICOM series in a folder, choosing the sagittal one and loading its middle slices.

* :func:`scan_dicom_folder` walks a folder (recursively, hidden files skipped), reads headers
  only (``stop_before_pixels``) and groups images into stacks by Series Instance UID, orientation
  and echo time, so a 3-plane localizer or a dual-echo series splits into usable stacks. Files
  that cannot be read are collected as problems, not raised.
* Slices are ordered by Image Position (Patient) projected on the slice normal (row cosine x
  column cosine), never by Instance Number. Without positions, Slice Location is used, and only
  as a last resort Instance Number (``position_source`` says which; a warning is logged).
* :func:`sagittal_series` keeps sagittal stacks and ranks them (rule in its docstring).
* :func:`load_study` turns a PNG / JPEG / DICOM file or a study folder into the images to analyse.
* :func:`load_study_pair` also returns, for a study folder, the slice of the other sequence in
  the same plane (T1 for a T2 series and vice versa, :func:`partner_series`), resampled onto
  the analysed slice's pixel grid, for detectors that read T1 and T2 together.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

from lumbardx.data.decode import MAX_DISPLAY_SIDE, reduction_step
from lumbardx.data.dicom import (
    SAGITTAL_TOL_DEG,
    body_part,
    check_body_part,
    check_modality,
    frame_header,
    image_orientation,
    not_lumbar,
    number_of_frames,
    plane_name,
    read_dicom,
    read_header,
)
from lumbardx.data.errors import ImageReadError
from lumbardx.data.images import (
    DICOM_EXTENSIONS,
    MAX_PIXELS,
    MedicalImage,
    read_image,
    sniff_kind,
)

log = logging.getLogger(__name__)

#: Preference of sequence weightings when a study has several sagittal series: the study read
#: T2 (and T1) images, and the detectors are trained on T2 and T1.
WEIGHTING_RANK: dict[str, int] = {"T2": 0, "T1": 1, "unknown": 2, "STIR": 3, "other": 4}
_LOCALIZER_WORDS = re.compile(r"LOCALI[SZ]ER|SCOUT|SURVEY|PILOT|\bLOC\b", re.IGNORECASE)


@dataclass
class SliceRef:
    """One slice of a series: a file, or one frame of a multi-frame file.

    Attributes:
        path: the DICOM file.
        frame: 0-based frame index in a multi-frame file, ``None`` for single-frame files.
        position: mm along the series normal (see ``DicomSeries.position_source``).
        instance_number: Instance Number as stored (informative only), or ``None``.
        origin: Image Position (Patient), float64 ``[3]`` in mm (patient LPS), or ``None``.
    """

    path: Path
    frame: int | None
    position: float
    instance_number: int | None = None
    origin: np.ndarray | None = None


@dataclass(eq=False)  # holds arrays: compare series by series_uid, not field by field
class DicomSeries:
    """One stack of parallel slices of a DICOM series, sorted by position along the normal.

    Attributes:
        series_uid, study_uid: Series / Study Instance UID.
        description: Series Description (``""`` when absent).
        modality: Modality (e.g. ``"MR"``).
        slices: the slices in increasing position along ``normal``.
        orientation: float64 ``[2, 3]`` row and column cosines (patient LPS), or ``None``.
        normal: float64 ``[3]`` unit slice normal (row x column), or ``None``.
        plane: ``"sagittal"``, ``"coronal"``, ``"axial"``, ``"oblique"`` or ``"unknown"``.
        is_sagittal: normal within the tolerance of the patient left-right axis.
        spacing_between_slices: median distance between neighbouring slice positions in mm
            (Spacing Between Slices from the header when positions are unknown), or ``None``.
        series_number: Series Number, or ``None``.
        weighting: ``"T2"``, ``"T1"``, ``"STIR"``, ``"other"`` or ``"unknown"`` (see
            :func:`sequence_weighting`).
        is_localizer: Image Type LOCALIZER or a localizer-like description.
        position_source: ``"position"``, ``"slice-location"`` or ``"instance-number"``.
        frame_of_reference_uid: Frame of Reference UID (``""`` when absent).
        rows, columns: image size in pixels (of the first slice).
        pixel_spacing: ``(row, column)`` spacing in mm, or ``None``.
        body_part: Body Part Examined (``""`` when absent).
    """

    series_uid: str
    study_uid: str
    description: str
    modality: str
    slices: list[SliceRef]
    orientation: np.ndarray | None
    normal: np.ndarray | None
    plane: str
    is_sagittal: bool
    spacing_between_slices: float | None
    series_number: int | None = None
    weighting: str = "unknown"
    is_localizer: bool = False
    position_source: str = "position"
    frame_of_reference_uid: str = ""
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, float] | None = None
    body_part: str = ""

    @property
    def files(self) -> list[Path]:
        """The slice files in position order (a multi-frame file appears once per frame)."""
        return [s.path for s in self.slices]

    def __len__(self) -> int:
        return len(self.slices)

    def summary(self) -> str:
        """One line for messages, e.g. ``axial MR 'T2 TSE AX' (20 slices)``."""
        return (f"{self.plane} {self.modality or '?'} {self.description or '(no description)'!r}"
                f" ({len(self)} slice{'s' if len(self) != 1 else ''})")


@dataclass
class FolderScan:
    """What :func:`scan_dicom_folder` found.

    Attributes:
        folder: the folder scanned.
        series: the image stacks found.
        problems: one error per file that could not be read as DICOM.
        skipped: DICOM files without an image (DICOMDIR, SR, presentation states), with why.
        other_images: PNG / JPEG files met in the folder.
    """

    folder: Path
    series: list[DicomSeries] = field(default_factory=list)
    problems: list[ImageReadError] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    other_images: list[Path] = field(default_factory=list)


def sequence_weighting(header: Dataset) -> str:
    """``"T2"``, ``"T1"``, ``"STIR"``, ``"other"`` (e.g. T2*) or ``"unknown"``.

    From Series Description / Protocol Name first; when they name none, from timing:
    TE >= 60 ms and TR >= 1500 ms -> T2, TE <= 30 ms and TR <= 1000 ms -> T1.
    """
    text = f"{header.get('SeriesDescription', '')} {header.get('ProtocolName', '')}".upper()
    if re.search(r"T2\s*(\*|STAR|_STAR)", text):
        return "other"
    if "T2" in text:
        return "T2"
    if re.search(r"T1(?!\d)", text):
        return "T1"
    if "STIR" in text:
        return "STIR"
    try:
        te, tr = float(header.get("EchoTime")), float(header.get("RepetitionTime"))
    except (TypeError, ValueError):
        return "unknown"
    if te >= 60 and tr >= 1500:
        return "T2"
    if te <= 30 and tr <= 1000:
        return "T1"
    return "unknown"


def _is_localizer(header: Dataset) -> bool:
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    return "LOCALIZER" in image_type or bool(
        _LOCALIZER_WORDS.search(str(header.get("SeriesDescription", ""))))


def _as_float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _vector3(value: object) -> np.ndarray | None:
    """float64 ``[3]`` from a 3-valued DICOM element value, or ``None`` when unusable."""
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if out.shape == (3,) and np.all(np.isfinite(out)) else None


def _walk(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_dicom_folder(folder: str | Path, tol_deg: float = SAGITTAL_TOL_DEG) -> FolderScan:
    """Group the DICOM images under ``folder`` into sorted stacks (see the module docstring).

    Raises:
        ImageReadError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(folder, "folder does not exist" if not folder.exists()
                             else "is a file, not a folder")
    scan = FolderScan(folder=folder)
    groups: dict[tuple, list[tuple[Dataset, Path, int | None]]] = defaultdict(list)
    for path in _walk(folder):
        try:
            kind = sniff_kind(path)
            if kind in ("png", "jpeg"):
                scan.other_images.append(path)
                continue
            header = read_header(path)
        except ImageReadError as exc:
            scan.problems.append(exc)
            continue
        if header.get("SOPClassUID") == MediaStorageDirectoryStorage:
            scan.skipped.append((path, "DICOMDIR (media directory)"))
            continue
        if not header.get("Rows") or not header.get("Columns"):
            sop = getattr(header.get("SOPClassUID"), "name", "unknown SOP class")
            scan.skipped.append((path, f"no image ({sop})"))
            continue
        if not header.get("SeriesInstanceUID"):
            scan.problems.append(ImageReadError(path, "has no Series Instance UID"))
            continue
        n_frames = number_of_frames(header)
        for frame in (range(n_frames) if n_frames > 1 else [None]):
            view = frame_header(header, frame)
            cosines = image_orientation(view)
            key = (str(header.SeriesInstanceUID),
                   None if cosines is None else tuple(np.round(cosines, 3).ravel()),
                   _as_float(view.get("EchoTime")))
            groups[key].append((view, path, frame))
    scan.series = [_build_series(members, tol_deg) for members in groups.values()]
    scan.series.sort(key=lambda s: (s.study_uid, s.series_number or 0, s.series_uid, s.plane))
    for problem in scan.problems:
        log.warning("skipped %s", problem)
    return scan


def _build_series(members: list[tuple[Dataset, Path, int | None]], tol_deg: float
                  ) -> DicomSeries:
    first = members[0][0]
    cosines = image_orientation(first)
    normal = None if cosines is None else np.cross(cosines[0], cosines[1])
    if normal is not None:
        normal = normal / np.linalg.norm(normal)
    ipps = [_vector3(m[0].get("ImagePositionPatient")) for m in members]
    locations = [_as_float(m[0].get("SliceLocation")) for m in members]
    numbers = [_as_float(m[0].get("InstanceNumber")) for m in members]
    if normal is not None and all(p is not None for p in ipps):
        positions = [float(np.dot(p, normal)) for p in ipps]  # type: ignore[arg-type]
        source = "position"
    elif all(v is not None for v in locations):
        positions = [float(v) for v in locations if v is not None]
        source = "slice-location"
    else:
        positions = [v if v is not None else float(i) for i, v in enumerate(numbers)]
        source = "instance-number"
        log.warning("series %s has no slice positions; ordering by Instance Number",
                    first.get("SeriesInstanceUID"))
    slices = sorted(
        (SliceRef(path=p, frame=f, position=pos,
                  instance_number=None if n is None else int(n), origin=o)
         for (_, p, f), pos, n, o in zip(members, positions, numbers, ipps)),
        key=lambda s: (s.position, s.instance_number or 0, str(s.path), s.frame or 0))
    spacing = None
    if source != "instance-number" and len(slices) > 1:
        unique = np.unique(np.round([s.position for s in slices], 4))
        if unique.size < len(slices):
            log.warning("series %s has %d slices at only %d distinct positions",
                        first.get("SeriesInstanceUID"), len(slices), unique.size)
        gaps = np.diff(unique)
        spacing = float(np.median(gaps)) if gaps.size else None
    if spacing is None:
        spacing = _as_float(first.get("SpacingBetweenSlices"))
    number = _as_float(first.get("SeriesNumber"))
    return DicomSeries(
        series_uid=str(first.SeriesInstanceUID), study_uid=str(first.get("StudyInstanceUID", "")),
        description=str(first.get("SeriesDescription", "") or ""),
        modality=str(first.get("Modality", "") or "").upper(), slices=slices,
        orientation=cosines, normal=normal, plane=plane_name(first, tol_deg),
        is_sagittal=plane_name(first, tol_deg) == "sagittal", spacing_between_slices=spacing,
        series_number=None if number is None else int(number),
        weighting=sequence_weighting(first), is_localizer=_is_localizer(first),
        position_source=source,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        rows=int(first.get("Rows") or 0), columns=int(first.get("Columns") or 0),
        pixel_spacing=_spacing(first), body_part=body_part(first))


def _spacing(header: Dataset) -> tuple[float, float] | None:
    value = header.get("PixelSpacing")
    try:
        row, col = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def find_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM image stacks under ``folder`` (unreadable files are logged and skipped; use
    :func:`scan_dicom_folder` to get them as a list)."""
    return scan_dicom_folder(folder).series


def rank_sagittal(series: list[DicomSeries]) -> list[DicomSeries]:
    """Sagittal stacks of ``series``, best first.

    Rule: localizers only when nothing else is sagittal; then by weighting (T2, T1, unknown,
    STIR, other; T2 from the description, else from TE/TR); then more slices first; then the
    highest Series Number (a repeated series is usually acquired because the first was
    degraded).
    """
    sagittal = [s for s in series if s.is_sagittal]
    if any(not s.is_localizer for s in sagittal):
        sagittal = [s for s in sagittal if not s.is_localizer]
    return sorted(sagittal, key=lambda s: (WEIGHTING_RANK.get(s.weighting, 9), -len(s),
                                           -(s.series_number or 0), s.series_uid))


def sagittal_series(folder: str | Path) -> list[DicomSeries]:
    """The sagittal stacks under ``folder``, best first (rule: :func:`rank_sagittal`)."""
    return rank_sagittal(find_series(folder))


def mid_sagittal(series: DicomSeries, n: int = 1, *, require_mr: bool = False,
                 max_pixels: int = MAX_PIXELS,
                 max_side: int | None = MAX_DISPLAY_SIDE) -> list[MedicalImage]:
    """The ``n`` slices around the middle of ``series``, in position order.

    The middle is slice ``(len - 1) // 2`` in position order (the lower of the two middle slices
    when the count is even); ``n = 3`` gives it and one neighbour on each side, ``n = 2`` it and
    the next one. ``max_side``: as :func:`~lumbardx.data.dicom.read_dicom`.

    Raises:
        ValueError: ``n < 1``.
        ImageReadError: the series has fewer than ``n`` slices, or a slice cannot be read.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n > len(series):
        raise ImageReadError(series.slices[0].path.parent if series.slices else None,
                             f"series {series.summary()} has fewer than the {n} slices asked for")
    centre = (len(series) - 1) // 2
    start = min(max(0, centre - (n - 1) // 2), len(series) - n)
    return [read_dicom(s.path, frame=s.frame, require_mr=require_mr, max_pixels=max_pixels,
                       max_side=max_side) for s in series.slices[start:start + n]]


def load_study(path: str | Path, n_slices: int = 1, *, require_mr: bool = True,
               max_pixels: int = MAX_PIXELS, tol_deg: float = SAGITTAL_TOL_DEG
               ) -> list[MedicalImage]:
    """The image(s) to analyse from a PNG / JPEG file, a DICOM file or a study folder.

    * PNG / JPEG: that one image (``n_slices`` does not apply to a single 2-D picture), turned
      upright as image viewers show it when it carries an EXIF Orientation.
    * DICOM file: that slice (refused when its orientation is known and not sagittal); a
      multi-frame file is treated as a series and its middle ``n_slices`` frames are returned.
    * Folder of one study: the best sagittal series (:func:`rank_sagittal`) and its middle
      ``n_slices`` slices (:func:`mid_sagittal`).

    Args:
        require_mr: refuse non-MR DICOM (default, as the detectors are trained on MR).

    Raises:
        ImageReadError: naming the file or folder: missing, empty, unreadable, not MR, of a
            body part that cannot show the lumbar spine (Body Part Examined, e.g. ``CSPINE``),
            no sagittal series (with the planes that were found), several studies.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "does not exist")
    if path.is_file():
        kind = sniff_kind(path)
        if kind in ("png", "jpeg") or (kind is None
                                       and path.suffix.lower() not in DICOM_EXTENSIONS):
            return [read_image(path, max_pixels, exif=True)]  # raises for unknown content
        header = read_header(path)
        check_modality(header, path, require_mr)
        check_body_part(header, path)
        if number_of_frames(header) > 1:
            return mid_sagittal(_single_file_series(path, tol_deg), n_slices,
                                require_mr=require_mr, max_pixels=max_pixels)
        plane = plane_name(header, tol_deg)
        if plane not in ("sagittal", "unknown"):
            raise ImageReadError(path, f"is a{'n' if plane[0] in 'ao' else ''} {plane} slice; "
                                       "lumbardx needs sagittal images")
        return [read_dicom(path, require_mr=require_mr, max_pixels=max_pixels)]
    return mid_sagittal(_choose_series(path, require_mr, tol_deg), n_slices,
                        require_mr=require_mr, max_pixels=max_pixels)


#: Largest distance in mm between two slices read together, along the slice normal.
CO_REGISTRATION_TOL_MM = 0.5
#: Smallest fraction of the analysed field of view the partner slice must cover.
MIN_PARTNER_COVERAGE = 0.8
#: The sequences read together by a detector trained on pairs (recipe ``sequence_pairs``).
PAIRED_WEIGHTINGS = ("T1", "T2")


def same_plane(a: DicomSeries, b: DicomSeries) -> bool:
    """Whether two series image the same plane direction in one patient space: same study and
    Frame of Reference, orientation (cosines within 1e-3), pixel spacing known for both. Their
    image size, pixel spacing and field of view may differ (:func:`onto_grid` resamples)."""
    if not a.frame_of_reference_uid or a.frame_of_reference_uid != b.frame_of_reference_uid \
            or a.study_uid != b.study_uid:
        return False
    if a.pixel_spacing is None or b.pixel_spacing is None or not a.rows or not b.rows:
        return False
    return a.orientation is not None and b.orientation is not None \
        and float(np.abs(a.orientation - b.orientation).max()) <= 1e-3


def co_registered_slice(ref: SliceRef, series: DicomSeries, other: DicomSeries,
                        tol_mm: float = CO_REGISTRATION_TOL_MM) -> SliceRef | None:
    """The slice of ``other`` in the plane of slice ``ref`` of ``series``: the series share a
    plane direction (:func:`same_plane`) and that slice lies within ``tol_mm`` of ``ref``
    along the slice normal (the closest one). ``None`` when there is none (or origins are
    missing). The series may differ in slice count, image size and field of view."""
    if ref.origin is None or series.normal is None or not same_plane(series, other):
        return None
    found = [(abs(float(np.dot(s.origin - ref.origin, series.normal))), k)
             for k, s in enumerate(other.slices) if s.origin is not None]
    if not found:
        return None
    dist, k = min(found)
    return other.slices[k] if dist <= tol_mm else None


def grid_map(ref: SliceRef, series: DicomSeries, other_ref: SliceRef, other: DicomSeries
             ) -> tuple[np.ndarray, np.ndarray]:
    """Where the pixels of slice ``ref`` fall in slice ``other_ref`` of a series in the same
    plane (:func:`same_plane`): ``(scale [2], offset [2])`` such that pixel ``(row, col)`` of
    ``ref`` sits at ``scale * (row, col) + offset`` (rows, columns) of ``other_ref``."""
    assert ref.origin is not None and other_ref.origin is not None
    assert series.orientation is not None and series.pixel_spacing is not None
    assert other.pixel_spacing is not None
    along_row, along_col = series.orientation  # +column and +row directions (LPS)
    delta = ref.origin - other_ref.origin
    (dr_a, dc_a), (dr_b, dc_b) = series.pixel_spacing, other.pixel_spacing
    scale = np.array([dr_a / dr_b, dc_a / dc_b])
    offset = np.array([float(np.dot(delta, along_col)) / dr_b,
                       float(np.dot(delta, along_row)) / dc_b])
    return scale, offset


def reduced_grid_map(scale: np.ndarray, offset: np.ndarray, step: int, other_step: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`grid_map`'s ``(scale, offset)`` (full-size pixels of both slices) for the slices
    as read when reduced by ``step`` and ``other_step`` (:func:`~lumbardx.data.decode.
    block_mean`: reduced pixel ``i`` is the mean of full pixels ``step * i .. step * i + step -
    1``, centred at ``step * i + (step - 1) / 2``)."""
    a, b = float(step), float(other_step)
    return scale * a / b, (offset + scale * (a - 1) / 2 - (b - 1) / 2) / b


def onto_grid(image: np.ndarray, scale: np.ndarray, offset: np.ndarray,
              shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``image`` (``uint8 [h, w]``) resampled (bilinear) onto a grid of ``shape`` whose pixel
    ``(row, col)`` is at ``scale * (row, col) + offset`` in ``image`` (:func:`grid_map`);
    outside ``image``: 0. Returns it (the input itself when the grids coincide) and the fraction
    of the grid that ``image`` covers."""
    if np.allclose(scale, 1.0, atol=1e-6) and np.allclose(offset, 0.0, atol=1e-3) \
            and image.shape == tuple(shape):
        return image, 1.0
    from scipy.ndimage import affine_transform

    out = affine_transform(image.astype(np.float32), np.diag(scale), offset=offset,
                           output_shape=tuple(shape), order=1, mode="constant", cval=0.0)
    rows = scale[0] * np.arange(shape[0]) + offset[0]
    cols = scale[1] * np.arange(shape[1]) + offset[1]
    inside = (((rows >= 0) & (rows <= image.shape[0] - 1)).mean()
              * ((cols >= 0) & (cols <= image.shape[1] - 1)).mean())
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), float(inside)


def partner_series(chosen: DicomSeries, candidates: list[DicomSeries],
                   ref: SliceRef | None = None, tol_mm: float = CO_REGISTRATION_TOL_MM
                   ) -> tuple[DicomSeries, SliceRef] | None:
    """The first of ``candidates`` (in their order, e.g. :func:`rank_sagittal`'s) that holds
    the other sequence of a T1/T2 pair and has a slice co-registered with slice ``ref`` of
    ``chosen`` (default: its middle slice, the one :func:`mid_sagittal` reads), with that
    slice (:func:`co_registered_slice`); ``None`` when ``chosen`` is neither T1 nor T2 or no
    series qualifies."""
    if chosen.weighting not in PAIRED_WEIGHTINGS or not len(chosen):
        return None
    ref = ref if ref is not None else chosen.slices[(len(chosen) - 1) // 2]
    other = PAIRED_WEIGHTINGS[1 - PAIRED_WEIGHTINGS.index(chosen.weighting)]
    for s in candidates:
        if s is not chosen and s.weighting == other:
            match = co_registered_slice(ref, chosen, s, tol_mm)
            if match is not None:
                return s, match
    return None


@dataclass
class StudyPair:
    """What a detector reading T1 and T2 together gets from a study (:func:`load_study_pair`).

    Attributes:
        image: the analysed slice (as :func:`load_study` returns it).
        partner: the same slice of the co-registered series of the other sequence, or ``None``.
        image_weighting: ``image``'s sequence (``"T2"``, ``"T1"``...; ``"unknown"`` for PNG /
            JPEG files and single DICOM files).
        partner_series: one-line summary of the partner series (:meth:`DicomSeries.summary`
            with its Series Number), or ``None``.
        reason: why there is no partner (``""`` when there is one).
        partner_display: ``partner.display`` on the analysed slice's pixel grid (``uint8
            [H, W]`` like ``image.display``; :func:`onto_grid`), or ``None``.
        resampled: whether ``partner_display`` had to be resampled (another image size, pixel
            spacing or field of view) rather than taken as it is.
    """

    image: MedicalImage
    partner: MedicalImage | None = None
    image_weighting: str = "unknown"
    partner_series: str | None = None
    reason: str = ""
    partner_display: np.ndarray | None = None
    resampled: bool = False

    def t1_t2(self) -> tuple[np.ndarray, np.ndarray]:
        """The display images ``uint8 [H, W]`` as (T1, T2) on the analysed grid; without a
        partner, the analysed slice twice."""
        own = self.image.display
        if self.partner is None:
            return own, own
        other = self.partner_display if self.partner_display is not None \
            else self.partner.display
        return (own, other) if self.image_weighting == "T1" else (other, own)


def load_study_pair(path: str | Path, *, require_mr: bool = True,
                    max_pixels: int = MAX_PIXELS, tol_deg: float = SAGITTAL_TOL_DEG,
                    max_side: int | None = MAX_DISPLAY_SIDE) -> StudyPair:
    """The analysed slice of :func:`load_study` (one slice) and, for a study folder whose
    chosen series is T1 or T2, the slice of the other sequence in the same plane
    (:func:`partner_series`), on the analysed slice's pixel grid (:func:`grid_map`,
    :func:`onto_grid`; it must cover :data:`MIN_PARTNER_COVERAGE` of the field of view). Files
    (PNG, JPEG, one DICOM file) have no partner. Slices longer than ``max_side`` are reduced on
    read (:func:`~lumbardx.data.dicom.read_dicom`), each by its own step, and the mapping
    between the two grids follows (:func:`reduced_grid_map`).

    Raises:
        ImageReadError: as :func:`load_study`; or the partner slice cannot be read.
    """
    path = Path(path)
    if not path.is_dir():
        return StudyPair(load_study(path, 1, require_mr=require_mr, max_pixels=max_pixels,
                                    tol_deg=tol_deg)[0],
                         reason="a single file has no second sequence")
    ranked = _ranked_series(path, require_mr, tol_deg)
    chosen = ranked[0]
    image = mid_sagittal(chosen, 1, require_mr=require_mr, max_pixels=max_pixels,
                         max_side=max_side)[0]
    found = partner_series(chosen, ranked)  # paired at mid_sagittal's slice
    if found is None:
        reason = (f"the {chosen.weighting} series has no co-registered "
                  f"{'T1' if chosen.weighting == 'T2' else 'T2'} series in the study"
                  if chosen.weighting in PAIRED_WEIGHTINGS
                  else f"the analysed series is {chosen.weighting}, not T1 or T2")
        return StudyPair(image, image_weighting=chosen.weighting, reason=reason)
    partner, ref = found
    other = read_dicom(ref.path, frame=ref.frame, require_mr=require_mr, max_pixels=max_pixels,
                       max_side=max_side)
    mid = chosen.slices[(len(chosen) - 1) // 2]
    scale, offset = reduced_grid_map(*grid_map(mid, chosen, ref, partner),
                                     reduction_step(chosen.rows, chosen.columns, max_side),
                                     reduction_step(partner.rows, partner.columns, max_side))
    display, covered = onto_grid(other.display, scale, offset, image.display.shape)
    if covered < MIN_PARTNER_COVERAGE:
        return StudyPair(image, image_weighting=chosen.weighting,
                         reason=f"the {partner.weighting} series covers only {covered:.0%} of "
                                "the analysed field of view")
    resampled = display is not other.display
    label = f"{partner.summary()}, series {partner.series_number}" \
        if partner.series_number is not None else partner.summary()
    if resampled:
        label += ", resampled onto the analysed pixel grid"
    log.info("%s: reading %s with %s", path, chosen.summary(), label)
    return StudyPair(image, other, chosen.weighting, label, partner_display=display,
                     resampled=resampled)


def _single_file_series(path: Path, tol_deg: float) -> DicomSeries:
    header = read_header(path)
    members = [(frame_header(header, f), path, f) for f in range(number_of_frames(header))]
    series = _build_series(members, tol_deg)
    if not series.is_sagittal and series.plane != "unknown":
        raise ImageReadError(path, f"holds {series.summary()}; lumbardx needs sagittal images")
    return series


def _choose_series(folder: Path, require_mr: bool, tol_deg: float) -> DicomSeries:
    ranked = _ranked_series(folder, require_mr, tol_deg)
    chosen = ranked[0]
    log.info("%s: using series %s (%d candidate sagittal series)", folder, chosen.summary(),
             len(ranked))
    return chosen


def _ranked_series(folder: Path, require_mr: bool, tol_deg: float) -> list[DicomSeries]:
    """The sagittal series of the one study in ``folder``, best first (:func:`rank_sagittal`).

    Raises:
        ImageReadError: as :func:`load_study` for a folder.
    """
    scan = scan_dicom_folder(folder, tol_deg)
    if not scan.series:
        if not scan.problems and not scan.skipped and not scan.other_images:
            raise ImageReadError(folder, "folder is empty (no files)")
        if scan.other_images:
            raise ImageReadError(folder, f"holds no DICOM series but {len(scan.other_images)} "
                                         "PNG/JPEG file(s): pass one image file instead")
        first = f"; first: {scan.problems[0]}" if scan.problems else ""
        raise ImageReadError(folder, f"no DICOM images found ({len(scan.problems)} unreadable "
                                     f"file(s), {len(scan.skipped)} without image){first}")
    found = "; ".join(s.summary() for s in scan.series[:6]) + (
        f"; and {len(scan.series) - 6} more" if len(scan.series) > 6 else "")
    candidates = scan.series
    if require_mr:
        candidates = [s for s in candidates if s.modality == "MR"]
        if not candidates:
            raise ImageReadError(folder, f"no MR series in folder: found {found}; lumbardx "
                                         "analyses MR images only")
    lumbar = [s for s in candidates if not not_lumbar(s.body_part)]
    if not lumbar:
        parts = sorted({s.body_part for s in candidates})
        raise ImageReadError(folder, f"no series of the lumbar spine: Body Part Examined is "
                                     f"{', '.join(map(repr, parts))} (found {found}); lumbardx "
                                     "reads sagittal MRI of the lumbar spine")
    ranked = rank_sagittal(lumbar)
    if not ranked:
        raise ImageReadError(folder, f"no sagittal series in folder: found {found}")
    studies = {s.study_uid for s in ranked}
    if len(studies) > 1:
        raise ImageReadError(folder, f"holds sagittal series of {len(studies)} studies; point "
                                     "to the folder of one study")
    return ranked
