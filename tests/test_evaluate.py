"""COCO 101-point AP on hand-made predictions, confusion matrix, evaluate() end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage
from torch import nn

from lumbardx.data.boxes import Sample
from lumbardx.engine.evaluate import evaluate, predict
from lumbardx.engine.metrics import (
    GroundTruth,
    Prediction,
    coco_evaluate,
    confusion_matrix,
    ground_truth_to_coco_json,
    predictions_to_coco_json,
)

NAMES = ["normal", "herniation", "spondylolisthesis"]


def gt(boxes: list[list[float]], labels: list[int], image_id: str = "a.png") -> GroundTruth:
    return GroundTruth(image_id, 200, 100, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(labels, np.int64))


def pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Prediction:
    return Prediction(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def pycocotools_direct(gts: list[GroundTruth], preds: list[Prediction]) -> COCOeval:
    """Reference: the pycocotools loadRes path on a results list."""
    coco = COCO()
    coco.dataset = ground_truth_to_coco_json(gts, NAMES)
    coco.createIndex()
    res = []
    for i, p in enumerate(preds):
        for b, s, l in zip(p.boxes, p.scores, p.labels):
            res.append({"image_id": i + 1, "category_id": int(l) + 1, "score": float(s),
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    ev = COCOeval(coco, coco.loadRes(res), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def test_perfect_predictions_give_ap_one() -> None:
    gts = [gt([[10, 10, 50, 40], [60, 10, 90, 30]], [0, 1]), gt([[5, 5, 30, 60]], [2], "b.png")]
    preds = [pred([[10, 10, 50, 40], [60, 10, 90, 30]], [0.9, 0.8], [0, 1]),
             pred([[5, 5, 30, 60]], [0.7], [2])]
    m = coco_evaluate(gts, preds, NAMES)
    np.testing.assert_allclose(m.ap50, 1.0)
    np.testing.assert_allclose(m.ap50_95, 1.0)
    assert m.map50 == pytest.approx(1.0) and m.map50_95 == pytest.approx(1.0)


def test_false_positive_ranked_above_true_positive_101_point() -> None:
    # two normal discs; detections by score: TP (0.9), FP (0.8), TP (0.7)
    gts = [gt([[10, 10, 50, 40], [100, 10, 140, 40]], [0, 0])]
    preds = [pred([[10, 10, 50, 40], [150, 60, 190, 90], [100, 10, 140, 40]],
                  [0.9, 0.8, 0.7], [0, 0, 0])]
    m = coco_evaluate(gts, preds, NAMES)
    # points (recall, precision): (0.5, 1), (0.5, 0.5), (1, 2/3); monotone envelope is 1 for
    # recall <= 0.5 (51 of the 101 grid points) and 2/3 above (50 points)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert m.ap50[0] == pytest.approx(expected, abs=1e-9)
    assert math.isnan(m.ap50[1]) and math.isnan(m.ap50[2])  # no ground truth
    assert m.map50 == pytest.approx(expected, abs=1e-9)  # mean over classes with ground truth
    ref = pycocotools_direct(gts, preds)
    assert m.map50 == pytest.approx(ref.stats[1], abs=1e-12)
    assert m.map50_95 == pytest.approx(ref.stats[0], abs=1e-12)
    assert m.precision.shape == (101, 3)


def test_random_predictions_match_pycocotools_directly() -> None:
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for i in range(6):
        xy = rng.uniform(0, 120, (4, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(15, 60, (4, 2))], 1)
        labels = rng.integers(0, 3, 4)
        gts.append(GroundTruth(f"{i}.png", 200, 200, boxes.astype(np.float32), labels))
        jitter = boxes + rng.normal(0, 6, boxes.shape)
        extra = np.concatenate([xy[:2] + 50, xy[:2] + 80], 1)
        pl = np.concatenate([np.where(rng.random(4) < 0.8, labels, (labels + 1) % 3),
                             rng.integers(0, 3, 2)])
        preds.append(Prediction(np.concatenate([jitter, extra]).astype(np.float32),
                                rng.random(6).astype(np.float32), pl.astype(np.int64)))
    m = coco_evaluate(gts, preds, NAMES)
    ref = pycocotools_direct(gts, preds)
    assert 0.0 < m.map50 < 1.0
    assert m.map50 == pytest.approx(ref.stats[1], abs=1e-12)
    assert m.map50_95 == pytest.approx(ref.stats[0], abs=1e-12)
    for k in range(3):
        p = ref.eval["precision"][0, :, k, 0, 2]
        assert m.ap50[k] == pytest.approx(p[p > -1].mean(), abs=1e-12)


def test_wrong_class_and_no_predictions_give_zero() -> None:
    gts = [gt([[10, 10, 50, 40]], [0]), gt([[10, 10, 50, 40]], [1], "b.png")]
    preds = [pred([[10, 10, 50, 40]], [0.9], [2]), pred([], [], [])]
    m = coco_evaluate(gts, preds, NAMES)
    assert m.ap50[0] == 0.0 and m.ap50[1] == 0.0 and m.map50 == 0.0


def test_confusion_matrix_hand_made() -> None:
    gts = [gt([[10, 10, 50, 40], [100, 10, 140, 40], [10, 60, 50, 90]], [0, 1, 2])]
    preds = [pred([[11, 10, 50, 41], [100, 10, 140, 40], [150, 50, 190, 90], [12, 62, 50, 90]],
                  [0.9, 0.8, 0.7, 0.1], [0, 2, 1, 2])]
    cm = confusion_matrix(gts, preds, 3, iou_threshold=0.5, score_threshold=0.25)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1  # correct
    expected[1, 2] = 1  # herniation called spondylolisthesis
    expected[3, 1] = 1  # false positive herniation
    expected[2, 3] = 1  # missed (its detection is under the score threshold)
    np.testing.assert_array_equal(cm, expected)


def test_predictions_to_coco_json_fields() -> None:
    gts = [gt([[10, 10, 50, 40]], [0])]
    obj = predictions_to_coco_json(gts, [pred([[10, 20, 50, 40]], [0.5], [1])], NAMES)
    assert obj["images"] == [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}]
    assert [c["name"] for c in obj["categories"]] == NAMES
    ann = obj["annotations"][0]
    assert ann["image_id"] == 1 and ann["category_id"] == 2 and ann["score"] == 0.5
    assert ann["bbox"] == [10.0, 20.0, 40.0, 20.0]
    json.dumps(obj)


class BlobDetector(nn.Module):
    """Finds bright blobs (> 0.25) by connected components; class from mean gray level
    (gray 100 -> 0, 170 -> 1, 240 -> 2). Boxes in input pixels, like a Detector."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in images[:, 0].numpy():
            lab, n = ndimage.label(img > 0.25)
            boxes, scores, labels = [], [], []
            for k, sl in enumerate(ndimage.find_objects(lab)):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                mean = float(img[sl][lab[sl] == k + 1].mean()) * 255
                labels.append(int(np.argmin([abs(mean - g) for g in (100, 170, 240)])))
                scores.append(0.9)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores), "labels": torch.tensor(labels)})
        return out


class Blobs(list):
    class_names = NAMES


def blob_dataset() -> Blobs:
    ds = Blobs()
    rng = np.random.default_rng(1)
    for i in range(5):
        h, w = (100, 180) if i % 2 else (170, 110)  # non-square: letterbox padding both ways
        img = np.zeros((h, w), np.uint8)
        boxes, labels = [], []
        for k in range(3):
            bw, bh = 24, 16
            x1 = int(rng.integers(4, w - bw - 4))
            y1 = 8 + k * ((h - 30) // 3)
            img[y1 : y1 + bh, x1 : x1 + bw] = (100, 170, 240)[k]
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(k)
        ds.append(Sample(img, np.array(boxes, np.float32), np.array(labels), f"case{i}.png"))
    return ds


def test_evaluate_maps_boxes_back_to_original_pixels(tmp_path) -> None:
    ds = blob_dataset()
    res = evaluate(BlobDetector(), ds, "cpu", image_size=128, batch_size=2, out_dir=tmp_path)
    assert res.map50 == pytest.approx(1.0)
    assert res.map50_95 > 0.7  # boxes come back within about a pixel
    for g, p in zip(res.ground_truth, res.predictions):
        assert len(p.boxes) == len(g.boxes)
        err = np.abs(np.sort(p.boxes, 0) - np.sort(g.boxes, 0)).max()
        assert err < 2.5
    assert np.trace(res.confusion) == 15 and res.confusion.sum() == 15
    assert res.ms_per_image > 0 and res.num_images == 5
    assert res.num_gt == {n: 5 for n in NAMES}
    d = res.to_dict()
    json.dumps(d)
    assert d["interpolation"] == "COCO 101-point"
    for name in ("pr_curves.png", "pr_normal.png", "confusion_matrix.png",
                 "confusion_matrix.npy", "predictions.json", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0
    np.testing.assert_array_equal(np.load(tmp_path / "confusion_matrix.npy"), res.confusion)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert len(saved["annotations"]) == 15 and saved["images"][1]["width"] == 180


def test_evaluate_skips_bad_sample_and_predict_accepts_rgb() -> None:
    ds = blob_dataset()
    ds.append(Sample(np.zeros((10, 10, 2), np.uint8), np.zeros((0, 4), np.float32),
                     np.zeros(0, np.int64), "broken.png"))
    res = evaluate(BlobDetector(), ds, "cpu", image_size=128)
    assert res.num_images == 5 and "broken.png" in res.skipped
    rgb = np.repeat(ds[0].image[..., None], 3, axis=2)
    out = predict(BlobDetector(), [rgb], image_size=128)
    assert len(out) == 1 and len(out[0].boxes) == 3
    assert np.abs(np.sort(out[0].boxes, 0) - np.sort(ds[0].boxes, 0)).max() < 2.5
