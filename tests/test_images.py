"""PNG / JPEG reading: modes, bit depths, size limit, damaged files, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbardx.data.errors import ImageReadError
from lumbardx.data.images import (
    MedicalImage,
    image_dimensions,
    image_size,
    percentile_display,
    read_image,
    sniff_kind,
    window_to_uint8,
)


def _ramp(h: int = 24, w: int = 32, peak: int = 255, dtype: type = np.uint8) -> np.ndarray:
    return np.linspace(0, peak, h * w).reshape(h, w).round().astype(dtype)


def test_png_8bit_gray_kept_as_is(tmp_path: Path) -> None:
    gray = _ramp()
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    img = read_image(path)
    assert img.kind == "png" and img.bits == 8 and img.pixel_spacing is None
    assert img.header is None and img.source == path
    assert img.pixels.dtype == np.float32 and img.display.dtype == np.uint8
    np.testing.assert_array_equal(img.display, gray)
    np.testing.assert_array_equal(img.pixels, gray.astype(np.float32))
    assert (img.height, img.width) == (24, 32)


def test_png_16bit_raw_values_and_percentile_display(tmp_path: Path) -> None:
    raw = _ramp(40, 50, peak=60000, dtype=np.uint16)
    raw[0, 0] = 65535  # one hot pixel must not compress the display range
    path = tmp_path / "deep.png"
    Image.fromarray(raw).save(path)
    img = read_image(path)
    assert img.bits == 16
    np.testing.assert_array_equal(img.pixels, raw.astype(np.float32))
    assert img.display.min() == 0 and img.display.max() == 255
    # Middle of the ramp lands mid-grey: the 0.5-99.5 percentile window ignores the hot pixel.
    assert 120 <= int(img.display[20, 25]) <= 135
    flat = img.display.ravel()[1:].astype(int)
    assert np.all(np.diff(flat) >= 0)  # monotonic ramp stays monotonic


def test_png_rgb_rgba_to_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    rgb[4:, :, :] = 200  # grey lower half
    for mode in ("RGB", "RGBA"):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(rgb).convert(mode).save(path)
        img = read_image(path)
        assert img.pixels[0, 0] == pytest.approx(0.299 * 255, abs=1e-3)
        assert img.display[0, 0] == 76
        assert img.pixels[7, 7] == pytest.approx(200.0, abs=1e-3)
        assert img.display[7, 7] == 200


def test_png_gray_alpha_and_palette(tmp_path: Path) -> None:
    gray = _ramp(10, 12)
    la_path = tmp_path / "la.png"
    Image.fromarray(gray).convert("LA").save(la_path)
    np.testing.assert_array_equal(read_image(la_path).display, gray)

    pal = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="L").convert("P")
    pal.putpalette([10, 10, 10, 128, 128, 128, 250, 250, 250] + [0] * (3 * 253))
    p_path = tmp_path / "palette.png"
    pal.save(p_path)
    assert Image.open(p_path).mode == "P"
    np.testing.assert_array_equal(read_image(p_path).display, [[10, 128], [250, 128]])


def test_jpeg_gray_and_rgb(tmp_path: Path) -> None:
    gray = _ramp(32, 32)
    path = tmp_path / "gray.jpg"
    Image.fromarray(gray).save(path, quality=95)
    img = read_image(path)
    assert img.kind == "jpeg" and img.bits == 8
    assert np.abs(img.display.astype(int) - gray).max() <= 8  # lossy, but close
    rgb_path = tmp_path / "rgb.jpeg"
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(rgb_path, quality=95)
    rgb_img = read_image(rgb_path)
    assert rgb_img.display.shape == (32, 32)
    assert np.abs(rgb_img.display.astype(int) - gray).max() <= 8


def test_type_comes_from_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "actually_png.jpg"
    Image.fromarray(_ramp()).save(path, format="PNG")
    assert sniff_kind(path) == "png"
    assert read_image(path).kind == "png"


def test_oversized_image_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_ramp(100, 120)).save(path)
    with pytest.raises(ImageReadError, match="above the limit of 5,000 pixels") as info:
        read_image(path, max_pixels=5000)
    assert info.value.path == path
    assert read_image(path, max_pixels=12000).width == 120


def test_pillow_decompression_bomb_becomes_image_read_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(_ramp(100, 120)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's hard stop: 2x this
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path, max_pixels=10**9)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_files(tmp_path: Path, fmt: str, suffix: str) -> None:
    noise = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(noise).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(path)
    assert info.value.path == path


def test_empty_missing_and_foreign_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    text = tmp_path / "notes.png"
    text.write_text("patient list, not an image\n")
    with pytest.raises(ImageReadError, match="not a PNG, JPEG or DICOM"):
        read_image(text)
    tiff = tmp_path / "scan.tif"
    Image.fromarray(_ramp()).save(tiff)
    with pytest.raises(ImageReadError, match="TIFF"):
        read_image(tiff)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_image_size_from_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(_ramp(30, 70)).save(path)
    assert image_size(path) == (70, 30)
    jpg = tmp_path / "wide.jpg"
    Image.fromarray(_ramp(30, 70)).save(jpg)
    assert image_size(jpg) == (70, 30)
    assert image_dimensions(path) == image_dimensions(jpg) == (70, 30, 1)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((5, 9, 4), np.uint8), mode="RGBA").save(rgba)
    assert image_dimensions(rgba) == (9, 5, 4)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        image_dimensions(tmp_path / "bad.png")


def test_display_helpers() -> None:
    values = np.array([[-10.0, 0.0, 40.0, 100.0, 200.0]])
    np.testing.assert_array_equal(window_to_uint8(values, 0, 100), [[0, 0, 102, 255, 255]])
    np.testing.assert_array_equal(window_to_uint8(values, 100, 0), [[255, 255, 153, 0, 0]])
    flat = np.full((4, 4), 7.0, dtype=np.float32)
    assert percentile_display(flat).max() == 0  # constant image: no division by zero


def test_medical_image_checks_arrays() -> None:
    with pytest.raises(ValueError, match="float32"):
        MedicalImage(pixels=np.zeros((4, 4), np.uint8), display=np.zeros((4, 4), np.uint8),
                     pixel_spacing=None, source=Path("x.png"), kind="png")
    with pytest.raises(ValueError, match="uint8"):
        MedicalImage(pixels=np.zeros((4, 4), np.float32), display=np.zeros((4, 5), np.uint8),
                     pixel_spacing=None, source=Path("x.png"), kind="png")


def test_real_png(yolospine_dev: Path) -> None:
    path = sorted((yolospine_dev / "images").glob("*.png"))[0]
    img = read_image(path)
    assert img.display.shape == (384, 384) and img.display.dtype == np.uint8
    assert img.kind == "png" and img.bits == 8
    assert image_size(path) == (384, 384)
    assert img.display.std() > 10  # a real MR slice, not a blank


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_applied_only_when_asked(tmp_path: Path, fmt: str) -> None:
    """Diagnosis reads a PNG / JPEG as viewers show it (EXIF Orientation applied and
    recorded); annotated datasets keep the stored pixels, on which LabelImg draws."""
    from PIL import ImageOps

    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        img = Image.fromarray(_ramp(24, 32))
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(path, format=fmt, exif=exif)
        with Image.open(path) as opened:
            stored = np.asarray(opened.convert("L"))
            upright = np.asarray(ImageOps.exif_transpose(opened).convert("L"))
        shown = read_image(path, exif=True)
        np.testing.assert_array_equal(shown.display, upright)
        assert shown.exif_orientation == orientation
        raw = read_image(path)
        np.testing.assert_array_equal(raw.display, stored)
        assert raw.exif_orientation == 1
    assert upright.shape == (32, 24)  # orientation 8: turned a quarter
    big = tmp_path / "big.png"  # reduced first, then turned
    img = Image.fromarray(_ramp(600, 1000))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(big, exif=exif)
    assert read_image(big, exif=True, max_side=500).display.shape == (500, 300)
