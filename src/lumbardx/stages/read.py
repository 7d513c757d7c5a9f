"""Stage ``read``: the analysed slice of a study, and where it lies in its series.

A PNG / JPEG, a DICOM file or a study folder (best sagittal series, its middle slice:
:func:`lumbardx.data.series.load_study`). For a detector trained on T1/T2 pairs the folder is
read with :func:`lumbardx.data.series.load_study_pair`, which adds the same slice of the
co-registered series of the other sequence when the study has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lumbardx.data.images import MedicalImage

if TYPE_CHECKING:
    from lumbardx.data.series import StudyPair


@dataclass
class ReadStudy:
    """What :func:`read_study` found.

    Attributes:
        image: the analysed slice.
        pair: the T1/T2 pairing attempt (``None`` when the model reads single slices).
        slice_index: index of the analysed slice in position order (``None`` for images).
        n_slices: slices in its series (1 for images).
    """

    image: MedicalImage
    pair: StudyPair | None
    slice_index: int | None
    n_slices: int


def slice_position(path: Path, image: MedicalImage) -> tuple[int | None, int]:
    """``(index of the analysed slice in position order, slices in its series)``."""
    if image.kind != "dicom" or image.header is None:
        return None, 1
    if path.is_file():
        from lumbardx.data.dicom import number_of_frames

        n = number_of_frames(image.header)
        return (image.frame, n) if n > 1 else (None, 1)
    from lumbardx.data.series import scan_dicom_folder

    for series in scan_dicom_folder(path).series:
        for k, ref in enumerate(series.slices):
            if ref.path == image.source and ref.frame == image.frame:
                return k, len(series)
    return None, 1


def read_study(path: Path, reads_pairs: bool) -> ReadStudy:
    """Read one study (module docstring).

    Raises:
        InputError: naming the file or folder when it cannot be used.
    """
    from lumbardx.data.series import load_study, load_study_pair

    pair = None
    if reads_pairs:
        pair = load_study_pair(path)
        image = pair.image
    else:
        image = load_study(path, 1)[0]
    index, count = slice_position(path, image)
    return ReadStudy(image, pair, index, count)
