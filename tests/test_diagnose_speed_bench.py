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
