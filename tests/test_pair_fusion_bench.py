"""bench/pair_fusion.py: T1/T2 partner fusion of held-out predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_bench

from lumbardx.data.dataset import LumbarDataset
from lumbardx.engine.metrics import Prediction

pf = load_bench("pair_fusion")


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Prediction:
    return Prediction(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def test_mean_and_max_fusion_hand_worked() -> None:
    own = _pred([[10, 10, 50, 30], [10, 60, 50, 80]], [0.8, 0.5], [0, 1])
    partner = _pred([[12, 10, 50, 31], [10, 60, 50, 80], [10, 100, 50, 120]],
                    [0.6, 0.9, 0.4], [0, 0, 2])  # same box, other class, a box only here
    mean = pf.fuse(own, partner, "mean")
    np.testing.assert_allclose(mean.scores, [0.7, 0.25, 0.45, 0.2], rtol=1e-6)
    assert mean.labels.tolist() == [0, 1, 0, 2] and mean.boxes.shape == (4, 4)
    np.testing.assert_array_equal(mean.boxes[:2], own.boxes)  # own boxes are kept
    mx = pf.fuse(own, partner, "max")
    np.testing.assert_allclose(mx.scores, [0.8, 0.5, 0.9, 0.4], rtol=1e-6)
    empty = _pred([], [], [])
    np.testing.assert_allclose(pf.fuse(own, empty, "mean").scores, [0.4, 0.25])
    np.testing.assert_allclose(pf.fuse(empty, partner, "mean").scores, [0.3, 0.45, 0.2])
    with pytest.raises(ValueError, match="rule"):
        pf.fuse(own, partner, "median")


def test_partners_and_script_on_real_data(yolospine_dev: Path, tmp_path: Path) -> None:
    ds = LumbarDataset(yolospine_dev, classes="study")
    recs = {r.image_id: r for r in ds.records}
    by_patient: dict[str, list[str]] = {}
    for r in ds.records:
        by_patient.setdefault(r.patient, []).append(r.image_id)
    ids = [i for group in list(by_patient.values())[:30] for i in group]
    pair = pf.partners(ds, set(ids))
    assert len(pair) >= 10, "these patients include T1/T2 pairs"
    for a, b in pair.items():
        assert pair[b] == a and recs[a].patient == recs[b].patient
        assert {recs[a].sequence, recs[b].sequence} == {"T1", "T2"}
    # a prediction file holding the ground truth as detections: fusion keeps AP at 1
    images = [{"id": k + 1, "file_name": i, "width": recs[i].width, "height": recs[i].height}
              for k, i in enumerate(ids)]
    anns = [{"image_id": k + 1, "category_id": int(c) + 1, "score": 0.9,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for k, i in enumerate(ids) for b, c in zip(recs[i].boxes, recs[i].labels)]
    cats = [{"id": n + 1, "name": name} for n, name in enumerate(ds.class_names)]
    f = tmp_path / "preds.json"
    f.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    out = tmp_path / "fusion.json"
    res = pf.main([str(yolospine_dev), str(f), "--out", str(out)])
    assert json.loads(out.read_text())["paired_images"] == len(pair)
    for rule in ("none", "mean", "max"):
        assert res["all"][rule]["map50"] == pytest.approx(1.0)
