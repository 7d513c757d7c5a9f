"""DICOM reading, orientation helpers, series grouping / sorting and study loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    make_dataset,
    write_dataset,
    write_mr,
    write_multiframe,
    write_series,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from lumbardx.data.dicom import (
    image_orientation,
    is_sagittal,
    not_lumbar,
    plane_name,
    read_dicom,
    read_header,
    slice_normal,
)
from lumbardx.data.errors import ImageReadError
from lumbardx.data.images import image_size, read_image
from lumbardx.data.series import (
    find_series,
    load_study,
    mid_sagittal,
    sagittal_series,
    scan_dicom_folder,
    sequence_weighting,
)

RAMP = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 8)  # 0 .. 3832


# ---------------------------------------------------------------- pixels and display

def test_rescale_slope_intercept_and_spacing(tmp_path: Path) -> None:
    path = write_mr(tmp_path / "a.dcm", RAMP, slope=2.5, intercept=-100.0,
                    pixel_spacing=(0.45, 0.55))
    img = read_dicom(path)
    np.testing.assert_allclose(img.pixels, RAMP * 2.5 - 100.0)
    assert img.pixels.dtype == np.float32 and img.display.dtype == np.uint8
    assert img.pixel_spacing == (0.45, 0.55)
    assert img.kind == "dicom" and img.bits == 16 and img.frame is None
    assert img.header is not None and "PixelData" not in img.header
    assert img.header.SOPInstanceUID == read_header(path).SOPInstanceUID
    assert read_image(path).pixel_spacing == (0.45, 0.55)  # read_image delegates
    assert image_size(path) == (20, 24)


def test_window_centre_width_applied_to_display(tmp_path: Path) -> None:
    values = np.array([[0, 299, 500, 700, 3000]], dtype=np.uint16)
    img = read_dicom(write_mr(tmp_path / "w.dcm", values, window=(500.0, 400.0)))
    # LINEAR window (PS3.3 C.11.2.1.2): <= 300 -> black, > 700 -> white, centre -> mid grey.
    assert img.display[0, 0] == 0 and img.display[0, 1] == 0
    assert img.display[0, 2] == 128
    assert img.display[0, 3] == 255 and img.display[0, 4] == 255
    np.testing.assert_array_equal(img.pixels, values.astype(np.float32))


def test_window_on_rescaled_values(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 200, 300]], dtype=np.uint16)  # -> -1000, -800, -600, -400
    img = read_dicom(write_mr(tmp_path / "w.dcm", stored, slope=2.0, intercept=-1000.0,
                              window=(-700.0, 401.0)))
    # window [-900.5, -500.5] on the rescaled values, not on the stored ones
    np.testing.assert_array_equal(img.display, [[0, 64, 192, 255]])


def test_voi_lut_sequence_applied(tmp_path: Path) -> None:
    ds = make_dataset(np.array([[0, 400, 800, 2000]], dtype=np.uint16))
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 8]
    item.add_new(0x00283006, "US", [min(255, v // 4) for v in range(1024)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    img = read_dicom(write_dataset(ds, tmp_path / "lut.dcm"))
    np.testing.assert_array_equal(img.display, [[0, 100, 200, 255]])


def test_percentile_window_without_voi(tmp_path: Path) -> None:
    img = read_dicom(write_mr(tmp_path / "p.dcm", RAMP))
    assert img.display.min() == 0 and img.display.max() == 255
    assert np.all(np.diff(img.display.ravel().astype(int)) >= 0)


def test_monochrome1_inverted(tmp_path: Path) -> None:
    mono2 = read_dicom(write_mr(tmp_path / "m2.dcm", RAMP, window=(2000.0, 3000.0)))
    mono1 = read_dicom(write_mr(tmp_path / "m1.dcm", RAMP, window=(2000.0, 3000.0),
                                photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1.pixels, mono2.pixels)  # raw values untouched
    np.testing.assert_array_equal(mono1.display, 255 - mono2.display)
    assert mono1.display[0, 0] == 255  # lowest stored value is white in MONOCHROME1


def test_rgb_dicom_to_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    img = read_dicom(write_mr(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert img.pixels[0, 0] == pytest.approx(0.587 * 200, abs=1e-3)
    assert img.display[0, 0] == round(0.587 * 200)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes(tmp_path: Path, syntax: object) -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13) % 4096
    path = write_mr(tmp_path / "c.dcm", pixels, compress=syntax, bits_stored=12)
    assert read_header(path).file_meta.TransferSyntaxUID == syntax
    img = read_dicom(path)
    np.testing.assert_array_equal(img.pixels, pixels.astype(np.float32))
    assert img.bits == 12


# ---------------------------------------------------------------- bad files

def test_missing_pixel_data(tmp_path: Path) -> None:
    ds = make_dataset(RAMP)
    del ds.PixelData
    path = write_dataset(ds, tmp_path / "nopix.dcm")
    with pytest.raises(ImageReadError, match="no pixel data") as info:
        read_dicom(path)
    assert info.value.path == path


def test_truncated_file(tmp_path: Path) -> None:
    path = write_mr(tmp_path / "cut.dcm", RAMP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_dicom(path)
    assert info.value.path == path
    path.write_bytes(data[:200])  # cut inside the file meta / header
    with pytest.raises(ImageReadError):
        read_dicom(path)


def test_non_dicom_with_dcm_extension(tmp_path: Path) -> None:
    path = tmp_path / "report.dcm"
    path.write_text("this is a text report\n" * 20)
    with pytest.raises(ImageReadError, match="not a DICOM file") as info:
        read_image(path)
    assert info.value.path == path
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_dicom(empty)


def test_bare_dataset_needs_explicit_force(tmp_path: Path) -> None:
    ds = make_dataset(RAMP)
    path = tmp_path / "bare.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    with pytest.raises(ImageReadError, match="bare DICOM data set"):
        read_dicom(path)
    np.testing.assert_array_equal(read_dicom(path, force=True).pixels, RAMP)


def test_modality_check(tmp_path: Path) -> None:
    path = write_mr(tmp_path / "ct.dcm", RAMP, modality="CT")
    with pytest.raises(ImageReadError, match=r"modality is CT .*not MR"):
        read_dicom(path, require_mr=True)
    assert read_dicom(path).header.Modality == "CT"
    with pytest.raises(ImageReadError, match="not MR"):
        load_study(path)  # load_study requires MR by default


def test_oversized_dicom_refused(tmp_path: Path) -> None:
    path = write_mr(tmp_path / "big.dcm", RAMP)
    with pytest.raises(ImageReadError, match="above the limit"):
        read_dicom(path, max_pixels=100)


# ---------------------------------------------------------------- orientation

def test_orientation_helpers() -> None:
    def header(iop: tuple[float, ...] | None) -> Dataset:
        ds = Dataset()
        if iop is not None:
            ds.ImageOrientationPatient = list(iop)
        return ds

    np.testing.assert_allclose(slice_normal(header(SAGITTAL)), [-1.0, 0.0, 0.0])
    assert is_sagittal(header(SAGITTAL))
    assert not is_sagittal(header(AXIAL)) and plane_name(header(AXIAL)) == "axial"
    assert not is_sagittal(header(CORONAL)) and plane_name(header(CORONAL)) == "coronal"
    tilt = np.deg2rad(15)  # sagittal plane rotated 15 degrees about the vertical axis
    oblique = (np.sin(tilt), np.cos(tilt), 0.0, 0.0, 0.0, -1.0)
    assert is_sagittal(header(oblique)) and not is_sagittal(header(oblique), tol_deg=10)
    assert not is_sagittal(header(None)) and plane_name(header(None)) == "unknown"
    with pytest.raises(ImageReadError, match="Orientation"):
        slice_normal(header(None))
    assert image_orientation(header((0, 1, 0, 0, 1, 0))) is None  # parallel row / column


# ---------------------------------------------------------------- series and studies

def test_series_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "study", 7)
    [series] = find_series(tmp_path / "study")
    assert series.is_sagittal and series.plane == "sagittal" and len(series) == 7
    assert series.files == paths  # geometric order
    numbers = [s.instance_number for s in series.slices]
    assert numbers != sorted(numbers)  # Instance Numbers were shuffled
    assert series.spacing_between_slices == pytest.approx(4.0)
    assert series.position_source == "position"
    np.testing.assert_allclose(series.normal, [-1.0, 0.0, 0.0])
    [mid] = mid_sagittal(series)
    assert mid.source == paths[3] and mid.pixels[0, 0] == 400  # geometric middle
    three = mid_sagittal(series, 3)
    assert [int(im.pixels[0, 0]) for im in three] == [300, 400, 500]
    with pytest.raises(ImageReadError, match="fewer than"):
        mid_sagittal(series, 8)
    assert [int(im.pixels[0, 0]) for im in load_study(tmp_path / "study", 3)] == [300, 400, 500]


def test_axial_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "axial_study"
    write_series(folder, 5, orientation=AXIAL, description="T2 TSE AX")
    with pytest.raises(ImageReadError, match=r"no sagittal series .*found axial") as info:
        load_study(folder)
    assert info.value.path == folder
    assert sagittal_series(folder) == []


def test_empty_folder_and_junk_only_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="empty") as info:
        load_study(empty)
    assert info.value.path == empty
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_text("not dicom")
    with pytest.raises(ImageReadError, match="no DICOM images found"):
        load_study(junk)


def test_mixed_folder_problems_collected_and_sagittal_chosen(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    write_series(folder / "ax", 4, orientation=AXIAL, description="T2 AX", study_uid=study_uid)
    write_series(folder / "sag", 5, description="T2 SAG", study_uid=study_uid,
                 series_number=3)
    (folder / "README.dcm").write_text("exported by PACS")
    scan = scan_dicom_folder(folder)
    assert sorted(s.plane for s in scan.series) == ["axial", "sagittal"]
    assert len(scan.problems) == 1 and scan.problems[0].path == folder / "README.dcm"
    images = load_study(folder)
    assert len(images) == 1 and images[0].pixels[0, 0] == 300


def test_t2_preferred_over_t1(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    uid = "1.2.826.0.1.3680043.8.498.2"
    write_series(folder / "t1", 9, description="t1_tse_sag", study_uid=uid, series_number=2)
    write_series(folder / "t2", 5, description="t2_tse_sag_384", study_uid=uid,
                 series_number=3, shape=(8, 8))
    ranked = sagittal_series(folder)
    assert [s.weighting for s in ranked] == ["T2", "T1"]
    assert load_study(folder)[0].pixels.shape == (8, 8)


def test_body_part_that_cannot_show_the_lumbar_spine_is_refused(tmp_path: Path) -> None:
    assert [not_lumbar(p) for p in ("CSPINE", "c-spine", "C SPINE", "Lower_Leg", "knee")] == \
        [True] * 5
    assert [not_lumbar(p) for p in ("LSPINE", "L-SPINE", "SPINE", "TLSPINE", "ABDOMEN", "",
                                    "WHOLEBODY")] == [False] * 7
    uid = "1.2.826.0.1.3680043.8.498.7"
    neck = tmp_path / "neck"
    write_series(neck / "t2", 5, description="T2 SAG", study_uid=uid, body_part="CSPINE")
    with pytest.raises(ImageReadError, match=r"Body Part Examined is 'CSPINE'.*lumbar") as info:
        load_study(neck)
    assert info.value.path == neck
    # a whole-spine exam: the lumbar series is read, the cervical one (preferred otherwise,
    # T2 with more slices) is passed over
    write_series(neck / "lumbar", 3, description="T1 SAG", study_uid=uid, body_part="L-SPINE",
                 series_number=5, shape=(8, 8))
    assert load_study(neck)[0].pixels.shape == (8, 8)
    knee = write_mr(tmp_path / "knee.dcm", RAMP, body_part="KNEE")
    with pytest.raises(ImageReadError, match="'KNEE'") as info:
        load_study(knee)
    assert info.value.path == knee
    [img] = load_study(write_mr(tmp_path / "spine.dcm", RAMP, body_part="SPINE"))
    assert img.pixels.shape == RAMP.shape


def test_sequence_weighting_rules() -> None:
    def header(desc: str, te: float | None = None, tr: float | None = None) -> Dataset:
        ds = Dataset()
        ds.SeriesDescription = desc
        if te is not None:
            ds.EchoTime, ds.RepetitionTime = te, tr
        return ds

    assert sequence_weighting(header("SAG T2 FSE")) == "T2"
    assert sequence_weighting(header("sag_t2*_me2d")) == "other"
    assert sequence_weighting(header("T1W_TSE SAG")) == "T1"
    assert sequence_weighting(header("STIR SAG")) == "STIR"
    assert sequence_weighting(header("SAG", te=100.0, tr=3500.0)) == "T2"
    assert sequence_weighting(header("SAG", te=10.0, tr=500.0)) == "T1"
    assert sequence_weighting(header("SAG")) == "unknown"


def test_single_files_through_load_study(tmp_path: Path) -> None:
    axial = write_mr(tmp_path / "ax.dcm", RAMP, orientation=AXIAL)
    with pytest.raises(ImageReadError, match="axial slice"):
        load_study(axial)
    sag = write_mr(tmp_path / "sag.dcm", RAMP)
    [img] = load_study(sag)
    assert img.source == sag


def test_multiframe_file(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 10), v, dtype=np.uint16) for v in (10, 20, 30, 40, 50)])
    # frame positions out of order along x: 6, 0, 12, 3, 9 mm; the normal is -x, so the
    # position order is x = 12, 9, 6, 3, 0 (frames 2, 4, 0, 3, 1)
    xs = [6.0, 0.0, 12.0, 3.0, 9.0]
    path = write_multiframe(tmp_path / "enh.dcm", frames, positions=[(x, 0, 0) for x in xs])
    with pytest.raises(ImageReadError, match="5 frames"):
        read_dicom(path)
    img = read_dicom(path, frame=2)
    assert img.frame == 2 and img.pixels[0, 0] == 30 and img.pixel_spacing == (0.7, 0.7)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_dicom(path, frame=5)
    # the geometric middle (x = 6 mm) is frame 0 holding 10
    assert [int(im.pixels[0, 0]) for im in load_study(path, 3)] == [50, 10, 40]


def test_header_not_altered_by_voi_lut_workaround(tmp_path: Path) -> None:
    ds = make_dataset(np.array([[0, 400]], dtype=np.uint16))
    item = Dataset()
    item.LUTDescriptor = [512, 0, 8]
    item.add_new(0x00283006, "US", [v // 2 for v in range(512)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    img = read_dicom(write_dataset(ds, tmp_path / "lut8.dcm"))
    assert list(img.header.VOILUTSequence[0].LUTDescriptor) == [512, 0, 8]
    np.testing.assert_array_equal(img.display, [[0, 200]])


def test_localizer_and_non_image_files(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    uid = "1.2.826.0.1.3680043.8.498.3"
    write_series(folder / "loc", 3, description="localizer", study_uid=uid, series_number=1,
                 shape=(4, 4))
    write_series(folder / "sag", 5, description="SAG PD", study_uid=uid, series_number=5)
    sr = make_dataset(RAMP, study_uid=uid)  # a non-image object: no Rows / Columns / pixels
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(sr, keyword)
    write_dataset(sr, folder / "sr.dcm")
    scan = scan_dicom_folder(folder)
    assert len(scan.skipped) == 1 and scan.skipped[0][0] == folder / "sr.dcm"
    ranked = sagittal_series(folder)
    assert [s.description for s in ranked] == ["SAG PD"]  # the localizer is left out
    assert load_study(folder)[0].pixels.shape == (16, 20)


def test_slice_location_fallback_without_positions(tmp_path: Path) -> None:
    folder = tmp_path / "noipp"
    uid = "1.2.826.0.1.3680043.8.498.4"
    for k, (location, number) in enumerate([(8.0, 1), (-4.0, 2), (0.0, 3), (4.0, 4), (-8.0, 5)]):
        ds = make_dataset(np.full((4, 4), location + 100, dtype=np.uint16), position=None,
                          series_uid=uid, instance_number=number)
        ds.SliceLocation = location
        write_dataset(ds, folder / f"f{k}.dcm")
    [series] = find_series(folder)
    assert series.position_source == "slice-location"
    assert [s.position for s in series.slices] == [-8.0, -4.0, 0.0, 4.0, 8.0]
    assert series.spacing_between_slices == pytest.approx(4.0)
    assert mid_sagittal(series)[0].pixels[0, 0] == 100


def test_png_file_and_png_folder_through_load_study(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "slices" / "a.png"
    path.parent.mkdir()
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(path)
    [img] = load_study(path)
    assert img.kind == "png" and img.display.shape == (5, 7)
    with pytest.raises(ImageReadError, match="PNG/JPEG"):
        load_study(path.parent)
    with pytest.raises(ImageReadError, match="does not exist"):
        load_study(tmp_path / "missing")


def test_compressed_pixel_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3)
    path = write_mr(tmp_path / "rle.dcm", pixels, compress=RLELossless)
    path.write_bytes(path.read_bytes()[:-200])  # cut inside the RLE fragment
    with pytest.warns(UserWarning, match="End of file"):  # pydicom's own notice
        with pytest.raises(ImageReadError, match="damaged or truncated pixel data"):
            read_dicom(path)

    class _NoDecoder:
        is_available = False

    import lumbardx.data.dicom as dicom_module

    monkeypatch.setattr(dicom_module, "get_decoder", lambda uid: _NoDecoder())
    good = write_mr(tmp_path / "rle2.dcm", pixels, compress=RLELossless)
    with pytest.raises(ImageReadError, match="RLE Lossless, which no installed decoder"):
        read_dicom(good)
