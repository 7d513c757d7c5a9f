"""Helpers that write small, valid DICOM MR files for tests (pydicom only, no real data).

Orientation constants are Image Orientation (Patient) values (row cosines, column cosines):
``SAGITTAL`` rows run anterior->posterior (+y), columns head->feet (-z), normal = -x.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

SAGITTAL: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
AXIAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def make_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "MR",
    photometric: str = "MONOCHROME2",
    orientation: Sequence[float] | None = SAGITTAL,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    pixel_spacing: Sequence[float] | None = (0.5, 0.6),
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "T2_TSE_SAG",
    series_number: int = 1,
    instance_number: int = 1,
    bits_stored: int | None = None,
    signed: bool = False,
    body_part: str | None = None,
) -> Dataset:
    """A DICOM MR data set holding ``pixels`` (uint8 / uint16 / int16 ``[rows, cols]``, or
    uint8 ``[rows, cols, 3]`` with ``photometric="RGB"``), Explicit VR Little Endian."""
    pixels = np.ascontiguousarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = MRImageStorage
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM-1"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed or pixels.dtype.kind == "i" else 0
    if slope is not None or intercept is not None:
        ds.RescaleSlope = slope if slope is not None else 1.0
        ds.RescaleIntercept = intercept if intercept is not None else 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    return ds


def write_dataset(ds: Dataset, path: Path, compress: UID | None = None) -> Path:
    """Save ``ds`` as a DICOM Part 10 file (``compress``: e.g. ``RLELossless``)."""
    if compress is not None:
        ds.compress(compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_mr(path: Path, pixels: np.ndarray, compress: UID | None = None, **kwargs: object
             ) -> Path:
    """Write one MR slice holding ``pixels`` to ``path`` (keywords: :func:`make_dataset`)."""
    return write_dataset(make_dataset(pixels, **kwargs), path, compress)  # type: ignore[arg-type]


def write_series(
    folder: Path,
    n: int = 7,
    *,
    orientation: Sequence[float] = SAGITTAL,
    step_mm: float = 4.0,
    shuffle_instance_numbers: bool = True,
    shape: tuple[int, int] = (16, 20),
    seed: int = 0,
    prefix: str = "IM",
    **kwargs: object,
) -> list[Path]:
    """Write a stack of ``n`` slices, ``step_mm`` apart along the orientation's normal.

    Slice ``k`` in geometric order (increasing position along the normal) holds the constant
    value ``100 * (k + 1)``, so a test can tell which slice it read. File names and Instance
    Numbers are shuffled (seeded) and inconsistent with the positions when
    ``shuffle_instance_numbers`` is true. Returns the paths in geometric order.
    """
    rng = random.Random(seed)
    cosines = np.asarray(orientation, dtype=float).reshape(2, 3)
    normal = np.cross(cosines[0], cosines[1])
    numbers = list(range(1, n + 1))
    names = list(range(n))
    if shuffle_instance_numbers:
        rng.shuffle(numbers)
        rng.shuffle(names)
    series_uid = str(kwargs.pop("series_uid", None) or generate_uid())
    study_uid = str(kwargs.pop("study_uid", None) or generate_uid())
    origin = np.asarray([10.0, -100.0, 50.0])
    paths = []
    for k in range(n):
        pixels = np.full(shape, 100 * (k + 1), dtype=np.uint16)
        path = folder / f"{prefix}{names[k]:04d}"
        write_mr(path, pixels, orientation=orientation,
                 position=tuple(origin + (k - n // 2) * step_mm * normal),
                 series_uid=series_uid, study_uid=study_uid, instance_number=numbers[k],
                 **kwargs)
        paths.append(path)
    return paths


def write_multiframe(
    path: Path,
    frames: np.ndarray,
    *,
    orientation: Sequence[float] = SAGITTAL,
    positions: Sequence[Sequence[float]] | None = None,
    pixel_spacing: Sequence[float] = (0.7, 0.7),
    **kwargs: object,
) -> Path:
    """Write an Enhanced-MR-style multi-frame file: ``frames`` uint16 ``[n, rows, cols]``,
    orientation and spacing in the shared functional groups, one Plane Position per frame
    (``positions``, default 3 mm apart along x)."""
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import EnhancedMRImageStorage

    n = int(frames.shape[0])
    ds = make_dataset(frames[0], orientation=None, position=None, pixel_spacing=None,
                      **kwargs)  # type: ignore[arg-type]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = [float(v) for v in orientation]
    measures.PixelSpacing = [float(v) for v in pixel_spacing]
    measures.SliceThickness = 3.0
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(n):
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = (list(map(float, positions[k])) if positions is not None
                                      else [3.0 * k, 0.0, 0.0])
        item.PlanePositionSequence = DicomSequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.ascontiguousarray(frames.astype(np.uint16)).tobytes()
    return write_dataset(ds, path)
