"""T1/T2 pairs as two-channel samples: partners, the dataset view, augmentation in step,
model input, evaluation and a training run (``recipe.sequence_pairs``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from pair_factory import pair_dataset
from torch import nn

from lumbardx.data.boxes import Sample
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.data.pairs import SequencePairs, sequence_partners
from lumbardx.engine import crossval as cv
from lumbardx.engine.evaluate import evaluate
from lumbardx.engine.loader import collate, to_model_input
from lumbardx.engine.model_input import three_channels
from lumbardx.engine.pipeline import TrainTransform
from lumbardx.engine.recipes import AugmentConfig, Recipe

NAMES = ["normal", "herniation", "spondylolisthesis"]


@dataclass
class Rec:
    patient: str
    sequence: str | None
    boxes: np.ndarray
    labels: np.ndarray
    width: int = 64
    height: int = 64


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


def test_partners_need_the_other_sequence_and_the_same_boxes() -> None:
    a, b = _boxes((10, 10, 20, 20), (30, 30, 40, 44)), np.array([0, 1])
    recs = [
        Rec("p1", "T1", a, b), Rec("p1", "T2", a[::-1] + 0.5, b[::-1]),  # order, 0.5 px
        Rec("p2", "T1", a, b), Rec("p2", "T2", a + 3, b),  # boxes 3 px apart
        Rec("p3", "T1", a, b), Rec("p3", "T2", a, np.array([0, 2])),  # another class
        Rec("p4", "T1", a, b), Rec("p4", "T2", a, b, width=128),  # another size
        Rec("p5", "T1", a, b), Rec("p5", "T2", a, b), Rec("p5", "T2", a, b),  # ambiguous
        Rec("p6", "X1", a, b), Rec("p6", "T2", a, b),  # X1 is not paired
        Rec("", "T1", a, b), Rec("", "T2", a, b),  # no patient
        Rec("p7", "T1", _boxes(), np.zeros(0, np.int64)),
        Rec("p7", "T2", _boxes(), np.zeros(0, np.int64)),  # no boxes: the same
    ]
    got = sequence_partners(recs)
    assert got[:2] == [1, 0]
    assert got[2:15] == [None] * 13
    assert got[15:] == [16, 15]


class PairSource(list):
    """Samples with records: T1 images are bright squares at the boxes, each T2 the same at
    half the brightness; with ``lone``, a last image without a partner."""

    class_names = NAMES

    def __init__(self, n_pairs: int, size: int = 96, seed: int = 0, lone: bool = True) -> None:
        super().__init__()
        self.records: list[Rec] = []
        rng = np.random.default_rng(seed)
        for p in range(n_pairs + int(lone)):
            x1, y1 = (int(v) for v in rng.integers(8, size - 40, 2))
            box = _boxes((x1, y1, x1 + 30, y1 + 20))
            t1 = np.zeros((size, size), np.uint8)
            t1[y1:y1 + 20, x1:x1 + 30] = 200
            t1[y1 + 5:y1 + 10, x1 + 5:x1 + 12] = 120  # some structure inside
            for seq, img in (("T2", t1 // 2), ("T1", t1))[: 2 if p < n_pairs else 1]:
                lab = np.array([p % 3])
                self.append(Sample(img, box.copy(), lab, f"{seq}_{p}.png", f"p{p}"))
                self.records.append(Rec(f"p{p}", seq, box, lab, size, size))


def test_pair_view_orders_t1_first() -> None:
    src = PairSource(2)
    pairs = SequencePairs(src)
    assert pairs.partners == [1, 0, 3, 2, None] and pairs.paired == 4 and len(pairs) == 5
    for i in range(4):  # the T2 record (even) and the T1 record (odd) give the same pair
        s = pairs[i]
        assert s.image.shape == (2, 96, 96) and s.image_id == src[i].image_id
        np.testing.assert_array_equal(s.image[0] // 2, s.image[1])
    lone = pairs[4]
    np.testing.assert_array_equal(lone.image[0], lone.image[1])


@dataclass
class AugCase:
    aug: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        mosaic=0.6, mixup=0.3, affine=1.0, degrees=5, translate=0.1, scale=0.3,
        brightness=0.0, contrast=0.0, gamma=0.0, single_sequence=0.0))


def test_both_channels_get_the_same_augmentation() -> None:
    pairs = SequencePairs(PairSource(4, lone=False))
    tf = TrainTransform(pairs, 64, AugCase().aug)
    for seed in range(12):
        img, boxes, labels = tf(seed % 8, np.random.default_rng(seed))
        assert img.shape == (2, 64, 64) and img.dtype == np.uint8
        assert boxes.shape == (len(labels), 4)
        # T2 is half of T1 before augmentation; the same mosaic, warp (linear interpolation)
        # and mixup keep it so, up to rounding
        assert np.abs(img[1].astype(int) - img[0].astype(int) / 2).max() <= 2
        assert img[0].max() > 100
    again = tf(3, np.random.default_rng(5))
    np.testing.assert_array_equal(tf(3, np.random.default_rng(5))[0], again[0])


def test_channel_zero_is_the_gray_pipeline_on_t1() -> None:
    """A pair's T1 channel is exactly what the gray pipeline makes of the T1 images with the
    same generator: pairs change what is read, not how it is augmented."""
    src = PairSource(3)
    pairs = SequencePairs(src)
    t1_only = PairSource(3)
    for i in range(len(t1_only)):
        t1_only[i] = Sample(pairs[i].image[0], src[i].boxes, src[i].labels, src[i].image_id)
    aug = AugmentConfig(mosaic=0.5, mixup=0.2, degrees=3, scale=0.3, brightness=0.3,
                        contrast=0.2, gamma=0.2, single_sequence=0.0)
    for seed in range(6):
        img, boxes, _ = TrainTransform(pairs, 64, aug)(seed % 7, np.random.default_rng(seed))
        gray, gboxes, _ = TrainTransform(t1_only, 64, aug)(seed % 7, np.random.default_rng(seed))
        np.testing.assert_array_equal(img[0], gray)
        np.testing.assert_array_equal(boxes, gboxes)


def test_single_sequence_fills_both_channels() -> None:
    pairs = SequencePairs(PairSource(2))
    tf = TrainTransform(pairs, 64, AugmentConfig(single_sequence=1.0))
    for seed in range(4):
        img, _, _ = tf(seed % 4, np.random.default_rng(seed))
        np.testing.assert_array_equal(img[0], img[1])


def test_three_channels_and_batches_of_pairs() -> None:
    g = torch.rand(2, 1, 8, 8)
    assert torch.equal(three_channels(g), g.expand(-1, 3, -1, -1))
    p = torch.rand(2, 2, 8, 8)
    x = three_channels(p)
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[:, :2], p)
    torch.testing.assert_close(x[:, 2], (p[:, 0] + p[:, 1]) / 2)
    # a single slice read as a pair of itself is the gray input
    assert torch.equal(three_channels(torch.cat([g, g], 1)), three_channels(g))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        three_channels(torch.rand(1, 3, 8, 8))
    batch = [(np.full((2, 16, 16), 90, np.uint8), _boxes((1, 1, 5, 5)), np.array([1]))] * 2
    images, targets = collate(batch)
    assert images.shape == (2, 2, 16, 16) and len(targets) == 2
    x, _ = to_model_input(images, targets, torch.device("cpu"), 32)
    assert x.shape == (2, 3, 32, 32)


class Recorder(nn.Module):
    """Remembers its inputs; finds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.seen.append(x.clone())
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "labels": torch.zeros(0, dtype=torch.long)} for _ in range(len(x))]


def test_evaluation_reads_pairs_as_three_channels() -> None:
    pairs = SequencePairs(PairSource(2, size=80))
    model = Recorder()
    res = evaluate(model, pairs, "cpu", 64, batch_size=5, class_names=NAMES)
    assert res.num_images == 5
    assert [(g.width, g.height) for g in res.ground_truth] == [(80, 80)] * 5
    x = torch.cat(model.seen)  # [5, 3, 64, 64]; the warm-up call sees the first batch again
    x = x[-5:]
    assert x.shape == (5, 3, 64, 64)
    torch.testing.assert_close(x[0, 1], torch.floor(x[0, 0] * 255 / 2) / 255, atol=2 / 255,
                               rtol=0)
    torch.testing.assert_close(x[:, 2], x[:, :2].mean(1))
    assert torch.equal(x[4, 0], x[4, 1])  # the lone image


def test_input_view_needs_partners(tmp_path: Path) -> None:
    root = pair_dataset(tmp_path / "pairs", 2)
    ds = LumbarDataset(root, classes="study")
    view = cv.input_view(ds, True)
    assert isinstance(view, SequencePairs) and view.paired == 4
    assert cv.input_view(ds, False) is ds and cv.input_view(view, True) is view
    assert cv.input_view(None, True) is None
    alone = tmp_path / "alone"
    shutil.copytree(root, alone)
    (alone / "patients.csv").write_text(  # sequences unknown
        "image,patient\n" + "".join(f"{r.image_path.name},{r.patient}\n" for r in ds.records))
    with pytest.raises(InputError, match="no image has a T1/T2 partner"):
        cv.input_view(LumbarDataset(alone, classes="study"), True)


def test_training_on_pairs_end_to_end(tmp_path: Path) -> None:
    root = pair_dataset(tmp_path / "pairs", 4)
    ds = LumbarDataset(root, classes="study")
    recipe = cv.make_recipe("yolov5n", {"image_size": 64, "epochs": 1, "batch_size": 4,
                                        "sequence_pairs": True, "num_workers": 0})
    assert recipe.sequence_pairs and recipe.augment.single_sequence == 0.25
    val_idx = [i for i, r in enumerate(ds.records) if r.patient in ("p2", "p3")]
    train_idx = [i for i in range(len(ds)) if i not in val_idx]
    res, ev = cv.train_and_evaluate("yolov5n", ds.subset(train_idx), ds.subset(val_idx), recipe,
                                    tmp_path / "run", "cpu", progress=False, select="last")
    assert ev is not None and ev.num_images == len(val_idx) == 4
    det = cv.load_detector(res.last, "cpu")
    assert det.recipe["sequence_pairs"] is True


def test_recipe_checks_single_sequence() -> None:
    with pytest.raises(ValueError, match="single_sequence"):
        Recipe(augment=AugmentConfig(single_sequence=1.5))
    assert Recipe.from_dict(Recipe().to_dict()).sequence_pairs is False


def test_letterbox_planes_treats_both_planes_alike() -> None:
    from lumbardx.engine.letterbox import letterbox, letterbox_planes

    gray = np.arange(60 * 80, dtype=np.uint32).reshape(60, 80).astype(np.uint8)
    one, geo = letterbox_planes(gray, 64)
    ref, ref_geo = letterbox(gray, 64)
    assert one.shape == (1, 64, 64) and np.array_equal(one[0], ref) and geo == ref_geo
    two, geo2 = letterbox_planes(np.stack([gray, 255 - gray]), 64)
    assert two.shape == (2, 64, 64) and geo2 == ref_geo
    assert np.array_equal(two[0], ref)
    with pytest.raises(ValueError, match=r"\[2, H, W\]"):
        letterbox_planes(np.zeros((3, 8, 8), np.uint8), 32)
