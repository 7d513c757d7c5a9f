"""Hostile input: decoder crashes, self-contradicting headers, huge images, pydicom's corpus.

Every file either gives an image or one :class:`InputError`; a native decoder that aborts runs
in a child process, so the test process lives on and decodes the next file.
"""

from __future__ import annotations

import logging
import math
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_bench
from dicom_factory import make_dataset, write_dataset, write_mr
from PIL import Image
from pydicom.data import get_testdata_files
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

import lumbardx.data.dicom as dicom_module
from lumbardx.data.decode import (
    DecoderFailed,
    DecoderProcess,
    block_mean,
    reduction_step,
)
from lumbardx.data.dicom import read_dicom
from lumbardx.data.errors import ImageReadError, InputError
from lumbardx.data.images import read_image

RAMP = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 8)  # 0 .. 3832
BOUND_BYTES = 1.5e9


def _abort_decoder(*_: object) -> None:
    """Stands in for the decoder in the child: dies as a native abort does."""
    os.abort()


def garbage_jpeg2000(path: Path) -> Path:
    """A JPEG 2000 file whose one fragment is a SOC + SIZ marker followed by random bytes
    (this seed makes a native decoder abort the process it runs in)."""
    ds = make_dataset(np.zeros((64, 64), np.uint16))
    noise = np.random.default_rng(1).integers(0, 256, 9472, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + noise])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return write_dataset(ds, path)


def good_compressed(path: Path) -> tuple[Path, np.ndarray]:
    pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3)
    return write_mr(path, pixels, compress=RLELossless), pixels


# ---------------------------------------------------------------- decoder isolation

def test_garbage_jpeg2000_is_an_input_error_and_the_process_lives_on(tmp_path: Path) -> None:
    bad = garbage_jpeg2000(tmp_path / "bad.dcm")
    with pytest.raises(ImageReadError, match="could not be decoded|damaged") as info:
        read_dicom(bad)
    assert info.value.path == bad and "\n" not in info.value.problem
    good, pixels = good_compressed(tmp_path / "good.dcm")
    np.testing.assert_array_equal(read_dicom(good).pixels, pixels)  # a fresh decoder
    np.testing.assert_array_equal(read_dicom(write_mr(tmp_path / "n.dcm", RAMP)).pixels, RAMP)


def test_decoder_killed_by_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, pixels = good_compressed(tmp_path / "good.dcm")
    monkeypatch.setattr(dicom_module, "_decode_file", _abort_decoder)
    with pytest.raises(ImageReadError, match=r"could not be decoded \(decoder crashed: SIGABRT\)"):
        read_dicom(good)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_dicom(good).pixels, pixels)


def test_native_pixel_data_is_decoded_in_process(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_child(*_: object) -> None:
        raise AssertionError("native pixel data went to the decoder process")

    monkeypatch.setattr(dicom_module, "run_isolated", no_child)
    np.testing.assert_array_equal(read_dicom(write_mr(tmp_path / "n.dcm", RAMP)).pixels, RAMP)


def test_decoder_process_time_limit_exit_and_reuse() -> None:
    worker = DecoderProcess(timeout_s=1.0)
    try:
        assert worker.call(math.sqrt, 16.0) == 4.0
        first = worker._proc
        assert worker.call(math.sqrt, 9.0) == 3.0 and worker._proc is first  # reused
        t0 = time.perf_counter()
        with pytest.raises(DecoderFailed, match="did not finish within 1 s"):
            worker.call(time.sleep, 30)
        assert time.perf_counter() - t0 < 10
        with pytest.raises(DecoderFailed, match="exited with status 3"):
            worker.call(os._exit, 3)
        with pytest.raises(DecoderFailed, match="TypeError"):
            worker.call(math.sqrt, "x")
        assert worker.call(math.sqrt, 25.0) == 5.0
    finally:
        worker.close()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc for RLIMIT_AS")
def test_decoder_process_memory_limit() -> None:
    worker = DecoderProcess(memory_budget=64 * 2**20)
    try:
        with pytest.raises(DecoderFailed, match="more than the 64 MiB"):
            worker.call(bytearray, 2**30)
        assert len(worker.call(bytearray, 2**20)) == 2**20  # the limit is per call
    finally:
        worker.close()


# ---------------------------------------------------------------- header contradictions

def _with(tmp_path: Path, name: str, pixels: np.ndarray = RAMP, **fields: object) -> Path:
    ds = make_dataset(pixels)
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return write_dataset(ds, tmp_path / f"{name}.dcm")


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(("fields", "message"), [
    ({"Rows": 0}, "Rows is 0"),
    ({"Columns": 0}, "Columns is 0"),
    ({"Rows": 9000}, "Rows is 9,000, above the limit"),
    ({"Rows": 30}, "truncated pixel data: Pixel Data holds 960 bytes"),
    ({"Rows": 12}, "more than the header declares"),
    ({"Columns": 10}, "more than the header declares"),
    ({"BitsAllocated": 12}, "Bits Allocated is 12"),
    ({"BitsAllocated": 1}, "Bits Allocated is 1"),
    ({"BitsStored": 17}, "Bits Stored is 17"),
    ({"SamplesPerPixel": 2}, "Samples per Pixel is 2"),
    ({"SamplesPerPixel": 4}, "Samples per Pixel is 4"),
    ({"NumberOfFrames": 0}, "Number of Frames is 0"),
    ({"NumberOfFrames": -2}, "Number of Frames is -2"),
    ({"RescaleSlope": 0, "RescaleIntercept": 0}, "Rescale Slope is 0"),
    ({"RescaleSlope": "NaN", "RescaleIntercept": 0}, "Rescale Slope is nan"),
    ({"RescaleSlope": "inf", "RescaleIntercept": 0}, "Rescale Slope is inf"),
    ({"RescaleSlope": 1, "RescaleIntercept": "NaN"}, "Rescale Intercept is nan"),
    ({"PixelData": b""}, "truncated pixel data: Pixel Data holds 0 bytes"),
])
def test_contradicting_header_refused(tmp_path: Path, fields: dict[str, object],
                                      message: str) -> None:
    path = _with(tmp_path, "bad", **fields)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(path)
    assert info.value.path == path and "\n" not in info.value.problem


@pytest.mark.filterwarnings("ignore:The pixel data is 1000 bytes long")
def test_zero_padding_after_pixel_data_is_accepted(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = _with(tmp_path, "padded", PixelData=RAMP.tobytes() + bytes(40))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(read_dicom(path).pixels, RAMP)
    assert "40 zero padding bytes" in caplog.text


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("spacing", [[0.0, 0.0], ["NaN", 0.5], [-0.5, 0.5], [0.5, "inf"]])
def test_unusable_pixel_spacing_is_unknown_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, spacing: list[object]) -> None:
    path = _with(tmp_path, "spacing", PixelSpacing=spacing)
    with caplog.at_level(logging.WARNING):
        img = read_dicom(path)
    assert img.pixel_spacing is None
    assert "Pixel Spacing" in caplog.text and "unknown" in caplog.text


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("width", [0.0, -400.0, "NaN", "inf"])
def test_unusable_window_falls_back_to_the_data_range(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, width: object) -> None:
    plain = read_dicom(write_mr(tmp_path / "plain.dcm", RAMP))
    path = _with(tmp_path, "window", WindowCenter=500.0, WindowWidth=width)
    with caplog.at_level(logging.WARNING):
        img = read_dicom(path)
    np.testing.assert_array_equal(img.display, plain.display)  # the percentile window
    assert "percentile window" in caplog.text


def test_png_bytes_named_dcm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "slice.dcm"
    Image.fromarray(RAMP.astype(np.uint8)).save(path, format="PNG")
    with caplog.at_level(logging.WARNING):
        img = read_image(path)
    assert img.kind == "png" and img.pixel_spacing is None
    assert "holds a PNG image" in caplog.text
    with pytest.raises(ImageReadError, match="holds a PNG image, not DICOM"):
        read_dicom(path)


def test_huge_header_claim_refused_before_allocating(tmp_path: Path) -> None:
    path = _with(tmp_path, "huge", Rows=65535, Columns=65535)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageReadError, match="Rows is 65,535, above the limit"):
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 8 * 2**20


# ---------------------------------------------------------------- size bounds

def test_block_mean_and_step() -> None:
    assert reduction_step(2048, 100) == 1 and reduction_step(2049, 10) == 2
    assert reduction_step(7000, 7000) == 4 and reduction_step(9000, 9000, None) == 1
    values = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
    out = block_mean(values, 3)
    assert out.shape == (2, 3) and out.dtype == np.uint16
    assert out[0, 0] == values[:3, :3].mean() == 8
    assert out[1, 2] == np.rint(values[3:, 6:].mean()) == 30  # 30.5 to the nearest even
    rgb = np.dstack([values, values * 2, values * 3]).astype(np.float32)
    np.testing.assert_allclose(block_mean(rgb, 2)[0, 0], rgb[:2, :2].mean(axis=(0, 1)))


@pytest.mark.parametrize("syntax", [None, RLELossless])
def test_large_dicom_reduced_with_spacing_scaled(tmp_path: Path, syntax: object) -> None:
    pixels = np.random.default_rng(0).integers(0, 4000, (300, 200), dtype=np.uint16)
    path = write_mr(tmp_path / "big.dcm", pixels, compress=syntax, pixel_spacing=(0.5, 0.6))
    img = read_dicom(path, max_side=100)
    assert img.pixels.shape == (100, 67) and img.display.shape == (100, 67)
    assert img.pixel_spacing == pytest.approx((1.5, 1.8))
    assert img.pixels[0, 0] == round(pixels[:3, :3].mean())
    assert int(img.header.Rows) == 300  # the header keeps the file's size
    full = read_dicom(path, max_side=None)
    assert full.pixels.shape == (300, 200) and full.pixel_spacing == (0.5, 0.6)


def test_default_reduction_to_display_side(tmp_path: Path) -> None:
    path = write_mr(tmp_path / "tall.dcm", np.ones((2500, 60), np.uint16))
    assert read_image(path).pixels.shape == (1250, 30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_7000_pixel_image_read_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    gradient = np.add.outer(np.arange(7000), np.arange(7000))
    if kind == "dicom":
        path = write_mr(tmp_path / "huge.dcm", (gradient % 4096).astype(np.uint16))
    else:
        path = tmp_path / f"huge.{kind}"
        Image.fromarray((gradient % 256).astype(np.uint8)).save(
            path, format=kind.upper(), **({"compress_level": 1} if kind == "png" else {}))
    result = load_bench("hostile_corpus").peak_memory(path, timeout_s=120)
    assert "error" not in result, result
    assert max(result["shape"]) <= 2048
    assert result["peak_growth_mb"] * 2**20 < BOUND_BYTES


# ---------------------------------------------------------------- pydicom's corpus

@pytest.mark.filterwarnings("ignore")
def test_pydicom_corpus_gives_an_image_or_one_input_error() -> None:
    files = sorted(p for p in map(Path, get_testdata_files()) if p.is_file())
    assert files, "pydicom's test files are not installed"
    outcomes = {"image": 0, "input_error": 0}
    logging.disable(logging.WARNING)
    try:
        for path in files:
            for read in (read_image, lambda p: read_dicom(p, frame=0)):
                try:
                    img = read(path)
                    assert img.display.dtype == np.uint8 and max(img.display.shape) <= 2048
                    outcomes["image"] += 1
                except InputError as exc:
                    assert "\n" not in exc.problem, exc.problem
                    outcomes["input_error"] += 1
    finally:
        logging.disable(logging.NOTSET)
    assert outcomes["image"] > 50 and outcomes["input_error"] > 50
