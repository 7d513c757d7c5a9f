"""bench/extra_findings.py: stenosis and degeneration truth per ground-truth disc, the found
discs' calibrated probabilities, extra discs, and the disc-level average precision."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench_scripts import load_bench
from lumbardx.data.boxes import Box
from lumbardx.models.segment_reader import LABELS, SegmentReader, SegmentReaderConfig

NAMES = ["normal", "herniation", "spondylolisthesis"]


def test_average_precision_counts_positives_never_scored() -> None:
    bench = load_bench("extra_findings")
    s = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([True, False, True, False])
    assert bench.average_precision(s, y, 2) == pytest.approx((1 + 2 / 3) / 2)
    assert bench.average_precision(s, y, 4) == pytest.approx((1 + 2 / 3) / 4)  # 2 missed
    assert bench.average_precision(np.array([0.5, 0.5]), np.array([True, False]), 1) == 0.5
    assert np.isnan(bench.average_precision(s, np.zeros(4, bool), 0))


def test_read_image_truth_matching_and_extra_discs(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench("extra_findings")
    discs = [Box("Normal IVD", 150, y, 210, y + 14) for y in range(60, 300, 40)]  # 6 discs
    discs[1] = Box("Degenerative Disc Disease (DDD)", 150, 100, 210, 114)
    canal = Box("Spinal Stenosis (SS)", 214, 178, 236, 196)  # behind the 4th disc
    found = [Box("normal", b.x1 + 1, b.y1, b.x2 + 1, b.y2, score=0.9) for b in discs[:5]]
    found.append(Box("normal", 152, 340, 212, 354, score=0.8))  # a disc the truth does not have
    calls = []

    def fake_detect(m, x, geo):  # noqa: ANN001, ANN202 - the detector's boxes
        calls.append(geo)
        return found

    def fake_predict(reader, items):  # noqa: ANN001, ANN202 - the reader's logits per disc
        n = items[0].frames.shape[0]
        logits = torch.full((n, len(LABELS)), -3.0)
        logits[3, LABELS.index("stenosis")] = 3.0
        logits[1, LABELS.index("degeneration")] = 2.0
        return [(logits, None)]

    monkeypatch.setattr(bench.detect_stage, "preprocess", lambda m, own, planes: (None, "geo"))
    monkeypatch.setattr(bench.detect_stage, "detect", fake_detect)
    monkeypatch.setattr(sys.modules["segment_combined"], "predict_items", fake_predict)
    m = SimpleNamespace(thresholds={n: 0.25 for n in NAMES}, class_names=NAMES, chosen=NAMES)
    own = np.zeros((384, 384), np.uint8)
    release = SegmentReader(SegmentReaderConfig(width=4, embed=8, size=(16, 16),
                                                calibration={"stenosis": (1.0, -1.0)}))
    r = bench.read_image(m, None, release, np.stack([own, own]), own, [*discs, canal],
                         "x.png", "p0")
    assert calls == ["geo"]
    assert r.truth.tolist() == [[False, False], [False, True], [False, False], [True, False],
                                [False, False], [False, False]]
    assert r.found.tolist() == [True] * 5 + [False]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(r.prob[:, 0], [sig(-4.0)] * 3 + [sig(2.0), sig(-4.0), 0.0],
                               rtol=1e-5)  # stenosis calibrated: a * logit + b
    np.testing.assert_allclose(r.prob[:, 1], [sig(-3.0), sig(2.0)] + [sig(-3.0)] * 3 + [0.0],
                               rtol=1e-5)
    np.testing.assert_allclose(r.extra, [[sig(-4.0), sig(-3.0)]], rtol=1e-5)
    assert r.ddd_truth.tolist() == [[150, 100, 210, 114]]
    assert len(r.disc_boxes) == len(r.disc_ddd) == 6

    row = bench.fold_metrics([r], {"stenosis": 0.5, "degeneration": 0.5})
    assert row["sens_stenosis"] == 1.0 and row["spec_stenosis"] == 1.0
    assert row["ap_stenosis"] == 1.0 and row["extra_called_stenosis"] == 0
    assert row["box_ap50_degeneration"] == pytest.approx(1.0)
    low = bench.fold_metrics([r], {"stenosis": 0.01, "degeneration": 0.5})
    assert low["spec_stenosis"] == pytest.approx(1 / 5)  # the missed 6th disc is never called
    assert low["extra_called_stenosis"] == 1
    recs = bench.records([r])
    assert len(recs) == 7 and recs[-1].truth == frozenset()


def test_f1_counts_extra_discs_and_compares_thresholds_by_fold() -> None:
    bench = load_bench("extra_findings")
    assert bench.f1_of(np.array([6, 10, 80, 90, 2])) == pytest.approx(12 / (12 + 4 + 12))
    assert bench.f1_of(np.array([0, 10, 90, 90, 0])) == 0.0

    def read(truth: list[list[bool]], prob: list[list[float]], extra: list[list[float]]):
        n = len(truth)
        return bench.ImageRead(np.array(truth, bool).reshape(n, 2), np.ones(n, bool),
                               np.array(prob, np.float32).reshape(n, 2),
                               np.array(extra, np.float32).reshape(-1, 2),
                               np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32),
                               np.zeros(0, np.float32), (384, 384))

    # degeneration positives score 0.3-0.4: a cut at 0.5 misses them, 0.25 finds them
    reads = {k: [read([[False, True], [False, True], [False, False], [True, False]],
                      [[0.1, 0.35], [0.1, 0.3], [0.1, 0.1], [0.9, 0.2]], [[0.1, 0.05]])]
             for k in range(3)}
    cuts = {k: {"stenosis": 0.5, "degeneration": 0.25} for k in range(3)}
    out = bench.threshold_comparison(reads, cuts, {"stenosis": 0.5, "degeneration": 0.5})
    deg = out["degeneration"]
    assert deg["f1_shipped"] == [0.0] * 3 and deg["f1_nested"] == [1.0] * 3
    assert (deg["paired"]["wins"], deg["paired"]["losses"]) == (3, 0)
    assert 0.2 < deg["release_f1"] <= 0.3  # the F1 cut of every fold's found discs
    assert out["stenosis"]["paired"]["mean"] == 0.0


def test_missed_positive_discs_are_placed_and_found_discs_scored_apart() -> None:
    bench = load_bench("extra_findings")

    def read(degenerated: list[bool], found: list[bool], prob: list[float]):
        n = len(found)
        truth = np.c_[np.zeros(n, bool), np.array(degenerated, bool)]
        p = np.c_[np.zeros(n), np.where(found, prob, 0.0)].astype(np.float32)
        return bench.ImageRead(truth, np.array(found, bool), p, np.zeros((0, 2), np.float32),
                               np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32),
                               np.zeros(0, np.float32), (384, 384))

    # six discs top to bottom: the top one, one in a gap and the lowest are missed, all
    # degenerated; the found discs rank perfectly
    reads = [read([True, False, True, False, True, True], [False, True, False, True, True, False],
                  [0.0, 0.1, 0.0, 0.2, 0.9, 0.0])]
    assert bench.missed_where(reads, 1) == {"lowest": 1, "between": 1, "above": 1, "below": 0,
                                            "none": 0}
    assert sum(bench.missed_where(reads, 0).values()) == 0
    row = bench.fold_metrics(reads, {"stenosis": 0.5, "degeneration": 0.5})
    assert row["auc_found_degeneration"] == pytest.approx(1.0)
    assert row["auc_degeneration"] < 1.0  # missed positives score 0
    assert row["found_degeneration"] == pytest.approx(1 / 4)


def test_probe_above_adds_a_presumed_disc_inside_the_view_only() -> None:
    from lumbardx.clinical.findings import build_findings
    from lumbardx.data.boxes import Box

    bench = load_bench("extra_findings")

    def spine(top: float):
        boxes = [Box("normal", 150, top + 40 * k, 230, top + 40 * k + 16, score=0.9)
                 for k in range(5)]
        return build_findings(boxes, (400, 400), {"normal": 0.5})

    low = spine(120.0)  # the highest disc's centre at y 128, spacing 40
    probed = bench.with_probe_above(low)
    assert len(probed.discs) == len(low.discs) + 1
    presumed = probed.discs[0]
    assert presumed.centre[1] == pytest.approx(88.0, abs=1.0)
    assert presumed.centre[0] == pytest.approx(190.0, abs=1.0)
    assert presumed.findings == [] and presumed.level_uncertain
    assert presumed.box.height == pytest.approx(low.discs[0].box.height)
    assert probed.discs[1:] == low.discs
    # the presumed disc would sit less than a quarter spacing inside the view: none added
    high = spine(0.0)  # highest centre y 8: the presumed one at y -32
    assert bench.with_probe_above(high) is high


def test_probe_gaps_places_the_discs_level_naming_presumes_missed() -> None:
    from lumbardx.clinical.findings import build_findings
    from lumbardx.data.boxes import Box

    bench = load_bench("extra_findings")
    ys = [60, 100, 140, 220, 260, 300]  # one disc missing at y 180 (a gap of two spacings)
    boxes = [Box("normal", 150, y - 8, 230, y + 8, score=0.9) for y in ys]
    spine = build_findings(boxes, (400, 400), {"normal": 0.5})
    probed = bench.with_probe_gaps(spine)
    assert len(probed.discs) == len(ys) + 1
    presumed = probed.discs[3]
    assert presumed.level == "presumed" and presumed.findings == []
    assert presumed.centre[1] == pytest.approx(180.0, abs=1.0)
    assert [d.centre[1] for d in probed.discs] == sorted(d.centre[1] for d in probed.discs)
    even = build_findings([Box("normal", 150, y - 8, 230, y + 8, score=0.9)
                           for y in range(60, 340, 40)], (400, 400), {"normal": 0.5})
    assert bench.with_probe_gaps(even) is even


def test_paired_vs_an_earlier_run_by_fold(tmp_path) -> None:  # noqa: ANN001
    import json

    bench = load_bench("extra_findings")
    row = {m: 0.5 for m in bench.PAIRED_METRICS}
    earlier = tmp_path / "a.json"
    earlier.write_text(json.dumps({"folds": [{"fold": k, **row} for k in (0, 1)]}))
    ours = [{"fold": k, **row, "auc_degeneration": 0.6} for k in (0, 1)]
    out = bench.paired_vs(ours, earlier)
    assert out["auc_degeneration"]["mean"] == pytest.approx(0.1)
    assert out["auc_degeneration"]["wins"] == 2 and out["auc_stenosis"]["mean"] == 0.0
    with pytest.raises(SystemExit, match="other folds"):
        bench.paired_vs([{"fold": 0, **row}], earlier)
