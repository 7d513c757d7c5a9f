"""bench/threshold_floor.py: release thresholds chosen on records grouped above a floor."""

from __future__ import annotations

import numpy as np
import pytest
from bench_scripts import load_bench

from lumbardx.data.boxes import Box

bench = load_bench("threshold_floor")
SP = 40.0


def _disc(label: str, k: int, score: float | None = None, dx: float = 0.0) -> Box:
    y = 40 + SP * k
    return Box(label, 150 + dx, y, 230 + dx, y + 16, score=score)


def test_class_counts_and_f1() -> None:
    discs = [(frozenset({"herniation"}), frozenset({"herniation"})),
             (frozenset({"herniation"}), frozenset()),
             (frozenset({"normal"}), frozenset({"herniation"})),
             (frozenset({"normal"}), frozenset({"normal"}))]
    c = bench.class_counts(discs, "herniation")
    assert c.tolist() == [1, 1, 1] and bench.f1(c) == pytest.approx(0.5)
    assert bench.f1(np.zeros(3, np.int64)) == 0.0


def test_variants_are_nested_by_fold_and_paired() -> None:
    def image(hern_score: float, junk: bool) -> tuple:
        truth = [_disc("normal", k) for k in range(6) if k != 3] + [_disc("herniation", 3)]
        pred = [_disc("normal", k, 0.8) for k in range(6) if k != 3]
        pred.append(_disc("herniation", 3, hern_score))
        pred.append(_disc("herniation", 1, 0.3))  # a false call at a normal disc
        if junk:
            pred += [_disc("normal", 3, 0.002, dx=110)]
        return truth, pred, (400, 400)

    folds = {k: [image(0.6, k % 2 == 0), image(0.5, False)] for k in range(3)}
    out = bench.compare(folds)
    assert set(out["variants"]) == {"every_box", "floor"}
    for v in out["variants"].values():
        assert [r["fold"] for r in v["folds"]] == [0, 1, 2]
        th = v["folds"][0]["thresholds"]["herniation"]
        # F1 on the other folds puts the cut between the false call (0.3) and the true ones
        assert 0.3 < th <= 0.5
        assert v["pooled"]["f1_herniation"] == pytest.approx(1.0)
    d = out["paired_floor_minus_every_box"]["f1_mean"]
    assert d["n"] == 3
