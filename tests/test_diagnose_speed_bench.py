"""bench/diagnose_speed.py: a model trained on T1/T2 pairs is timed as diagnosis runs it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lumbardx.engine.checkpoint import build_detector

_bench = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(_bench))
_spec = importlib.util.spec_from_file_location("diagnose_speed", _bench / "diagnose_speed.py")
ds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ds)

NAMES = ["normal", "herniation", "spondylolisthesis"]


def _checkpoint(path: Path, pairs: bool) -> Path:
    torch.manual_seed(0)
    model = build_detector("yolov5n", 3, 64)
    torch.save({"model_name": "yolov5n", "class_names": NAMES, "model": model.state_dict(),
                "recipe": {"name": "test", "image_size": 64, "sequence_pairs": pairs}}, path)
    return path


def test_pair_model_with_its_single_slice_model(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", [
        "diagnose_speed.py", "--data", str(tmp_path / "absent"), "--n", "2", "--warmup", "1",
        "--weights", str(_checkpoint(tmp_path / "pair.pt", pairs=True)),
        "--single-slice-weights", str(_checkpoint(tmp_path / "single.pt", pairs=False)),
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
