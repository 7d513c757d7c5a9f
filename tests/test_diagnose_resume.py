"""``lumbardx diagnose`` batches that resume: killed with SIGKILL and run again, a batch skips
the studies finished earlier (``complete.json``), redoes the rest and never leaves a
half-written output folder; a changed input or ``--redo`` makes a study be diagnosed again.

Studies are small synthetic PNG slices (128 px, :func:`lumbardx.synth.generate_case`), each a
copy of one of two generated slices with one pixel changed, so that every study has its own
study key; the model is the tiny random checkpoint of :mod:`checkpoints`, which finds discs on
them.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from lumbardx.cli.diagnose import diagnose as diagnose_command

from checkpoints import tiny_checkpoint

DONE_EARLIER = "done earlier (complete.json)"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt",
                           tag="resume-test", training_data="synthetic test")


@pytest.fixture(scope="module")
def slices() -> list[np.ndarray]:
    """Two synthetic 128-px sagittal slices (``uint8``)."""
    from lumbardx.synth import SynthConfig, generate_case

    rng = np.random.default_rng(7)
    return [generate_case(rng, SynthConfig(image_sizes=(128,))).image for _ in range(2)]


def _write_studies(folder: Path, n: int, slices: list[np.ndarray]) -> list[Path]:
    """``n`` PNG studies ``s000.png``... in ``folder``, each with its own pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = slices[i % len(slices)].copy()
        image[0, i // len(slices)] ^= 1
        paths.append(folder / f"s{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def _args(checkpoint: Path, out: Path) -> list[str]:
    return ["--out", str(out), "--weights", str(checkpoint), "--backend", "torch", "--no-pdf"]


def _run(paths: list[Path], checkpoint: Path, out: Path, *extra: str) -> int:
    app = typer.Typer()
    app.command()(diagnose_command)
    result = CliRunner().invoke(app, [*map(str, paths), *_args(checkpoint, out), *extra])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code


def _summary(out: Path) -> dict[str, dict[str, str]]:
    """``summary.csv`` rows by input file name."""
    with (out / "summary.csv").open(newline="") as fh:
        return {Path(row["input"]).name: row for row in csv.DictReader(fh)}


def _records(out: Path) -> dict[Path, dict]:
    """``complete.json`` of every visible output folder (asserting that each folder has one,
    that its files exist and that its findings.json and overlay.png can be read)."""
    records = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record = json.loads((folder / "complete.json").read_text())
        assert record["files"] and all((folder / f).is_file() for f in record["files"])
        assert json.loads((folder / "findings.json").read_text())["study_key"]
        with Image.open(folder / "overlay.png") as im:
            im.load()
        records[folder] = record
    return records


def _work_folders(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.is_dir() and p.name.startswith(".")]


def _one_folder_per_input(out: Path, inputs: list[Path]) -> dict[str, Path]:
    """Input file name -> its output folder, asserting exactly one complete folder each."""
    records = _records(out)
    counts = Counter(r["input"] for r in records.values())
    assert counts == Counter(str(p.resolve()) for p in inputs)
    return {Path(r["input"]).name: folder for folder, r in records.items()}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_batch_leaves_whole_folders_and_resumes(tmp_path: Path, checkpoint: Path,
                                                       slices: list[np.ndarray]) -> None:
    studies = _write_studies(tmp_path / "studies", 40, slices)
    out = tmp_path / "out"
    with (tmp_path / "first.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lumbardx", "diagnose",
                                 str(tmp_path / "studies"), *_args(checkpoint, out)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 45
            while len(list(out.glob("*/complete.json"))) < 2 and proc.poll() is None:
                assert time.monotonic() < deadline, "no study finished in 45 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        "the batch ended before it was killed (give it more studies if it finished):\n"
        + (tmp_path / "first.log").read_text(errors="replace")[-2000:])

    before = _records(out)
    done = {Path(r["input"]).name for r in before.values()}
    assert 2 <= len(done) < len(studies)
    if (out / "summary.csv").exists():  # a valid summary of studies finished before the kill
        assert set(_summary(out)) <= done

    assert _run([tmp_path / "studies"], checkpoint, out) == 0
    rows = _summary(out)
    assert set(rows) == {p.name for p in studies}
    assert all(r["status"] == "ok" for r in rows.values())
    assert {name for name, r in rows.items() if r["reason"] == DONE_EARLIER} == done
    assert all(r["reason"] == "" and r["time_s"] for name, r in rows.items() if name not in done)
    folders = _one_folder_per_input(out, studies)
    assert all(folders[Path(r["input"]).name] == f for f, r in before.items())
    assert not _work_folders(out)


def test_changed_input_or_options_are_redone(tmp_path: Path, checkpoint: Path,
                                             slices: list[np.ndarray]) -> None:
    a, b, _ = studies = _write_studies(tmp_path / "studies", 3, slices)
    out = tmp_path / "out"
    assert _run(studies, checkpoint, out) == 0
    first = _one_folder_per_input(out, studies)
    assert _run(studies, checkpoint, out) == 0
    assert {n: r["reason"] for n, r in _summary(out).items()} == dict.fromkeys(
        ["s000.png", "s001.png", "s002.png"], DONE_EARLIER)
    assert _summary(out)["s000.png"]["discs"] == \
        str(len(json.loads((first["s000.png"] / "findings.json").read_text())["findings"]))

    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    Image.fromarray(slices[0][::-1].copy()).save(b)  # other pixels: another study key
    (first["s002.png"] / "overlay.png").unlink()  # an output lost
    assert _run(studies, checkpoint, out) == 0
    rows = _summary(out)
    assert [rows[p.name]["reason"] for p in studies] == ["", "", ""]
    now = _one_folder_per_input(out, studies)
    assert now["s000.png"] == first["s000.png"] and now["s001.png"] != first["s001.png"]
    assert not first["s001.png"].exists()  # the earlier study key's folder is gone

    assert _run([a], checkpoint, out, "--classes", "all") == 0  # an option that changes outputs
    assert _summary(out)["s000.png"]["reason"] == ""
    assert not _work_folders(out)


def test_redo_diagnoses_everything_again(tmp_path: Path, checkpoint: Path,
                                         slices: list[np.ndarray]) -> None:
    studies = _write_studies(tmp_path / "studies", 2, slices)
    out = tmp_path / "out"
    assert _run(studies, checkpoint, out) == 0
    first = {f: (f / "complete.json").stat().st_mtime_ns for f in _records(out)}
    assert _run(studies, checkpoint, out, "--redo") == 0
    assert [r["reason"] for r in _summary(out).values()] == ["", ""]
    folders = _one_folder_per_input(out, studies)
    assert set(folders.values()) == set(first)  # same study keys: the folders replaced
    assert all((f / "complete.json").stat().st_mtime_ns != t for f, t in first.items())
    assert not _work_folders(out)


def test_failed_study_is_reported_and_tried_again(tmp_path: Path, checkpoint: Path,
                                                  slices: list[np.ndarray]) -> None:
    good = _write_studies(tmp_path / "studies", 2, slices)
    corrupt = tmp_path / "studies" / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:200])
    out = tmp_path / "out"
    assert _run([tmp_path / "studies"], checkpoint, out) == 1
    rows = _summary(out)
    assert rows["corrupt.png"]["status"] == "failed"
    assert "truncated" in rows["corrupt.png"]["reason"]
    assert rows["corrupt.png"]["input"] == str(corrupt)
    assert all(rows[p.name]["status"] == "ok" for p in good)
    _one_folder_per_input(out, good)

    assert _run([tmp_path / "studies"], checkpoint, out) == 1  # tried again, fails again
    again = _summary(out)
    assert again["corrupt.png"]["reason"] == rows["corrupt.png"]["reason"]
    assert all(again[p.name]["reason"] == DONE_EARLIER for p in good)

    _write_studies(tmp_path / "fixed", 1, slices)[0].replace(corrupt)
    assert _run([tmp_path / "studies"], checkpoint, out) == 0
    assert _summary(out)["corrupt.png"]["status"] == "ok"
    _one_folder_per_input(out, [*good, corrupt])


def test_work_folders_of_a_killed_run_are_removed(tmp_path: Path, checkpoint: Path,
                                                  slices: list[np.ndarray]) -> None:
    studies = _write_studies(tmp_path / "studies", 1, slices)
    out = tmp_path / "out"
    for name in (".s000-0123abcd.partial-4242", ".s000-0123abcd.old-17", ".mine.partial-x",
                 ".cache"):
        (out / name).mkdir(parents=True)
        (out / name / "overlay.png").write_bytes(b"half")
    assert _run(studies, checkpoint, out) == 0
    assert sorted(_work_folders(out)) == [".cache", ".mine.partial-x"]
    _one_folder_per_input(out, studies)
