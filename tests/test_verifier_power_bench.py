"""bench/verifier_power.py: rescoring powers and their leave-one-fold-out selection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_bench

from lumbardx.data.dataset import LumbarDataset
from lumbardx.engine.metrics import Prediction

vp = load_bench("verifier_power")

SLIP = 2


def test_probability_is_the_score_ratio() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    base = Prediction(boxes, np.array([0.8, 0.5, 0.4], np.float32), np.array([SLIP, 1, SLIP]))
    rescored = Prediction(boxes[[2, 1, 0]], np.array([0.2, 0.5, 0.6 ** 0.5 * 0.8 ** 0.5], np.float32),
                          np.array([SLIP, 1, SLIP]))
    np.testing.assert_allclose(vp.verifier_probability(base, rescored, SLIP, "x"),
                               [0.6, 1.0, 0.1], rtol=1e-5)
    with pytest.raises(SystemExit, match="missing"):
        vp.verifier_probability(base, Prediction(boxes[:1], np.array([0.1], np.float32),
                                                 np.array([SLIP])), SLIP, "x")


def _write(path: Path, ds: LumbarDataset, ids: list[str], score: Callable[[int, bool], float]
           ) -> None:
    recs = {r.image_id: r for r in ds.records}
    images = [{"id": k + 1, "file_name": i, "width": recs[i].width, "height": recs[i].height}
              for k, i in enumerate(ids)]
    anns = []
    for k, i in enumerate(ids):
        r = recs[i]
        boxes = [*r.boxes.tolist(), [1.0, 1.0, 21.0, 21.0]]  # + a false slip in the corner
        labels = [*r.labels.tolist(), SLIP]
        for n, (b, c) in enumerate(zip(boxes, labels)):
            anns.append({"image_id": k + 1, "category_id": int(c) + 1,
                         "score": score(c, n == len(boxes) - 1),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    cats = [{"id": n + 1, "name": name} for n, name in enumerate(ds.class_names)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))


def test_selection_on_other_folds(tmp_path: Path) -> None:
    from lumbardx.synth import SynthConfig, generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, 6, seed=5, config=SynthConfig(image_sizes=(128,), p_listhesis=1.0))
    ds = LumbarDataset(data, classes="study")
    ids = [r.image_id for r in ds.records]
    det, ver = tmp_path / "cv" / "yolov5n", tmp_path / "cv-verifier" / "yolov5n"
    (ver.parent / "crossval.json").parent.mkdir(parents=True)
    (ver.parent / "crossval.json").write_text(json.dumps(
        {"second_stage": {"verifier": {"power": 1.0}}}))
    for k, part in enumerate((ids[:3], ids[3:])):
        # the detector scores the corner box above the true slips; the verifier doubts it
        _write(det / f"fold{k}" / "eval" / "predictions.json", ds, part,
               lambda c, fake: 0.95 if fake else 0.9)
        _write(ver / f"fold{k}" / "eval" / "predictions.json", ds, part,
               lambda c, fake: (0.95 * 0.1) ** 0.5 if fake else (0.9 * 0.9) ** 0.5 if c == SLIP
               else 0.9)
    out = tmp_path / "power.json"
    assert vp.main([str(data), str(det), str(ver), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    base = res["rules"]["cv-verifier power 0"]
    for fold in ("fold0", "fold1"):
        assert base[fold]["ap50"]["spondylolisthesis"] < 0.9  # the false slip ranks first
        assert res["nested"][fold]["ap50"]["spondylolisthesis"] == pytest.approx(1.0)
        assert res["nested"][fold]["rule"] == "cv-verifier power 0.5"  # first of the best
    assert res["nested_mean_map50"] == pytest.approx(1.0)
    assert res["chosen_on_all_folds"] == "cv-verifier power 0.5"
