"""bench/disc_level.py: every-box and diagnosis grouping scored on the same boxes."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench

from lumbardx.clinical.thresholds import disc_scores
from lumbardx.data.boxes import Box

bench = load_bench("disc_level")
SP = 40.0


def _disc(label: str, k: int, score: float | None = None, dx: float = 0.0) -> Box:
    cx, cy = 200.0 + dx, 60.0 + SP * k
    return Box(label, cx - 20, cy - 9, cx + 20, cy + 9, score=score)


def _image(junk: bool) -> tuple[list[Box], list[Box], tuple[int, int]]:
    """Seven discs, the sixth herniated and found; ``junk``: three low-score boxes beside it."""
    truth = [_disc("normal", k) for k in range(7) if k != 5] + [_disc("herniation", 5)]
    pred = [_disc("normal", k, 0.8) for k in range(7) if k != 5] + [_disc("herniation", 5, 0.8)]
    if junk:
        pred += [Box("normal", 280, 250 + dy, 320, 268 + dy, score=0.001) for dy in (-1, 0, 1)]
    return truth, pred, (400, 400)


def test_both_groupings_on_the_same_boxes_and_their_paired_difference() -> None:
    thr = {"normal": 0.3, "herniation": 0.3, "spondylolisthesis": 0.2}
    images = {0: [_image(False), _image(True)], 1: [_image(True), _image(True)]}
    records = {k: disc_scores(imgs) for k, imgs in images.items()}
    out = bench.score(images, records, {0: thr, 1: thr})
    # the clean image is called right either way; the junk steals the match when every box
    # is grouped, never in diagnosis
    assert out["diagnosis"]["counts"] == [4, 4, 24, 24]
    assert out["every_box"]["counts"] == [1, 4, 24, 24]
    assert out["every_box"]["per_fold"] == [[0.5, 1.0], [0.0, 1.0]]
    diff = out["diagnosis_minus_every_box"]["sensitivity"]
    assert diff["mean"] == pytest.approx(0.75) and diff["wins"] == 2
    lo, hi = out["diagnosis"]["sensitivity_ci95"]
    assert lo < 1.0 == out["diagnosis"]["sensitivity"] and hi == pytest.approx(1.0)
