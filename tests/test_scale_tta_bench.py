"""bench/scale_tta.py: a slice read at several sizes, the boxes fused or concatenated."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench

from lumbardx.data.boxes import Box

bench = load_bench("scale_tta")


def test_fuse_averages_scores_over_sizes_and_weights_the_box() -> None:
    a = [Box("herniation", 0, 0, 10, 10, score=0.9), Box("normal", 50, 50, 60, 60, score=0.3)]
    b = [Box("herniation", 1, 0, 11, 10, score=0.3)]  # IoU 9/11 with a's herniation box
    c: list[Box] = []
    fused = bench.fuse_sizes([a, b, c])
    hern = [f for f in fused if f.label == "herniation"]
    assert len(hern) == 1 and hern[0].score == pytest.approx((0.9 + 0.3 + 0.0) / 3)
    assert hern[0].x1 == pytest.approx((0 * 0.9 + 1 * 0.3) / 1.2)
    normal = [f for f in fused if f.label == "normal"]
    assert len(normal) == 1 and normal[0].score == pytest.approx(0.1)  # one size of three


def test_fuse_counts_a_size_once_and_keeps_classes_and_distant_boxes_apart() -> None:
    a = [Box("herniation", 0, 0, 10, 10, score=0.8), Box("herniation", 0, 1, 10, 11, score=0.6),
         Box("herniation", 0, 40, 10, 50, score=0.5), Box("normal", 0, 0, 10, 10, score=0.4)]
    fused = bench.fuse_sizes([a, []])
    hern = sorted((f for f in fused if f.label == "herniation"), key=lambda f: -f.score)
    # the 0.6 box joins the 0.8 one (same size: its best score counts, not the sum)
    assert [round(f.score, 6) for f in hern] == [0.4, 0.25]
    assert [f.score for f in fused if f.label == "normal"] == [pytest.approx(0.2)]
    assert bench.fuse_sizes([[], []]) == []


def test_concat_keeps_the_best_box_of_overlapping_ones_per_class() -> None:
    a = [Box("herniation", 0, 0, 10, 10, score=0.7)]
    b = [Box("herniation", 0, 1, 10, 11, score=0.9), Box("normal", 0, 0, 10, 10, score=0.2)]
    out = bench.concat_sizes([a, b], iou=0.45)
    assert sorted((f.label, f.score) for f in out) == [("herniation", 0.9), ("normal", 0.2)]
    assert bench.concat_sizes([[], []], iou=0.45) == []


def test_rules_are_scored_and_paired_against_the_training_size() -> None:
    slip = "spondylolisthesis"
    truth = [Box(slip, 100, 100, 200, 200), Box("herniation", 100, 250, 200, 300)]

    def image(s384: float, others: float) -> tuple:
        per = {s: [Box(slip, 100, 100, 200, 200, score=s384 if s == 384 else others),
                   Box("herniation", 100, 250, 200, 300, score=0.8)] for s in bench.SIZES}
        return (truth, per, (400, 400))

    negative = ([Box("normal", 100, 250, 200, 300)],
                {s: [Box(slip, 100, 100, 200, 200, score=0.5 if s == 384 else 0.01),
                     Box("normal", 100, 250, 200, 300, score=0.9)] for s in bench.SIZES},
                (400, 400))
    folds = {k: [image(0.4, 0.6), negative] for k in (0, 1, 2)}
    out = bench.compare(folds, {k: 0.45 for k in folds})
    single = out["rules"]["single"]["folds"][0]
    fused = out["rules"]["fused"]["folds"][0]
    # 384 alone ranks the negative's slip box (0.5) above the true one (0.4); fused, the
    # true one (0.533) beats the negative's (0.173)
    assert single["slip_image_auc"] == pytest.approx(0.0)
    assert fused["slip_image_auc"] == pytest.approx(1.0)
    d = out["paired_vs_single"]["fused"]["slip_image_auc"]
    assert d["mean"] == pytest.approx(1.0) and d["wins"] == 3
    assert set(out["paired_vs_single"]) == {"fused", "concat"}
