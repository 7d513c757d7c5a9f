"""bench/diagnose_speed.py: a model trained on T1/T2 pairs is timed as diagnosis runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from bench_scripts import load_bench
from checkpoints import random_checkpoint

ds = load_bench("diagnose_speed")


def test_pair_model_with_its_single_slice_model(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", [
        "diagnose_speed.py", "--data", str(tmp_path / "absent"), "--n", "2", "--warmup", "1",
        "--weights", str(random_checkpoint(tmp_path / "pair.pt", pairs=True)),
        "--single-slice-weights", str(random_checkpoint(tmp_path / "single.pt", pairs=False)),
        "--backends", "torch", "--no-peer", "--dicom-studies", "2", "--out", str(out)])
    ds.main()
    result = json.loads(out.read_text())
    assert result["model"]["inputs"] == "T1+T2"
    assert "single slices read by single.pt" in result["model"]["described"]
    assert result["single_slice_model"]["name"] == "yolov5n"
    studies = result["dicom_studies"]["torch"]
    assert studies["inputs"] == "T1+T2" and studies["read_as_pairs"] == studies["studies"] == 2
    images = result["backends"]["torch"]
    assert images["read_as"] == {"slice": 2}  # PNG slices go to the single-slice model
    assert images["total_ms"]["median"] > 0


def test_versus_segments_times_both_checkpoints_on_the_same_items(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lumbardx.models.segment_reader import SegmentReader, SegmentReaderConfig

    def segments(path: Path, width: int) -> Path:
        reader = SegmentReader(SegmentReaderConfig(width=width, embed=8, size=(16, 16)))
        torch.save({**reader.checkpoint(), "thresholds": {"spondylolisthesis": 0.5,
                                                          "stenosis": 0.5, "degeneration": 0.5},
                    "slip_box": [0.0, 0.0, 1.7, 1.25], "tag": path.stem}, path)
        return path

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", [
        "diagnose_speed.py", "--data", str(tmp_path / "absent"), "--n", "3", "--warmup", "1",
        "--weights", str(random_checkpoint(tmp_path / "det.pt")),
        "--segments-weights", str(segments(tmp_path / "small.pt", 4)),
        "--versus-segments", str(segments(tmp_path / "wide.pt", 8)),
        "--backends", "torch", "--no-peer", "--dicom-studies", "2", "--out", str(out)])
    ds.main()
    result = json.loads(out.read_text())
    assert result["segments"]["version"] == "small" and result["versus_segments"].endswith(
        "wide.pt")
    for timing, n in ((result["backends"]["torch"], 3), (result["dicom_studies"]["torch"], 2)):
        v = timing["versus_segments"]
        assert v["ratio_ours_over_versus"] == pytest.approx(
            v["ours_total_ms"]["median"] / v["total_ms"]["median"])
        assert v["n"] == n and v["total_ms"]["median"] > 0  # every timed item, twice
        assert v["ours_total_ms"]["median"] < timing["total_ms"]["median"]  # without overlay
