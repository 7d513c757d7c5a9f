"""bench/segment_combined.py: each detector slip box gets the reader's probability of the disc
it was grouped into (0 off the spine), and the fixed rules combine the two."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench_scripts import load_bench
from lumbardx.data.boxes import Box
from lumbardx.data.images import MedicalImage
from lumbardx.models.segment_reader import LABELS

NAMES = ["normal", "herniation", "spondylolisthesis"]


def test_rules() -> None:
    bench = load_bench("segment_combined")
    out = bench.combine(np.array([0.36, 0.9, 0.5]), np.array([1.0, 0.1, 0.0]))
    assert out["detector"].tolist() == [0.36, 0.9, 0.5]
    np.testing.assert_allclose(out["combined"], [0.6, 0.3, 0.0])
    np.testing.assert_allclose(out["mean"], [0.68, 0.5, 0.25])


def test_slip_boxes_take_the_probability_of_their_disc(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench("segment_combined")
    boxes = [Box("normal", 150, y, 210, y + 14, score=0.9) for y in range(60, 300, 40)]
    slip = Box("spondylolisthesis", 148, 178, 212, 196, score=0.4)  # on the 4th disc
    away = Box("spondylolisthesis", 330, 20, 370, 34, score=0.7)  # far from the spine
    weak = Box("spondylolisthesis", 149, 99, 211, 115, score=0.1)  # 2nd disc, below threshold
    seen = []

    def fake_predict(reader, items):  # noqa: ANN001, ANN202 - the reader's logits per disc
        n = items[0].frames.shape[0]
        seen.append(n)
        logits = torch.full((n, len(LABELS)), -4.0)
        logits[:, LABELS.index("spondylolisthesis")] = torch.arange(n, dtype=torch.float32) - 3
        return [(logits, None)]

    monkeypatch.setattr(bench, "predict_items", fake_predict)
    display = np.zeros((384, 384), np.uint8)
    image = MedicalImage(display.astype(np.float32), display, None, "x.png", "png")
    m = SimpleNamespace(thresholds={n: 0.25 for n in NAMES}, class_names=NAMES, chosen=NAMES)
    planes = np.stack([display, display])
    every = bench.read_every([*boxes, slip, away, weak], image.pixels, NAMES, None, planes, "x",
                             "p0")
    sb = bench.slip_boxes_with_p([*boxes, slip, away, weak], image, m, None, planes, "x", "p0",
                                 every)
    assert seen == [6, 6]  # with every box counted, then as diagnosis groups them
    assert sb.xyxy.tolist() == [[148, 178, 212, 196], [330, 20, 370, 34], [149, 99, 211, 115]]
    np.testing.assert_allclose(sb.s, [0.4, 0.7, 0.1])
    assert sb.p[0] == pytest.approx(1 / (1 + np.exp(-(3 - 3))))  # disc 4 of 6: logit 0
    assert sb.p[1] == 0.0  # set aside off the spine: no disc, no finding
    assert sb.p[2] == 0.0  # below the threshold: diagnosis drops it
    np.testing.assert_allclose(sb.p_all, [0.5, 0.0, 1 / (1 + np.exp(2))])  # disc 2: logit -2
    assert np.isnan(sb.pct).all()  # a blank image: no vertebral body, the estimate refuses


def test_slip_features_and_box_hits() -> None:
    bench = load_bench("segment_combined")
    x = bench.slip_features(np.array([0.5, 0.9]), np.array([0.0, 0.5]), np.array([-50.0, np.nan]))
    np.testing.assert_allclose(x, [[0.0, np.log(1e-4 / (1 - 1e-4)), 2.0, 0.0],
                                   [np.log(9.0), 0.0, 0.0, 1.0]])
    assert bench.slip_features(np.ones(3) / 2, np.ones(3) / 2, np.zeros(3), False).shape == (3, 2)
    truth = np.array([[10, 10, 50, 50]], np.float32)
    xyxy = np.array([[12, 10, 50, 50], [30, 10, 70, 50], [0, 0, 5, 5]], np.float32)
    assert bench.box_hits(truth, xyxy).tolist() == [True, False, False]
    assert bench.box_hits(np.zeros((0, 4), np.float32), xyxy).tolist() == [False] * 3


def test_spec_cut_allows_the_target_share_of_false_calls() -> None:
    bench = load_bench("segment_combined")
    y = np.array([False] * 100 + [True] * 5)
    score = np.r_[np.arange(100) / 100.0, [0.5, 0.95, 0.99, 0.995, 1.0]]
    cut = bench.spec_cut(score, y, 0.93)
    call = score >= cut
    assert (~call[~y]).mean() >= 0.93 and (~call[~y]).mean() < 0.94  # 7 of 100 negatives
    assert call[y].tolist() == [False, True, True, True, True]
    tied = np.r_[np.zeros(100), np.ones(5)]
    assert (tied[:100] >= bench.spec_cut(tied, y, 0.93)).sum() == 0  # ties are not split


def test_disc_records_and_nested_points(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench("segment_combined")
    truth = [Box("normal", 150, y, 210, y + 14) for y in range(60, 300, 40)]
    truth[3] = Box("herniation", 150, 180, 210, 194)
    found = [Box(b.label, b.x1 + 1, b.y1, b.x2 + 1, b.y2, score=0.8) for b in truth[:5]]
    found.append(Box("spondylolisthesis", 149, 180, 211, 195, score=0.3))  # the 4th disc

    def fake_predict(reader, items):  # noqa: ANN001, ANN202
        n = items[0].frames.shape[0]
        logits = torch.full((n, len(LABELS)), -1e4)  # probability 0 in float32
        logits[3, LABELS.index("herniation")] = 1e4  # the reader: herniation at disc 4
        return [(logits, None)]

    monkeypatch.setattr(bench, "predict_items", fake_predict)
    planes = np.zeros((2, 384, 384), np.uint8)
    every = bench.read_every(found, np.zeros((384, 384), np.float32), NAMES, None, planes, "x",
                             "p0")
    raws = bench.disc_raw(every, truth)
    assert list(every._pct) == [3]  # measured once, at the one disc with a slip box
    assert [r.found for r in raws] == [True] * 5 + [False]
    assert np.isnan(raws[3].pct) and np.isnan(raws[0].pct)  # refused / no slip box: NaN
    recs = {rule: bench.disc_scores(raws, rule) for rule in bench.FIXED}
    det, comb, mean = recs["detector"], recs["combined"], recs["mean"]
    assert det[3].truth == frozenset({"herniation"})
    assert det[3].scores == pytest.approx({"herniation": 0.8, "spondylolisthesis": 0.3})
    assert comb[3].scores == pytest.approx({"herniation": np.sqrt(0.8), "spondylolisthesis": 0},
                                           abs=1e-9)
    assert mean[3].scores == pytest.approx({"herniation": 0.9, "spondylolisthesis": 0.15})
    assert det[5].scores == {"herniation": 0.0, "spondylolisthesis": 0.0}  # not found
    assert mean[0].scores == pytest.approx({"herniation": 0.0, "spondylolisthesis": 0.0}, abs=1e-9)

    # the learned rules: a regression per class, 0 for a disc without a box of the class
    w = [np.array([2.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, -1.0, 0.0])]
    learned = bench.disc_scores(raws, "learned", w)
    assert learned[3].scores["herniation"] == pytest.approx(1 / (1 + np.exp(-2 * np.log(4))))
    slip_x = 1.0 * np.log(0.3 / 0.7) + 1.0 * np.log(1e-4 / (1 - 1e-4)) - 1.0  # refused
    assert learned[3].scores["spondylolisthesis"] == pytest.approx(1 / (1 + np.exp(-slip_x)))
    assert learned[1].scores["spondylolisthesis"] == 0.0 and learned[5].scores == \
        {"herniation": 0.0, "spondylolisthesis": 0.0}
    fits = bench.fit_disc_rule(raws * 3, "learned")
    assert [len(v) for v in fits] == [3, 5]
    # stacked: every found disc, the detector's three scores and the reader's five
    assert raws[3].s_normal == 0.0 and raws[0].s_normal == 0.8
    np.testing.assert_allclose(raws[3].reader, [0, 1, 0, 0, 0], atol=1e-6)
    stack = bench.fit_disc_rule(raws * 3, "stacked")
    assert [len(v) for v in stack] == [9, 9]
    stacked = bench.disc_scores(raws, "stacked", stack)
    assert stacked[5].scores == {"herniation": 0.0, "spondylolisthesis": 0.0}  # not found
    h = [r.scores["herniation"] for r in stacked[:5]]
    assert h[3] > 0.5 > max(h[:3] + h[4:])  # the one herniated disc stands out

    # two folds, each measured at the cuts of the other
    pts = bench.nested_points({0: det, 1: mean})
    assert pts["spec_target"]["counts"] == [2, 2, 10, 10]
    assert pts["f1"]["counts"][1::2] == [2, 10]
    # a learned rule's cuts come from the other folds as its own fold's regression scores them
    never = [bench.DiscScore(r.truth, {"herniation": 2.0, "spondylolisthesis": 2.0})
             for r in det]
    assert bench.nested_points({0: det, 1: det}, {0: never, 1: never})["spec_target"][
        "counts"][0] == 0


def test_each_annotated_slip_is_traced_to_the_box_that_overlaps_it_most() -> None:
    bench = load_bench("segment_combined")
    truth = np.array([[10, 10, 50, 50], [100, 100, 140, 140], [200, 200, 240, 240]], np.float32)
    xyxy = np.array([[12, 10, 50, 50], [100, 100, 140, 170], [0, 0, 20, 20]], np.float32)
    rows = bench.truth_slips(truth, xyxy, np.array([0.6, 0.1, 0.9]), np.array([0.2, 0.7, 0.0]))
    assert [r["iou"] for r in rows] == [0.95, pytest.approx(40 / 70, abs=1e-3), 0.0]
    assert [(r["s"], r["p"]) for r in rows] == [(0.6, 0.2), (0.1, 0.7), (0.0, 0.0)]
    assert bench.truth_slips(truth[:1], np.zeros((0, 4), np.float32), np.zeros(0),
                             np.zeros(0)) == [{"iou": 0.0, "s": 0.0, "p": 0.0}]
    summary = bench.slip_summary(rows + [{"iou": 0.8, "s": 0.1, "p": 0.1}])
    assert summary == {"slips": 4, "boxed": 3, "boxed_s_ge_0.25": 1, "boxed_p_ge_0.5": 1,
                       "boxed_neither": 1}


def test_product_discs_read_as_diagnosis_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacked calls as diagnosis makes them: the thresholded discs, features computed by
    the stage's own functions (the detector's best score of every box at the disc, the
    reader's raw logits), and the detector's calls there."""
    from lumbardx.engine.stacking import stack_features

    bench = load_bench("segment_combined")
    truth = [Box("normal", 150, y, 210, y + 14) for y in range(60, 300, 40)]
    truth[3] = Box("herniation", 150, 180, 210, 194)
    found = [Box("normal", b.x1 + 1, b.y1, b.x2 + 1, b.y2, score=0.8) for b in truth[:5]]
    found[3] = Box("herniation", 151, 180, 211, 194, score=0.7)
    found.append(Box("herniation", 151, 100, 211, 114, score=0.1))  # disc 1, below threshold

    def fake_predict(reader, items):  # noqa: ANN001, ANN202
        n = items[0].frames.shape[0]
        logits = torch.zeros((n, len(LABELS)))
        logits[:, LABELS.index("herniation")] = torch.arange(n, dtype=torch.float32)
        return [(logits, None)]

    monkeypatch.setattr(bench, "predict_items", fake_predict)
    display = np.zeros((384, 384), np.uint8)
    image = MedicalImage(display.astype(np.float32), display, None, "x.png", "png")
    m = SimpleNamespace(thresholds={n: 0.25 for n in NAMES}, class_names=NAMES, chosen=NAMES)
    rec = SimpleNamespace(image_id="x", patient="p0")
    recs = bench.product_discs(found, image, m, None, np.stack([display, display]), rec, truth)
    assert [r.found for r in recs] == [True] * 5 + [False]
    assert [r.called["herniation"] for r in recs] == [False, False, False, True, False, False]
    z = {k: 0.0 for k in LABELS}
    np.testing.assert_allclose(recs[1].x, stack_features(
        {"normal": 0.8, "herniation": 0.1}, {**z, "herniation": 1.0}))  # the weak box counts
    np.testing.assert_allclose(recs[2].x, stack_features({"normal": 0.8},
                                                         {**z, "herniation": 2.0}))
    np.testing.assert_allclose(recs[3].x, stack_features({"herniation": 0.7},
                                                         {**z, "herniation": 3.0}))
    assert not recs[5].x.any()


def test_release_cut_matches_the_detector_specificity_per_class() -> None:
    from lumbardx.engine.stacking import fit_stacked

    bench = load_bench("segment_combined")
    rng = np.random.default_rng(5)
    recs = []
    for i in range(1500):
        hern, slip = rng.random() < 0.3, rng.random() < 0.08
        truth = frozenset(({"herniation"} if hern else set())
                          | ({"spondylolisthesis"} if slip else set()) or {"normal"})
        x = rng.normal(size=8)
        x[1] += 2.5 * hern
        x[2] += 2.5 * slip
        called = {"herniation": bool(x[1] > 1.8), "spondylolisthesis": bool(x[2] > 2.2)}
        recs.append(bench.ProductDisc(truth, i % 50 != 0, called, x))
    spec = bench.detector_specificity(recs)
    neg = [r for r in recs if r.found and "herniation" not in r.truth]
    assert spec["herniation"] == pytest.approx(np.mean([not r.called["herniation"]
                                                        for r in neg]))
    found = [r for r in recs if r.found]
    calls = bench.release_cut(fit_stacked(np.stack([r.x for r in found]),
                                          [r.truth for r in found]), recs)
    p = calls.probabilities(np.stack([r.x for r in found]))
    for c in ("herniation", "spondylolisthesis"):
        y = np.array([c in r.truth for r in found])
        own = (p[c][~y] < calls.thresholds[c]).mean()
        assert own == pytest.approx(spec[c], abs=1.0 / (~y).sum())
