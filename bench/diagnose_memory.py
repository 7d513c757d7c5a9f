"""Peak memory of diagnosing one study, on the largest inputs, against a normal slice.

Each input is diagnosed by ``lumbardx diagnose`` in its own process (shipped weights,
PyTorch, no PDF); the process's peak resident memory (``ru_maxrss`` of the finished child) is
recorded. Inputs: a 384 x 384 slice (the peer: what a normal study costs, model included), a
7000 x 7000 native 16-bit DICOM, 7000 x 7000 PNG and JPEG, and a DICOM header claiming 65535 x
65535 pixels (refused before anything is allocated). The bound is 1.5 GB per study.

Usage::

    python bench/diagnose_memory.py --out bench/results/diagnose_memory.json
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_corpus import HUGE, _mr
from machine_info import cpu_name

from lumbardx.io import atomic_write_text

BOUND_MB = 1536.0


def inputs(folder: Path) -> dict[str, Path]:
    """The studies to diagnose (module docstring), written into ``folder``."""
    from lumbardx.synth import SynthConfig, generate_case

    case = generate_case(np.random.default_rng(0), SynthConfig(image_sizes=(384,)))
    files = {"slice_384_png": folder / "slice.png"}
    Image.fromarray(case.image).save(files["slice_384_png"])
    big = np.asarray(Image.fromarray(case.image).resize((HUGE, HUGE), Image.Resampling.BILINEAR))
    files[f"dicom_{HUGE}_native"] = folder / "big.dcm"
    sagittal = {"ImageOrientationPatient": [0, 1, 0, 0, 0, -1], "PixelSpacing": [0.05, 0.05]}
    _mr(big.astype(np.uint16) * 16, **sagittal).save_as(files[f"dicom_{HUGE}_native"],
                                                       enforce_file_format=True)
    for fmt in ("png", "jpeg"):
        files[f"{fmt}_{HUGE}"] = folder / f"big.{fmt}"
        Image.fromarray(big).save(files[f"{fmt}_{HUGE}"], format=fmt.upper())
    claim = _mr(np.zeros((8, 8), np.uint16), **sagittal)
    claim.Rows = claim.Columns = 65535
    files["dicom_claims_65535"] = folder / "claim.dcm"
    claim.save_as(files["dicom_claims_65535"], enforce_file_format=True)
    return files


def diagnose_peak(path: Path, out: Path) -> dict[str, Any]:
    """``lumbardx diagnose PATH`` in a child process: exit code, wall time, peak RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "lumbardx", "diagnose", str(path), "--out",
                          str(out), "--no-pdf", "--backend", "torch"],
                         capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("the children's peak did not grow: run inputs from small to large")
    rows = list(csv.DictReader((out / "summary.csv").open(newline=""))) \
        if (out / "summary.csv").is_file() else []
    return {"exit_code": run.returncode, "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak / 1024, 1), "file_mb": round(path.stat().st_size / 2**20, 1),
            "status": rows[0]["status"] if rows else "no summary",
            "reason": rows[0]["reason"][:200] if rows else (run.stderr.strip()[-200:])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = inputs(folder)
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so each input is measured
        # from a fresh process of its own (--one) whose only child is that diagnosis.
        results: dict[str, Any] = {}
        for name, path in files.items():
            probe = subprocess.run(
                [sys.executable, __file__, "--one", str(path), str(folder / f"out-{name}")],
                capture_output=True, text=True, timeout=1200, check=False)
            if probe.returncode != 0:
                results[name] = {"error": probe.stderr.strip().splitlines()[-1:]}
                continue
            results[name] = json.loads(probe.stdout)
    peer = results["slice_384_png"].get("peak_rss_mb")
    for r in results.values():
        if peer and "peak_rss_mb" in r:
            r["vs_384_slice"] = round(r["peak_rss_mb"] / peer, 2)
            r["within_bound"] = r["peak_rss_mb"] <= BOUND_MB
    doc = {"bound_mb": BOUND_MB, "inputs": results, "machine": {"cpu": cpu_name()},
           "note": "peak resident memory of the whole lumbardx diagnose process (model and "
                   "libraries included) for one study"}
    atomic_write_text(args.out, json.dumps(doc, indent=1))
    for name, r in results.items():
        print(f"{name:22s} {r}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(diagnose_peak(Path(sys.argv[2]), Path(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(main())
