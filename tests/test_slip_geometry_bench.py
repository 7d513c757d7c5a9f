"""bench/slip_geometry.py: statistics on hand-made inputs, measurement on a generated case with
known slip, and a few real yolospine-dev images."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_bench
from scipy.stats import mannwhitneyu

from lumbardx.data.dataset import LumbarDataset
from lumbardx.synth.anatomy import SynthConfig
from lumbardx.synth.case import generate_case

sg = load_bench("slip_geometry")


def _row(patient: str, seq: str, disc: int, slip: bool, pct: float | None) -> sg.DiscMeasure:
    return sg.DiscMeasure(image_id=f"{patient}_{seq}.png", patient=patient, sequence=seq,
                          disc=disc, n_discs=3, level="L4-L5", slip=slip, herniation=False,
                          slip_box_alone=False, spacing_px=40.0, percent=pct,
                          grade=None, translation_px=None, width_px=None, corners=None)


def test_auc_matches_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    pos = rng.random(60) < 0.3
    u = mannwhitneyu(scores[pos], scores[~pos]).statistic
    assert sg.auc(scores, pos) == pytest.approx(u / (pos.sum() * (~pos).sum()))
    assert sg.auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert sg.auc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert np.isnan(sg.auc([1.0, 2.0], [True, True]))


def test_weighted_auc_equals_auc_of_replicated_items() -> None:
    rng = np.random.default_rng(2)
    scores, pos = rng.normal(size=30), rng.random(30) < 0.4
    w = rng.integers(0, 4, size=30)
    rep = np.repeat(np.arange(30), w)
    got = sg.weighted_auc(scores, pos, np.stack([w, np.ones(30)]))
    assert got[0] == pytest.approx(sg.auc(scores[rep], pos[rep]))
    assert got[1] == pytest.approx(sg.auc(scores, pos))


def test_clustered_auc_interval_and_counts() -> None:
    rng = np.random.default_rng(3)
    pos = rng.random(200) < 0.2
    scores = rng.normal(size=200) + 1.5 * pos
    patients = [f"p{i // 2}" for i in range(200)]
    out = sg.clustered_auc(scores, pos, patients, n_boot=300, seed=0)
    assert out["n_pos"] == int(pos.sum()) and out["n_neg"] == int((~pos).sum())
    assert 0.75 < out["auc"] < 0.95
    assert out["ci_low"] < out["auc"] < out["ci_high"]
    assert out == sg.clustered_auc(scores, pos, patients, n_boot=300, seed=0)


def test_cutoff_performance_counts_refusals_as_negative() -> None:
    pct = [None, 5.0, 12.0, -20.0, 30.0, 2.0]
    pos = [True, True, False, True, False, False]
    out = sg.cutoff_performance(pct, pos, 10.0)
    assert (out["sensitivity"]["k"], out["sensitivity"]["n"]) == (1, 3)  # only -20 %
    assert (out["specificity"]["k"], out["specificity"]["n"]) == (1, 3)  # only 2 %
    assert (out["sensitivity_estimated"]["k"], out["sensitivity_estimated"]["n"]) == (1, 2)
    assert out["sensitivity"]["ci_low"] < 1 / 3 < out["sensitivity"]["ci_high"]


def test_sequence_agreement_pairs_t1_t2_discs() -> None:
    rows = [_row("a", "T1", 0, False, 4.0), _row("a", "T2", 0, False, 6.0),
            _row("a", "T1", 1, True, 30.0), _row("a", "T2", 1, True, 12.0),
            _row("b", "T1", 0, False, None), _row("b", "T2", 0, False, 3.0),
            _row("c", "T2", 0, False, 3.0)]  # no T1 partner
    out = sg.sequence_agreement(rows)
    assert out["disc_pairs"] == 3 and out["both_estimated"] == 2
    assert out["abs_diff_median"] == pytest.approx(10.0)
    assert out["same_side_of_cut"]["10"] == 1.0 and out["same_side_of_cut"]["15"] == 0.5


def test_measure_image_on_generated_slip() -> None:
    case = generate_case(np.random.default_rng(100_000), SynthConfig(p_listhesis=1.0), "s0")
    truth = case.truth["listheses"][0]
    spine, rows, ests = sg.measure_image(case.image, case.annotation.boxes, "s0.png", "p0", "T2")
    assert len(rows) == len(spine.discs) == len(ests)
    slipped = [r for r in rows if r.slip]
    assert len(slipped) == 1 and slipped[0].level == truth["level"]
    r = slipped[0]
    assert r.percent is not None and abs(r.percent - truth["slip_percent"]) < 8.0
    assert r.passes_gate() and r.corners is not None and len(r.corners) == 3
    assert all(x.patient == "p0" and not x.slip for x in rows if x is not r)
    summary = sg.disc_summary(rows, n_boot=50)
    assert summary["groups"]["slip"]["discs"] == 1
    json.dumps([asdict(x) for x in rows], allow_nan=False)


def test_real_images_and_script(yolospine_dev: Path, tmp_path: Path) -> None:
    ds = LumbarDataset(yolospine_dev, classes="study")
    slip_idx = ds.class_names.index("spondylolisthesis")
    picked = [i for i, rec in enumerate(ds.records) if (rec.labels == slip_idx).any()][:2]
    assert len(picked) == 2
    for i in picked:
        s = ds[i]
        boxes = sg.sample_boxes(s, ds.class_names)
        spine, rows, ests = sg.measure_image(s.image, boxes, s.image_id, s.patient)
        assert any(r.slip for r in rows)
        assert all(r.patient == s.patient and r.image_id == s.image_id for r in rows)
        for r, e in zip(rows, ests):
            assert (r.percent is None) == (e is None)
            if e is not None:
                assert r.width_px is not None and r.width_px > 0
                assert r.percent == pytest.approx(100 * e.translation_px / e.width_px, abs=0.01)
        png = sg.render_case(s.image, spine, ests, tmp_path / f"case{i}.png")
        assert png.stat().st_size > 1000
    out, rows_file = tmp_path / "slip.json", tmp_path / "rows.json"
    result = sg.main([str(yolospine_dev), "--out", str(out), "--limit", "4", "--boot", "50",
                      "--rows", str(rows_file)])
    assert "rows" not in json.loads(out.read_text())  # per-disc rows restate the labels
    saved = json.loads(rows_file.read_text())
    assert saved["discs"]["groups"]["non_slip"]["discs"] == result["discs"]["groups"][
        "non_slip"]["discs"] > 0
    col = saved["rows"]["columns"].index("image_id")
    assert {v[col] for v in saved["rows"]["values"]} == {ds.records[i].image_id for i in range(4)}
    assert len(saved["rows"]["values"]) == sum(g["discs"] for g in saved["discs"]["groups"].values())
