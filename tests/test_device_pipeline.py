"""The device-resident training pipeline against the CPU pipeline it replaces on a GPU.

Boxes: the same random draws give the CPU functions' boxes exactly (mosaic + affine; expand +
crop + letterbox + affine). Images: near the CPU warp, and every box on its bright rectangle.
Distributions: box counts, sizes, image brightness and padding match the CPU pipeline's over
many samples for the YOLOv5 and PP-YOLOv2 recipes. Loader: determinism, resume, DDP split,
pairs, and training through ``train`` with ``pipeline="device"``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from lumbardx.data.boxes import Sample
from lumbardx.engine import augment as A
from lumbardx.engine.device_augment import CROP_ASPECT, CROP_SCALING, augment_batch, draw
from lumbardx.engine.device_data import DeviceSet
from lumbardx.engine.device_loader import DeviceTrainLoader
from lumbardx.engine.letterbox import letterbox
from lumbardx.engine.loader import build_train_loader, set_loader_epoch
from lumbardx.engine.mosaic import mosaic4
from lumbardx.engine.pipeline import TrainTransform
from lumbardx.engine.recipes import AugmentConfig, recipe_for
from lumbardx.engine.trainer import train
from tests.test_engine import ListDataset, _final_tensors, shapes_dataset, tiny_detector, \
    tiny_recipe

S = 128


def blob_dataset(n: int, seed: int = 0, pairs: bool = False) -> ListDataset:
    """Slices of long side ``S`` (some portrait, some landscape) with 1-4 non-overlapping
    bright rectangles on a smooth textured background, a box on each."""
    rng = np.random.default_rng(seed)
    ds = ListDataset()
    for i in range(n):
        h, w = (S, int(rng.integers(80, S + 1))) if i % 2 else (int(rng.integers(80, S + 1)), S)
        yy, xx = np.mgrid[:h, :w]
        phase = rng.uniform(0, 6)
        img = (40 + 20 * np.sin(xx / 9 + phase) * np.cos(yy / 11) + xx * 30 / w).astype(np.uint8)
        boxes, labels = [], []
        for k in range(int(rng.integers(1, 5))):
            bw, bh = int(rng.integers(12, 30)), int(rng.integers(8, 20))
            y1 = 4 + k * (h // 4)
            x1 = int(rng.integers(2, w - bw - 2))
            if y1 + bh >= h - 2:
                break
            img[y1:y1 + bh, x1:x1 + bw] = 230
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(int(rng.integers(0, 3)))
        image = np.stack([img, (255 - img) // 2]) if pairs else img
        ds.append(Sample(image, np.array(boxes, np.float32), np.array(labels, np.int64),
                         f"blob/{i}.png"))
    return ds


class QueueRng:
    """Stands in for ``numpy.random.Generator`` in the CPU functions: returns prepared values
    in call order, so the CPU code runs on the device pipeline's draws."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def _next(self) -> float:
        return self.values.pop(0)

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return self._next()

    def choice(self, options: object) -> float:
        return self._next()


def _device_boxes(ds: ListDataset, index: int, a: AugmentConfig, seed: int
                  ) -> tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
    dset = DeviceSet.build(ds, S)
    raw = draw(np.random.default_rng(seed), a, 1, len(ds))
    img, tg = augment_batch(dset, [index], np.random.default_rng(seed), a)
    return raw, img, tg


def _final(boxes: np.ndarray, labels: np.ndarray, a: AugmentConfig) -> np.ndarray:
    boxes = A.clip_boxes(boxes, S, S)
    keep = ((boxes[:, 2:] - boxes[:, :2]) >= a.min_box_size).all(1)
    return np.concatenate([labels[keep, None].astype(np.float32), boxes[keep]], 1)


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_affine_boxes_equal_the_cpu_functions(seed: int) -> None:
    ds = blob_dataset(8, seed=seed)
    a = AugmentConfig(mosaic=1.0, affine=1.0 if seed % 3 else 0.0, degrees=5.0, scale=0.5,
                      shear=2.0, translate=0.1, brightness=0.0)
    raw, img, tg = _device_boxes(ds, seed % 8, a, seed)
    parts = [(ds[i].image, ds[i].boxes, ds[i].labels)
             for i in [seed % 8, *raw["partners"][0].tolist()]]
    rng = QueueRng([raw["centre"][0, 0] * S, raw["centre"][0, 1] * S])
    canvas, boxes, labels = mosaic4(parts, S, rng)  # type: ignore[arg-type]
    on = bool(raw["affine_on"][0])
    affine_rng = QueueRng([raw["angle"][0], raw["scale_gain"][0] - 1.0, *raw["shear"][0],
                           *raw["translate"][0]]) if on else None
    cpu_img, boxes, labels = A.random_affine(canvas, boxes, labels, affine_rng, S,  # type: ignore
                                             a.degrees, a.translate, a.scale, a.shear)
    want = _final(boxes, labels, a)
    got = tg[:, 1:].numpy()
    assert got.shape == want.shape and len(want) > 0
    np.testing.assert_allclose(got, want, atol=2e-3)
    # the same picture, up to the two bilinear samplers
    diff = np.abs(img[0, 0].numpy().astype(float) - cpu_img.astype(float))
    assert np.median(diff) <= 1.0 and diff.mean() < 4.0


def _cpu_crop_values(raw: dict[str, np.ndarray], w: float, h: float) -> list[float]:
    """The values ``augment.random_crop`` asks its generator for, from the device draws:
    the threshold, then per attempt scale and aspect, and position only where the size fits."""
    values: list[float] = [float(raw["crop_thresh"][0])]
    for u0, u1, u2, u3 in raw["crop_u"][0]:
        s = CROP_SCALING[0] + u0 * (CROP_SCALING[1] - CROP_SCALING[0])
        lo, hi = max(CROP_ASPECT[0], s * s), min(CROP_ASPECT[1], 1.0 / (s * s))
        ar = lo + u1 * (hi - lo)
        values += [s, ar]
        ch, cw = int(h * s / math.sqrt(ar)), int(w * s * math.sqrt(ar))
        if ch < 2 or cw < 2 or ch > h or cw > w:
            continue
        values += [u2 * (h - ch), u3 * (w - cw)]
    return values


@pytest.mark.parametrize("seed", range(8))
def test_expand_crop_letterbox_affine_boxes_equal_the_cpu_functions(seed: int) -> None:
    ds = blob_dataset(6, seed=seed)
    a = AugmentConfig(expand=0.6, crop=0.8, affine=0.6, degrees=3.0, scale=0.3,
                      translate=0.05, brightness=0.0)
    index = seed % 6
    raw, img, tg = _device_boxes(ds, index, a, seed)
    image, boxes, labels = ds[index].image, ds[index].boxes, ds[index].labels
    if raw["expand_on"][0]:
        h, w = image.shape
        r = float(raw["expand_ratio"][0])
        nh, nw = int(h * r), int(w * r)
        rng = QueueRng([r, raw["expand_pos"][0, 1] * (nh - h), raw["expand_pos"][0, 0] * (nw - w)])
        image, boxes, labels = A.random_expand(image, boxes, labels, rng,  # type: ignore
                                               a.expand_ratio)
    if raw["crop_on"][0]:
        rng = QueueRng(_cpu_crop_values(raw, image.shape[1], image.shape[0]))
        image, boxes, labels = A.random_crop(image, boxes, labels, rng)  # type: ignore
    image, geo = letterbox(image, S)
    boxes = geo.map_boxes(boxes)
    if raw["affine_on"][0]:
        rng = QueueRng([raw["angle"][0], raw["scale_gain"][0] - 1.0, *raw["shear"][0],
                        *raw["translate"][0]])
        image, boxes, labels = A.random_affine(image, boxes, labels, rng, S,  # type: ignore
                                               a.degrees, a.translate, a.scale, a.shear)
    want = _final(boxes, labels, a)
    got = tg[:, 1:].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3)
    diff = np.abs(img[0, 0].numpy().astype(float) - image.astype(float))
    assert np.median(diff) <= 2.0


def _box_fill(images: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Fraction of bright pixels inside each target box (the blobs are the only bright
    pixels, and the only boxes)."""
    out = []
    for b, _, x1, y1, x2, y2 in targets.tolist():
        img = images[int(b), 0]
        patch = img[int(math.ceil(y1)):int(y2), int(math.ceil(x1)):int(x2)]
        if patch.numel():
            out.append(float((patch > 150).float().mean()))
    return out


def _uncovered(images: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Bright pixels outside every target box (a pixel of margin for resampling), and all
    bright pixels, of ``images [B, C, S, S]``."""
    covered = torch.zeros(images.shape[0], S, S, dtype=torch.bool)
    for b, _, x1, y1, x2, y2 in targets.tolist():
        covered[int(b), max(int(y1) - 1, 0):int(y2) + 2, max(int(x1) - 1, 0):int(x2) + 2] = True
    bright = images[:, 0] > 150
    return int((bright & ~covered).sum()), int(bright.sum())


@pytest.mark.parametrize("model", ["yolov5n", "ppyolov2", "yolov3"])
def test_boxes_stay_on_their_rectangles(model: str) -> None:
    recipe = recipe_for(model, image_size=S)
    a = replace(recipe.augment, degrees=0.0, shear=0.0, brightness=0.0, contrast=0.0,
                gamma=0.0, mixup=0.0)
    data = blob_dataset(12, seed=4)
    dset = DeviceSet.build(data, S)
    transform = TrainTransform(data, S, a)
    fills, dev_out, cpu_out = [], [0, 0], [0, 0]
    for seed in range(4):
        img, tg = augment_batch(dset, np.arange(12), np.random.default_rng(seed), a)
        fills += _box_fill(img, tg)
        dev_out = [x + y for x, y in zip(dev_out, _uncovered(img, tg))]
        for i in range(12):
            cimg, boxes, labels = transform(i, np.random.default_rng([seed, i]))
            t = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 2), np.float32), boxes], 1))
            cpu_out = [x + y for x, y in zip(cpu_out, _uncovered(torch.from_numpy(cimg)[None, None],
                                                                 t))]
    assert len(fills) > 40 and np.median(fills) > 0.9 and min(fills) > 0.5
    # bright pixels without a box: slivers box_candidates dropped, and pieces of rectangles
    # whose centre a random crop cut off (dropped by design): no more than the CPU pipeline
    assert dev_out[0] / dev_out[1] <= 1.5 * cpu_out[0] / cpu_out[1] + 0.01


def _stats(samples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    imgs = [i if i.ndim == 2 else i[0] for i, _ in samples]
    boxes = np.concatenate([b for _, b in samples])
    return {"count": np.array([len(b) for _, b in samples]),
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            "cx": (boxes[:, 0] + boxes[:, 2]) / 2,
            "mean": np.array([float(i.mean()) for i in imgs]),
            "pad": np.array([float((i == 0).mean()) for i in imgs])}


@pytest.mark.parametrize("model", ["yolov5n", "ppyolov2"])
def test_distributions_match_the_cpu_pipeline(model: str) -> None:
    recipe = recipe_for(model, image_size=S)
    ds = blob_dataset(40, seed=7)
    transform = TrainTransform(ds, S, recipe.augment)
    cpu = []
    for i in range(400):
        img, boxes, _ = transform(i % 40, np.random.default_rng([1, i]))
        cpu.append((img, boxes))
    dset = DeviceSet.build(ds, S)
    dev = []
    for k in range(25):
        img, tg = augment_batch(dset, (np.arange(16) + 16 * k) % 40, np.random.default_rng([2, k]),
                                recipe.augment)
        for b in range(16):
            sel = tg[:, 0] == b
            dev.append((img[b, 0].numpy(), tg[sel, 2:].numpy()))
    c, d = _stats(cpu), _stats(dev)
    for key in ("count", "mean", "pad"):
        assert abs(c[key].mean() - d[key].mean()) <= 0.08 * abs(c[key].mean()) + 0.02, key
    for key in ("area", "cx", "mean"):
        ks = stats.ks_2samp(c[key], d[key])  # 400 samples each: p ~ 0.05 at D ~ 0.096
        assert ks.pvalue > 0.001 and ks.statistic < 0.12, (key, ks)


def test_batches_are_deterministic_and_shaped() -> None:
    dset = DeviceSet.build(blob_dataset(10, seed=1), S)
    a = recipe_for("ppyolov2", image_size=S).augment
    i1, t1 = augment_batch(dset, [0, 3, 5], np.random.default_rng(9), a)
    i2, t2 = augment_batch(dset, [0, 3, 5], np.random.default_rng(9), a)
    i3, _ = augment_batch(dset, [0, 3, 5], np.random.default_rng(10), a)
    assert i1.shape == (3, 1, S, S) and i1.dtype == torch.uint8
    assert t1.dtype == torch.float32 and t1.shape[1] == 6
    assert torch.equal(i1, i2) and torch.equal(t1, t2) and not torch.equal(i1, i3)
    assert set(t1[:, 0].long().tolist()) <= {0, 1, 2} and (t1[:, 1] >= 0).all()
    assert (t1[:, 2:] >= 0).all() and (t1[:, 2:] <= S).all()
    assert ((t1[:, 4:] - t1[:, 2:4]) >= a.min_box_size).all()


def test_pairs_keep_both_channels_and_single_sequence() -> None:
    dset = DeviceSet.build(blob_dataset(8, seed=2, pairs=True), S)
    assert dset.channels == 2
    a = replace(recipe_for("yolov5n", image_size=S).augment, single_sequence=0.5)
    img, _ = augment_batch(dset, np.arange(8), np.random.default_rng(3), a)
    raw = draw(np.random.default_rng(3), a, 8, 8)
    same = [torch.equal(img[b, 0], img[b, 1]) for b in range(8)]
    assert same == raw["single_on"].tolist() and 0 < sum(same) < 8


def test_loader_matches_sampler_resumes_and_splits() -> None:
    data = blob_dataset(10, seed=5)
    recipe = replace(recipe_for("yolov5n", image_size=S, epochs=3), batch_size=4,
                     pipeline="device", close_mosaic=1)
    cpu = build_train_loader(data, recipe, seed=3, num_classes=3)
    dev = DeviceTrainLoader(data, recipe, 3, "cpu", num_classes=3)
    for epoch in (0, 2):
        set_loader_epoch(cpu, epoch, 3)
        set_loader_epoch(dev, epoch, 3)
        batches = list(dev)
        assert len(batches) == len(dev) == len(cpu)
        assert sum(b[0].shape[0] for b in batches) == len(cpu.sampler)
    again = DeviceTrainLoader(data, recipe, 3, "cpu", num_classes=3)
    again.set_epoch(2)
    for (i1, t1), (i2, t2) in zip(dev, again):
        assert torch.equal(i1, i2) and torch.equal(t1, t2)
    halves = [DeviceTrainLoader(data, recipe, 3, "cpu", rank=r, world_size=2, num_classes=3)
              for r in (0, 1)]
    for h in halves:
        h.set_epoch(1)
    assert sum(b[0].shape[0] for h in halves for b in h) >= 10


def test_train_with_the_device_pipeline_and_resume(tmp_path: Path) -> None:
    train_set, val_set = shapes_dataset(7, seed=1), shapes_dataset(3, seed=2)
    recipe = tiny_recipe(pipeline="device")
    torch.manual_seed(0)
    full = train(tiny_detector(), train_set, val_set, recipe, tmp_path / "full", "cpu",
                 seed=5, progress=False, final_eval=False)
    losses = [r["train/loss"] for r in full.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)

    class Interrupt(Exception):
        pass

    def stop(row: dict) -> None:
        if row["epoch"] == 0:
            raise Interrupt

    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        train(tiny_detector(), train_set, val_set, recipe, tmp_path / "cut", "cpu", seed=5,
              progress=False, on_epoch_end=stop)
    torch.manual_seed(7)
    train(tiny_detector(), train_set, val_set, recipe, tmp_path / "cut", "cpu", resume=True,
          seed=5, progress=False, final_eval=False)
    a, b = _final_tensors(tmp_path / "full"), _final_tensors(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_unknown_pipeline_is_refused() -> None:
    with pytest.raises(ValueError, match="pipeline"):
        tiny_recipe(pipeline="gpu")


def test_time_limit_stops_after_the_epoch_that_passes_it(tmp_path: Path) -> None:
    recipe = tiny_recipe(pipeline="device", epochs=5, time_limit_s=1e-6)
    res = train(tiny_detector(), shapes_dataset(4), shapes_dataset(2, seed=3), recipe, tmp_path,
                "cpu", progress=False, final_eval=False)
    assert res.epochs_done == 1 and len(res.history) == 1
    assert "val/map50" in res.history[0] and res.best is not None
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 2
    with pytest.raises(ValueError, match="time_limit_s"):
        tiny_recipe(time_limit_s=0)
