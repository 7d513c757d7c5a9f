"""bench/segment_crossval.py: ``--set`` overrides of the training recipe and the reader."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench

from lumbardx.engine.segment_training import SegmentTraining
from lumbardx.models.segment_reader import SegmentReader

bench = load_bench("segment_crossval")


def test_set_overrides_recipe_numbers_and_reader_fields() -> None:
    cfg = bench.parse_set(SegmentTraining(), ["epochs=3", "slip_retro=0.35",
                                              "config.size=120x108", "config.width=8"])
    assert cfg.epochs == 3 and cfg.slip_retro == pytest.approx(0.35)
    assert cfg.config.size == (120, 108) and cfg.config.width == 8
    assert SegmentTraining().config.size == (72, 64)  # the default is not touched
    # the reader pools over the crop, so a full-resolution crop needs no other change
    import torch

    reader = SegmentReader(cfg.config)
    logits, offset = reader(torch.zeros(1, 2, 2, 120, 108), torch.ones(1, 2, dtype=torch.bool),
                            torch.zeros(1, 2, 3))
    assert logits.shape == (1, 2, len(cfg.config.labels)) and offset.shape == (1, 2)


@pytest.mark.parametrize("bad", ["nope=1", "config=1", "config.size=72", "config.size=8x8",
                                 "config.extent=1", "config.width=-2"])
def test_set_refuses_unknown_or_malformed_fields(bad: str) -> None:
    with pytest.raises(SystemExit, match="--set"):
        bench.parse_set(SegmentTraining(), [bad])
