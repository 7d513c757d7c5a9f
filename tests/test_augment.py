"""Augmentation keeps boxes on their pixels; letterbox maps boxes both ways; loader batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumbardx.data.boxes import Sample
from lumbardx.data.errors import InputError
from lumbardx.engine import augment as A
from lumbardx.engine.letterbox import letterbox, letterbox_geometry
from lumbardx.engine.loader import collate, multiscale_size, to_model_input
from lumbardx.engine.mosaic import mixup, mosaic4
from lumbardx.engine.pipeline import TrainTransform
from lumbardx.engine.recipes import AugmentConfig, Recipe


def rect_image(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Black image with white rectangles covering integer boxes ``(x1, y1, x2, y2)``."""
    img = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = 255
    return img


def bright_bbox(img: np.ndarray, thr: int = 128) -> np.ndarray:
    """Tight xyxy box of the pixels above ``thr`` (continuous pixel frame)."""
    ys, xs = np.nonzero(img > thr)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


class ListDataset(list):
    class_names = ["normal", "herniation", "spondylolisthesis"]


def rect_dataset(n: int = 5, seed: int = 0) -> ListDataset:
    rng = np.random.default_rng(seed)
    ds = ListDataset()
    for i in range(n):
        h, w = int(rng.integers(90, 140)), int(rng.integers(90, 160))
        bw, bh = int(rng.integers(18, 30)), int(rng.integers(14, 24))
        x1, y1 = int(rng.integers(5, w - bw - 5)), int(rng.integers(5, h - bh - 5))
        img = rect_image(h, w, [(x1, y1, x1 + bw, y1 + bh)])
        ds.append(Sample(img, np.array([[x1, y1, x1 + bw, y1 + bh]], np.float32),
                         np.array([i % 3], np.int64), f"img{i}.png"))
    return ds


def test_letterbox_geometry_and_inverse() -> None:
    img = rect_image(100, 160, [(40, 30, 80, 50)])
    out, geo = letterbox(img, 128)
    assert out.shape == (128, 128)
    assert (geo.new_w, geo.new_h, geo.pad_x, geo.pad_y) == (128, 80, 0, 24)
    box = np.array([[40, 30, 80, 50]], np.float32)
    mapped = geo.map_boxes(box)
    np.testing.assert_allclose(mapped, [[32, 24 + 24, 64, 40 + 24]], atol=1e-5)
    np.testing.assert_allclose(geo.unmap_boxes(mapped), box, atol=1e-4)
    assert iou(bright_bbox(out), mapped[0]) > 0.9
    # the padding stays black and the image border maps onto the content border
    assert out[:24].max() == 0 and out[24 + 80 :].max() == 0
    np.testing.assert_allclose(geo.map_boxes(np.array([[0, 0, 160, 100]])), [[0, 24, 128, 104]])
    # boxes predicted in the padding are clipped to the original image
    np.testing.assert_allclose(geo.unmap_boxes(np.array([[-5, 0, 10, 30]])), [[0, 0, 12.5, 7.5]])


def test_letterbox_geometry_rejects_empty() -> None:
    with pytest.raises(ValueError):
        letterbox_geometry(0, 10, 64)


@pytest.mark.parametrize("seed", range(6))
def test_random_affine_box_follows_rectangle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rect_image(128, 128, [(40, 50, 80, 74)])
    boxes = np.array([[40, 50, 80, 74]], np.float32)
    out, b, lab = A.random_affine(img, boxes, np.array([1]), rng, 128, degrees=5, translate=0.1,
                                  scale=0.3, shear=2)
    assert out.shape == (128, 128) and out.dtype == np.uint8
    assert len(b) == 1 and lab.tolist() == [1]
    bright = bright_bbox(out)
    # every bright pixel lies under the transformed box (1 px for interpolation)
    assert np.all(bright[:2] >= b[0, :2] - 1) and np.all(bright[2:] <= b[0, 2:] + 1)
    assert iou(bright, b[0]) > 0.8


def test_random_affine_drops_boxes_pushed_out() -> None:
    img = rect_image(64, 64, [(0, 0, 8, 8)])
    m = np.eye(3)
    m[0, 2] = -30  # shift left by 30 px: the box leaves the image
    out = A.warp_affine(img, m, 64, 0)
    assert out.max() == 0
    new = A.clip_boxes(A.transform_boxes(np.array([[0, 0, 8, 8]], np.float32), m), 64, 64)
    assert not A.box_candidates(np.array([[0, 0, 8, 8]], np.float32), new).any()


def test_hflip_mirrors_boxes() -> None:
    img = rect_image(40, 100, [(10, 5, 30, 20)])
    out, b, _ = A.hflip(img, np.array([[10, 5, 30, 20]], np.float32), np.array([0]))
    np.testing.assert_allclose(b, [[70, 5, 90, 20]])
    np.testing.assert_allclose(bright_bbox(out), b[0])


def test_expand_and_crop_keep_boxes_on_pixels() -> None:
    img = rect_image(80, 100, [(20, 30, 50, 50), (60, 10, 90, 25)])
    boxes = np.array([[20, 30, 50, 50], [60, 10, 90, 25]], np.float32)
    labels = np.array([0, 2])
    for seed in range(10):
        rng = np.random.default_rng(seed)
        e_img, e_b, e_l = A.random_expand(img, boxes, labels, rng, 3.0)
        assert e_img.shape[0] >= 80 and e_img.shape[1] >= 100
        for box in e_b:
            x1, y1, x2, y2 = box.astype(int)
            assert e_img[y1:y2, x1:x2].min() == 255
        c_img, c_b, c_l = A.random_crop(e_img, e_b, e_l, rng)
        assert len(c_b) == len(c_l) >= 1
        for box in c_b:
            x1, y1, x2, y2 = np.round(box).astype(int)
            assert c_img[y1:y2, x1:x2].mean() > 250  # the kept part is still the rectangle


def test_intensity_changes_pixels_not_shape() -> None:
    img = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    rng = np.random.default_rng(0)
    out = A.adjust_intensity(img, rng, brightness=0.4, contrast=0.3, gamma=0.3)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    # monotone: intensity order is preserved (no histogram scrambling)
    assert np.all(np.diff(out[0].astype(int)) >= 0)
    np.testing.assert_array_equal(A.adjust_intensity(img, rng), img)


def test_mosaic_and_mixup_keep_boxes_on_pixels() -> None:
    ds = rect_dataset(4)
    parts = [(s.image, s.boxes, s.labels) for s in ds]
    rng = np.random.default_rng(3)
    canvas, boxes, labels = mosaic4(parts, 96, rng)
    assert canvas.shape == (192, 192) and len(boxes) == len(labels) == 4
    for box in boxes:
        if (box[2] - box[0]) > 2 and (box[3] - box[1]) > 2:
            x1, y1, x2, y2 = np.round(box).astype(int)
            assert canvas[y1:y2, x1:x2].mean() > 200
    a = (np.full((8, 8), 200, np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([0]))
    b = (np.zeros((8, 8), np.uint8), np.array([[4, 4, 8, 8]], np.float32), np.array([1]))
    img, bb, ll = mixup(a, b, np.random.default_rng(0), (32.0, 32.0))
    r = img[0, 0] / 200.0
    assert 0.35 < r < 0.65  # Beta(32, 32) concentrates near 0.5
    assert len(bb) == 2 and ll.tolist() == [0, 1]


def test_train_transform_boxes_consistent_and_deterministic() -> None:
    ds = rect_dataset(6)
    aug = AugmentConfig(mosaic=0.5, mixup=0.0, affine=1.0, degrees=3, translate=0.1, scale=0.3,
                        brightness=0.2, contrast=0.2, gamma=0.2)
    tf = TrainTransform(ds, 96, aug)
    for seed in range(8):
        img, boxes, labels = tf(seed % 6, np.random.default_rng(seed))
        assert img.shape == (96, 96) and boxes.shape == (len(labels), 4)
        assert np.all(boxes >= 0) and np.all(boxes <= 96)
        bright = img > 100
        covered = np.zeros_like(bright)
        for x1, y1, x2, y2 in np.round(boxes).astype(int):
            covered[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
        # bright pixels outside every box only come from slivers whose boxes were dropped
        assert (bright & ~covered).sum() <= 0.25 * max(bright.sum(), 1)
    again = tf(2, np.random.default_rng(11))
    np.testing.assert_array_equal(tf(2, np.random.default_rng(11))[0], again[0])


def test_bad_sample_names_the_file() -> None:
    ds = ListDataset([Sample(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4), np.float32),
                             np.zeros(0, np.int64), "bad/rgb.png")])
    with pytest.raises(InputError, match="bad/rgb.png"):
        TrainTransform(ds, 32, AugmentConfig())(0, np.random.default_rng(0))


def test_collate_and_model_input_multiscale() -> None:
    batch = [
        (np.full((64, 64), 255, np.uint8), np.array([[8, 8, 24, 40]], np.float32), np.array([2])),
        (np.zeros((64, 64), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)),
    ]
    images, targets = collate(batch)
    assert images.shape == (2, 1, 64, 64) and images.dtype == torch.uint8
    assert targets.tolist() == [[0, 2, 8, 8, 24, 40]]
    x, t = to_model_input(images, targets, torch.device("cpu"), 96)
    assert x.shape == (2, 3, 96, 96) and x.dtype == torch.float32
    assert float(x.max()) == pytest.approx(1.0) and torch.equal(x[:, 0], x[:, 2])
    assert t.tolist() == [[0, 2, 12, 12, 36, 60]]
    r = Recipe(image_size=64, multi_scale=(32, 128))
    sizes = {multiscale_size(r, 0, 0, i) for i in range(50)}
    assert sizes <= {32, 64, 96, 128} and len(sizes) > 1
    assert multiscale_size(r, 0, 3, 7) == multiscale_size(r, 0, 3, 7)


def test_real_slices_through_pipeline_and_repeat_factors(yolospine_dev) -> None:
    from lumbardx.data.dataset import LumbarDataset
    from lumbardx.engine.recipes import recipe_for
    from lumbardx.engine.sampler import repeat_factors

    ds = LumbarDataset(yolospine_dev, classes="study")
    assert ds.class_names == ["normal", "herniation", "spondylolisthesis"]
    labels = [ds[i].labels for i in range(len(ds))]
    rf = repeat_factors(labels, 3, threshold=0.3)
    with_slip = np.array([2 in lab for lab in labels])
    only_normal = np.array([len(lab) > 0 and set(lab.tolist()) == {0} for lab in labels])
    assert with_slip.any() and only_normal.any()
    # spondylolisthesis is the rarest study class: its images are repeated, normal-only are not
    assert rf[with_slip].min() > 1.0 and np.all(rf[only_normal] == 1.0)
    recipe = recipe_for("yolov5s", image_size=384)
    tf = TrainTransform(ds, 384, recipe.augment)
    for k, i in enumerate(np.flatnonzero(with_slip)[:6]):
        img, boxes, lab = tf(int(i), np.random.default_rng(k))
        assert img.shape == (384, 384) and img.dtype == np.uint8
        assert len(boxes) == len(lab) and np.all((boxes >= 0) & (boxes <= 384))
        assert np.all(boxes[:, 2:] - boxes[:, :2] >= recipe.augment.min_box_size)
        assert set(lab.tolist()) <= {0, 1, 2}


def test_close_mosaic_switches_mosaic_and_mixup_off_for_the_last_epochs() -> None:
    from lumbardx.engine.loader import build_train_loader, set_loader_epoch

    ds = rect_dataset(6)  # one box per image: a mosaic shows several, a single slice one
    aug = AugmentConfig(mosaic=1.0, mixup=1.0, affine=0.0, brightness=0.0)
    recipe = Recipe(image_size=128, epochs=3, batch_size=6, num_workers=0, close_mosaic=1,
                    augment=aug)
    loader = build_train_loader(ds, recipe, seed=0)
    counts = {}
    for epoch in range(3):
        set_loader_epoch(loader, epoch, 0)
        _, targets = next(iter(loader))
        counts[epoch] = np.bincount(targets[:, 0].long().numpy(), minlength=6).tolist()
    assert max(counts[0]) > 1 and max(counts[1]) > 1  # mosaic (+ mixup) epochs
    assert counts[2] == [1] * 6  # the last epoch: whole single slices
    with pytest.raises(ValueError, match="close_mosaic"):
        Recipe(close_mosaic=-1)
