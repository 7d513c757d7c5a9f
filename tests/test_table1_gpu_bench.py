"""The prepared Table 1 GPU run: data sent in two checked parts, the time plan, and the whole
run at tiny scale on the CPU (the dry run of ``bench/table1_gpu.sh``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench_scripts import BENCH, load_bench
from synth_data import two_per_patient

SCRIPT = BENCH / "table1_gpu.sh"


def _sh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_prepare_stash_check_round_trip(tmp_path: Path) -> None:
    data = two_per_patient(tmp_path / "data", n=6)
    (data / "images" / "name with spaces.png").write_bytes(b"\x89PNG not really")
    env = {"TABLE1_PREP": str(tmp_path / "prep"), "TABLE1_WORK": str(tmp_path / "work"),
           "TABLE1_PART_A_BYTES": "20000", "TABLE1_NO_WHEELS": "1"}
    prep = _sh("prepare", str(data), env=env)
    assert prep.returncode == 0, prep.stderr
    assert (tmp_path / "prep" / "data-a.tar").is_file()
    early = _sh("check", env=env)  # part A not stashed yet
    assert early.returncode == 2 and "stash" in early.stderr
    assert _sh("stash", env=env).returncode == 0
    check = _sh("check", env=env)
    assert check.returncode == 0, check.stderr
    sent = sorted(p.relative_to(tmp_path / "work" / "data").as_posix()
                  for p in (tmp_path / "work" / "data").rglob("*") if p.is_file())
    want = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert sent == sorted([*want, "SHA256SUMS"])
    # a part that changed on the way is refused
    (tmp_path / "work" / "data" / "images" / "name with spaces.png").write_bytes(b"changed")
    bad = _sh("check", env=env)
    assert bad.returncode == 2 and "data check failed" in bad.stderr


def test_plan_shares_the_budget_and_bounds_each_fold() -> None:
    t1 = load_bench("table1_gpu")
    cal = {"s_per_image": 0.001}
    p = t1.plan(cal, budget_s=420, n_models=3, k=5, train_images=660, max_jobs=5,
                device=torch.device("cpu"), min_epochs=3, max_epochs=300)
    assert p["jobs"] == 5 and p["rounds"] == 1 and p["share_s"] == 140
    assert p["epochs"] == int(140 // (660 * 0.001 * 5)) == 42
    assert p["time_limit_s"] == pytest.approx(140 * 1.15, abs=0.1)
    slow = t1.plan({"s_per_image": 1.0}, 420, 3, 5, 660, 2, torch.device("cpu"), 3, 300)
    assert slow["epochs"] == 3 and slow["rounds"] == 3  # the floor, and 2 + 2 + 1 folds


def test_dry_run_end_to_end(tmp_path: Path) -> None:
    """The whole run at tiny scale; a model that fails is reported and the others finish; the
    results folder gets the tables and no figures (a lease returns at most 8 files)."""
    data = two_per_patient(tmp_path / "data", n=12)
    out, results = tmp_path / "out", tmp_path / "results"
    run = subprocess.run([sys.executable, str(BENCH / "table1_gpu.py"), str(data), "--out",
                          str(out), "--results", str(results), "--dry-run", "--models",
                          "yolov5s,no-such-model"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]  # one model failed
    result = json.loads((results / "table1_gpu.json").read_text())
    assert result["dry_run"] and result["stage"] == "done"
    assert "no-such-model" in result["per_model"]["no-such-model"]["error"]
    m = result["per_model"]["yolov5s"]
    assert m["epochs_trained"] == [1, 1, 1] and not m["failures"]
    assert m["calibration"]["s_per_image"] > 0 and m["plan"]["epochs"] == 1
    assert result["pipeline_speed"]["device_images_per_s"] > 0
    assert sorted(p.name for p in results.iterdir()) == [
        "table1.csv", "table1.json", "table1.md", "table1_gpu.json", "table1_gpu.md"]
    summary = (results / "table1_gpu.md").read_text()
    assert "| yolov5s |" in summary and "no-such-model did not finish" in summary
