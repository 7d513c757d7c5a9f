"""bench/segment_ensemble.py: out-of-fold predictions of several runs averaged disc by disc."""

from __future__ import annotations

import pytest

from bench_scripts import load_bench


def _fold(logits: list[list[float]], offsets: list[float], right: float) -> dict:
    rows = [{"image": "a.png", "disc": i, "logits": lg, "offset": off, "targets": [0, 1]}
            for i, (lg, off) in enumerate(zip(logits, offsets))]
    return {"fold": 0, "template": [0, 0, 1, 1], "rows": rows,
            "level_check": [{"image": "a.png", "right": right, "missed": -right,
                             "extra": 0.0, "extra_true": right}],
            "slip_measure": []}


def test_runs_are_averaged_disc_by_disc() -> None:
    bench = load_bench("segment_ensemble")
    a = _fold([[1.0, -2.0], [3.0, 0.0]], [0.1, 0.3], 2.0)
    b = _fold([[3.0, 0.0], [-1.0, 2.0]], [0.3, 0.1], 4.0)
    out = bench.average_fold([a, b])
    assert [r["logits"] for r in out["rows"]] == [[2.0, -1.0], [1.0, 1.0]]
    assert [r["offset"] for r in out["rows"]] == pytest.approx([0.2, 0.2])
    assert out["level_check"][0]["right"] == 3.0 and out["level_check"][0]["missed"] == -3.0
    assert out["rows"][0]["targets"] == [0, 1] and out["template"] == [0, 0, 1, 1]
    b["rows"][1]["disc"] = 5
    with pytest.raises(SystemExit, match="same discs"):
        bench.average_fold([a, b])
