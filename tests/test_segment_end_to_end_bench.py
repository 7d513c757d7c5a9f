"""bench/segment_end_to_end.py helpers shared by the fold benches: which folds have models, and
the fold detectors called at the shipped thresholds as diagnosis calls them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_scripts import load_bench
from checkpoints import random_checkpoint

from lumbardx.models.segment_reader import SegmentReader, SegmentReaderConfig


def test_fold_models_at_the_shipped_thresholds(tmp_path: Path) -> None:
    bench = load_bench("segment_end_to_end")
    det, rd = tmp_path / "det", tmp_path / "readers"
    for k in (0, 2):
        (det / f"fold{k}").mkdir(parents=True)
        random_checkpoint(det / f"fold{k}" / "last.pt")
    (rd / "fold0").mkdir(parents=True)
    reader = SegmentReader(SegmentReaderConfig(width=4, embed=8, size=(16, 16)))
    torch.save(reader.checkpoint(), rd / "fold0" / "segment_reader.pt")
    assert bench.folds_with_models({"a": 0, "b": 1, "c": 2}, det, rd) == [0]
    own, _ = bench.load_fold_models(0, det, rd)
    assert own.thresholds["herniation"] == pytest.approx(0.001)  # the checkpoint's own
    shipped = bench.fold_thresholds("shipped")
    assert shipped is not None and set(shipped) == {"normal", "herniation", "spondylolisthesis"}
    assert bench.fold_thresholds("default") is None
    m, _ = bench.load_fold_models(0, det, rd, shipped)
    assert m.thresholds == pytest.approx(shipped) and m.chosen == set(shipped)
