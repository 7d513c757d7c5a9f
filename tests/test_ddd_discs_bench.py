"""bench/ddd_discs.py: the study+ddd fold detectors against the replicate, by the fixed rule."""

from __future__ import annotations

import math

import pytest
from bench_scripts import load_bench

from lumbardx.data.boxes import Box

bench = load_bench("ddd_discs")
SP = 40.0


def _base(k_all: int = 5) -> dict[int, dict]:
    base = {k: {"ap50_herniation": 0.80, "ap50_spondylolisthesis": 0.30, "ap50_normal": 0.9,
                "map50": 0.6, "slip_image_auc": 0.8, "found_degeneration": 0.85,
                "found_stenosis": 0.97} for k in range(k_all)}
    base[-1] = {"disc_level": {"sensitivity": 0.876, "specificity": 0.903}}
    return base


def _folds(herniation: list[float], slip: list[float], found: list[float]) -> list[dict]:
    base = _base()
    return [{**base[k], "fold": k, "ap50_herniation": 0.80 + h,
             "ap50_spondylolisthesis": 0.30 + s, "found_degeneration": 0.85 + f}
            for k, (h, s, f) in enumerate(zip(herniation, slip, found, strict=True))]


def test_rule_adopts_only_when_every_part_holds() -> None:
    base = _base()
    folds = _folds([-0.004] * 5, [0.0, 0.0, 0.01, -0.1, -0.1], [0.01, 0.01, 0.01, 0.01, 0.0])
    pooled = {"sensitivity": 0.876, "specificity": 0.898}
    out = bench.decide(folds, base, pooled, 5)
    assert out["herniation_ap_holds"] and out["slip_ap_folds_higher_or_equal"] == 3
    assert out["slip_ap_holds"] and out["degenerated_found_folds_higher"] == 4
    assert out["degenerated_found_holds"] and out["disc_level_holds"]
    assert out["decision"] == "adopt"
    # each part failing on its own keeps the shipped detector
    for bad in (bench.decide(_folds([-0.006] * 5, [0.0] * 5, [0.01] * 5), base, pooled, 5),
                bench.decide(_folds([0.0] * 5, [0.0, 0.0, -0.01, -0.1, -0.1], [0.01] * 5),
                             base, pooled, 5),
                bench.decide(_folds([0.0] * 5, [0.0] * 5, [0.01, 0.01, 0.01, 0.0, 0.0]),
                             base, pooled, 5),
                bench.decide(folds, base, {"sensitivity": 0.875, "specificity": 0.95}, 5),
                bench.decide(folds, base, {"sensitivity": 0.9, "specificity": 0.8979}, 5)):
        assert bad["decision"] == "keep the shipped"
    # with folds still to come the rule says so and decides nothing
    part = bench.decide(folds[:2], base, None, 5)
    assert part["decision"] == "pending: 2 of 5 folds scored"
    assert "disc_level_holds" not in part
    # a counted part that can no longer reach its count decides before the last folds
    early = bench.decide(_folds([0.0] * 3, [-0.1, -0.1, -0.01], [0.01] * 3), base, None, 5)
    assert early["decision"].startswith("keep the shipped (decided early: slip AP")
    assert "0 of 3 folds scored, 3 of 5 needed" in early["decision"]
    still = bench.decide(_folds([0.0] * 3, [-0.1, -0.1, 0.0], [0.01] * 3), base, None, 5)
    assert still["decision"] == "pending: 3 of 5 folds scored"
    found_lost = bench.decide(_folds([0.0] * 2, [0.0] * 2, [0.0, 0.0]), base, None, 5)
    assert "degenerated discs found more on 0 of 2" in found_lost["decision"]


def test_state_keeps_model_outputs_only_and_needs_the_same_truth() -> None:
    boxes = [Box("normal", 10.123456, 20, 60, 30, score=0.1234567891),
             Box("herniation", 10, 60, 60, 70, score=0.01)]
    rows = bench.box_rows(boxes, bench.STATE_FLOOR)
    assert rows == [["normal", 10.12, 20, 60, 30, 0.123457]]  # below the floor left out
    truth = {"a.png": ([Box("normal", 150, 40 + SP * k, 230, 56 + SP * k) for k in range(3)],
                       (384, 384))}
    stored = [{"image": "a.png", "scores": [{"normal": 0.9}, {}, {"normal": 0.4}],
               "boxes": [["normal", 150, 40, 230, 56, 0.9]]}]
    records, images = bench.fold_records(stored, truth)
    assert [r.truth for r in records] == [frozenset({"normal"})] * 3
    assert [r.scores for r in records] == [{"normal": 0.9}, {}, {"normal": 0.4}]
    assert images[0][1][0].score == 0.9 and images[0][2] == (384, 384)
    with pytest.raises(SystemExit, match="2 discs stored, 3 in the ground truth"):
        bench.fold_records([{**stored[0], "scores": [{}, {}]}], truth)


def test_found_share_counts_matched_positive_discs() -> None:
    import numpy as np

    class M:  # the fields of extra_findings.Matched the share reads
        def __init__(self, truth: list[list[bool]], match: list[int | None]) -> None:
            self.truth, self.match = np.array(truth, bool).reshape(-1, 2), match

    out = bench.found_share([M([[True, True], [False, True]], [0, None]),
                             M([[False, True]], [3])])
    assert out["n_stenosis"] == 1 and out["found_stenosis"] == 1.0
    assert out["n_degeneration"] == 3 and out["found_degeneration"] == pytest.approx(2 / 3)
    none = bench.found_share([M([[False, False]], [None])])
    assert none["n_stenosis"] == 0 and math.isnan(none["found_stenosis"])


def test_ignore_rule_asks_the_degenerated_discs_not_to_be_lost_on_three_folds() -> None:
    rule = bench.RULES["ddd-ignore"]
    base = _base()
    pooled = {"sensitivity": 0.876, "specificity": 0.903}
    level = _folds([0.0] * 5, [0.0, 0.0, 0.01, -0.1, -0.1], [0.0, 0.0, 0.0, -0.01, -0.01])
    out = bench.decide(level, base, pooled, 5, rule)
    assert out["degenerated_found_folds_higher_or_equal"] == 3 and out["decision"] == "adopt"
    # the ddd rule wants more on four folds: the same figures keep the shipped there
    assert bench.decide(level, base, pooled, 5)["decision"] == "keep the shipped"
    lost = bench.decide(_folds([0.0] * 3, [0.0] * 3, [-0.01, -0.01, -0.01]), base, None, 5, rule)
    assert "degenerated discs found more or equal on 0 of 3" in lost["decision"]
    assert "ignored regions" in rule.section
    with pytest.raises(SystemExit):  # a rule not written down is refused
        bench.main(["x", "--detectors", "d", "--state", "s", "--out", "o", "--rule", "mine"])
