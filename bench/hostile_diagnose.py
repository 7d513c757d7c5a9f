"""The hostile corpus of ``bench/hostile_corpus.py`` through ``lumbardx diagnose`` and the web
app's upload: one line naming the file and the problem, or a result; never a traceback, a
crash, a hang, a server error or a lost file.

* **CLI**: every file of the corpus (pydicom's test files, their mutations, the made-up
  headers and non-DICOM files; each file one study) in one ``lumbardx diagnose`` batch, a
  child process with the shipped weights. Checked: the batch ends by itself with exit code 0
  or 1 (a native crash would end it with a signal), no ``Traceback`` in its output, one
  ``summary.csv`` row per file, every failure with a one-line reason.
* **App**: each file uploaded as a study to the web app (FastAPI test client, analysis in the
  foreground, shipped weights). Checked: every answer is 201 / 200 (duplicate) or a refusal by
  design (400 / 413 / 415 / 422) with a one-line ``detail``, never a 5xx; a stored study ends
  ``analysed`` or ``failed`` with its reason; the server still answers afterwards.

Usage::

    python bench/hostile_diagnose.py --out bench/results/hostile_diagnose.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_corpus import HUGE, made_files, mutations, pydicom_files
from machine_info import cpu_name

from lumbardx.io import atomic_write_text

BY_DESIGN = {400, 413, 415, 422}


def corpus(folder: Path) -> dict[str, Path]:
    """``group/name`` -> file (the 7000-pixel images left out: ``diagnose_memory.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = {"pydicom": {p.name: p for p in pydicom_files()}, "mutation": mutations(folder),
              "made": made_files(folder)}
    return {f"{g}/{name}": path for g, files in groups.items() for name, path in files.items()
            if str(HUGE) not in name}


def through_cli(files: dict[str, Path], out: Path, timeout_s: float) -> dict[str, Any]:
    """One ``lumbardx diagnose`` batch over every file (module docstring)."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "lumbardx", "diagnose", *map(str, files.values()),
                          "--out", str(out), "--no-pdf", "--backend", "torch"],
                         capture_output=True, text=True, timeout=timeout_s, check=False)
    rows = list(csv.DictReader((out / "summary.csv").open(newline="")))
    by_input = {r["input"]: r for r in rows}
    status = Counter(by_input.get(str(p), {}).get("status", "missing") for p in files.values())
    bad_reasons = [k for k, p in files.items()
                   if by_input.get(str(p), {}).get("status") == "failed"
                   and (not by_input[str(p)]["reason"] or "\n" in by_input[str(p)]["reason"])]
    ok = sorted(k for k, p in files.items() if by_input.get(str(p), {}).get("status") == "ok")
    return {"exit_code": run.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "traceback_in_output": "Traceback" in run.stdout + run.stderr,
            "rows": len(rows), "status": dict(status), "failures_without_one_line_reason":
            bad_reasons, "diagnosed": ok}


def through_app(files: dict[str, Path], data_dir: Path) -> dict[str, Any]:
    """Each file uploaded to the web app (module docstring)."""
    from fastapi.testclient import TestClient

    from lumbardx.app import AppSettings, create_app

    app = create_app(AppSettings(data_dir=data_dir, analyse_in_background=False,
                                 backend="torch"))
    app.state.ctx.users.add("bench", "bench-password-123")
    client = TestClient(app)
    token = client.get("/api/auth/login-token").json()["csrf_token"]
    login = client.post("/api/auth/login", json={"username": "bench",
                                                 "password": "bench-password-123"},
                        headers={"X-CSRF-Token": token})
    csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
    t0 = time.perf_counter()
    codes: Counter[int] = Counter()
    studies: Counter[str] = Counter()
    problems: list[str] = []
    for key, path in files.items():
        r = client.post("/api/studies", headers=csrf,
                        files=[("files", (path.name, path.read_bytes(), "application/dicom"))])
        codes[r.status_code] += 1
        if r.status_code in (200, 201):
            studies[r.json()["study"]["status"]] += 1
            row = r.json()["study"]
            if row["status"] == "failed" and (not row["error"] or "\n" in row["error"]):
                problems.append(f"{key}: failed without a one-line reason")
        elif r.status_code in BY_DESIGN:
            detail = str(r.json().get("detail", ""))
            if not detail or "\n" in detail:
                problems.append(f"{key}: {r.status_code} without a one-line detail")
        else:
            problems.append(f"{key}: HTTP {r.status_code}")
    alive = client.get("/api/studies").status_code == 200
    return {"uploads": len(files), "wall_s": round(time.perf_counter() - t0, 1),
            "http": {str(k): v for k, v in sorted(codes.items())},
            "stored_studies": dict(studies), "problems": problems, "server_answers_after": alive}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/hostile_diagnose.json"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds for the CLI batch")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = corpus(folder / "corpus")
        cli = through_cli(files, folder / "out", args.timeout)
        app = through_app(files, folder / "app")
    clean = (cli["exit_code"] in (0, 1) and not cli["traceback_in_output"]
             and cli["rows"] == len(files) and not cli["failures_without_one_line_reason"]
             and not app["problems"] and app["server_answers_after"])
    result = {"files": len(files), "clean": clean, "cli": cli, "app": app,
              "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in cli.items() if k != "diagnosed"}))
    print(json.dumps(app))
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
