"""bench/detector_ensemble.py: fold detectors read the same images, their boxes averaged."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import load_bench

from lumbardx.data.boxes import Box

bench = load_bench("detector_ensemble")
SLIP = "spondylolisthesis"
TRUTH = [Box(SLIP, 100, 100, 200, 200), Box("herniation", 100, 250, 200, 300)]
NEGATIVE_TRUTH = [Box("normal", 100, 250, 200, 300)]


def positive(a: float, b: float) -> tuple:
    """An image with a slip: member 0 scores its slip box ``a``, member 1 ``b``."""
    return (TRUTH, [[Box(SLIP, 100, 100, 200, 200, score=a),
                     Box("herniation", 100, 250, 200, 300, score=0.8)],
                    [Box(SLIP, 102, 100, 202, 200, score=b),
                     Box("herniation", 100, 250, 200, 300, score=0.8)]], (400, 400))


def negative(a: float, b: float) -> tuple:
    """An image without a slip: a false slip box scored ``a`` by member 0 and ``b`` by
    member 1, at places that do not overlap."""
    return (NEGATIVE_TRUTH,
            [[Box(SLIP, 100, 100, 200, 200, score=a), Box("normal", 100, 250, 200, 300, score=0.9)],
             [Box(SLIP, 100, 10, 200, 90, score=b), Box("normal", 100, 250, 200, 300, score=0.9)]],
            (400, 400))


def test_each_member_alone_and_the_fused_boxes_are_read() -> None:
    folds = {0: [positive(0.4, 0.6)], 1: [positive(0.4, 0.6)]}
    r = bench.readings(folds)
    assert set(r) == {"member0", "member1", "fused"}
    assert [b.score for b in r["member1"][0][0][1] if b.label == SLIP] == [0.6]
    fused_slip = [b for b in r["fused"][0][0][1] if b.label == SLIP]
    assert len(fused_slip) == 1 and fused_slip[0].score == pytest.approx(0.5)
    assert fused_slip[0].x1 == pytest.approx((100 * 0.4 + 102 * 0.6) / 1.0)


def test_fused_ranks_agreement_above_one_members_false_box_and_the_pilot_says_so() -> None:
    # each member alone puts a false slip box (0.5) above the true one (0.4 or 0.45); the other
    # member does not see that false box, so fused it falls to 0.25 under the true one's 0.425
    folds = {k: [positive(0.4, 0.45), negative(0.5, 0.5)] for k in (0, 1, 2, 3)}
    out = bench.compare(folds)
    for m in ("member0", "member1"):
        assert out["rules"][m]["folds"][0]["slip_image_auc"] == pytest.approx(0.0)
    assert out["rules"]["fused"]["folds"][0]["slip_image_auc"] == pytest.approx(1.0)
    d = out["paired_fused_minus"]["better_member"]["ap50_spondylolisthesis"]
    assert d["mean"] > 0 and d["wins"] == 4
    p = out["pilot"]
    assert p["slip_ge_better_member"] == {"folds": 4, "of": 4, "needed": 3, "holds": True}
    assert p["slip_gain_over_members_mean"]["holds"]
    assert p["herniation_loss_vs_better_member"]["points"] == pytest.approx(0.0)
    assert p["verdict"] == "worth a five-fold trial"


def test_no_gain_is_not_worth_a_trial() -> None:
    # both members agree on every box: fusing changes no ranking
    folds = {k: [positive(0.6, 0.6), negative(0.3, 0.3)] for k in (0, 1)}
    folds = {k: [(t, [per[0], per[0]], wh) for t, per, wh in imgs] for k, imgs in folds.items()}
    p = bench.compare(folds)["pilot"]
    assert p["slip_gain_over_members_mean"]["points"] == pytest.approx(0.0)
    assert not p["slip_gain_over_members_mean"]["holds"]
    assert p["verdict"] == "not worth a trial"


def test_only_folds_every_member_has_are_read(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d, ks in ((a, (0, 1, 2)), (b, (1, 2, 3))):
        for k in ks:
            (d / f"fold{k}").mkdir(parents=True)
            (d / f"fold{k}" / "last.pt").write_bytes(b"")
    fold_of = {f"im{k}": k for k in range(5)}
    assert bench.common_folds([a, b], fold_of) == [1, 2]


def test_one_member_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main([str(tmp_path), "--detectors", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
