"""Hostile files in a batch and in the web app: each gets one line naming the file and the
problem, and everything after it is still diagnosed -- a decoder that aborts on a garbage JPEG
2000 fragment takes neither the batch nor the server down.

Runs the real ``lumbardx diagnose`` in a subprocess (a native crash there would end it with a
signal, which the test would see) over a batch of files, each a study: a good synthetic slice,
then the garbage JPEG 2000 file, an empty ``.dcm``, PNG bytes in a ``.dcm``, a truncated
DICOM, a header claiming 65535 x 65535 pixels, and another good slice.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import make_dataset, write_dataset
from PIL import Image

from test_hostile_dicom import garbage_jpeg2000

GOOD_SEEDS = (3, 5)


def _good_slice(path: Path, seed: int) -> Path:
    from lumbardx.synth import SynthConfig, generate_case

    case = generate_case(np.random.default_rng(seed), SynthConfig(image_sizes=(256,)))
    Image.fromarray(case.image).save(path)
    return path


def _hostile_folder(root: Path) -> dict[str, Path]:
    """One study per file (the names sort in this order)."""
    root.mkdir()
    files = {"a_good": _good_slice(root / "a_good.png", GOOD_SEEDS[0])}
    files["b_jpeg2000"] = garbage_jpeg2000(root / "b_jpeg2000.dcm")
    (root / "c_empty.dcm").write_bytes(b"")
    files["c_empty"] = root / "c_empty.dcm"
    png = _good_slice(root / "tmp.png", 9)
    (root / "d_png_named.dcm").write_bytes(png.read_bytes())
    png.unlink()
    files["d_png_named"] = root / "d_png_named.dcm"
    whole = write_dataset(make_dataset(np.zeros((64, 64), np.uint16)), root / "tmp.dcm")
    (root / "e_truncated.dcm").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    files["e_truncated"] = root / "e_truncated.dcm"
    huge = make_dataset(np.zeros((8, 8), np.uint16))
    huge.Rows = huge.Columns = 65535
    files["f_huge_claim"] = write_dataset(huge, root / "f_huge_claim.dcm")
    files["g_good"] = _good_slice(root / "g_good.png", GOOD_SEEDS[1])
    return files


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from checkpoints import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "best.pt",
                           tag="hostile-test", training_data="none (random test weights)")


def test_diagnose_batch_survives_hostile_files(tmp_path: Path, weights: Path) -> None:
    files = _hostile_folder(tmp_path / "in")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lumbardx", "diagnose", *map(str, files.values()), "--out", str(out),
         "--weights", str(weights), "--no-segments", "--no-pdf"],
        capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # some failed; not a signal (negative) or a crash
    assert "Traceback" not in output
    with (out / "summary.csv").open(newline="") as fh:
        rows = {Path(r["input"]).stem: r for r in csv.DictReader(fh)}
    assert set(rows) == set(files)
    for name in ("a_good", "g_good"):  # before and after the aborting decoder
        assert rows[name]["status"] != "failed" or "sagittal" in rows[name]["reason"], rows[name]
    assert rows["g_good"]["status"] == "ok", rows["g_good"]
    expected = {"b_jpeg2000": "decoder crashed",
                "c_empty": "", "e_truncated": "", "f_huge_claim": "65,535"}
    for name, words in expected.items():
        row = rows[name]
        assert row["status"] == "failed", row
        assert row["reason"] and "\n" not in row["reason"] and words in row["reason"], row
    # PNG bytes named .dcm are read by their content (with a warning), or refused clearly
    assert rows["d_png_named"]["status"] == "ok" or rows["d_png_named"]["reason"]


def test_app_upload_of_a_crashing_file_is_quarantined_and_the_server_lives_on(
        tmp_path: Path, weights: Path) -> None:
    from fastapi.testclient import TestClient

    from lumbardx.app import AppSettings, create_app
    from test_app_security import PASSWORD, login

    app = create_app(AppSettings(data_dir=tmp_path / "data", analyse_in_background=False,
                                 weights=weights, backend="torch"))
    app.state.ctx.users.add("alice", PASSWORD)
    client = TestClient(app)
    csrf = {"X-CSRF-Token": login(client, "alice").json()["csrf_token"]}
    bad = garbage_jpeg2000(tmp_path / "bad.dcm")
    r = client.post("/api/studies", headers=csrf,
                    files=[("files", ("bad.dcm", bad.read_bytes(), "application/dicom"))])
    assert r.status_code == 422, r.text
    assert "decoder crashed" in r.json()["detail"] and "\n" not in r.json()["detail"]
    good = _good_slice(tmp_path / "good.png", GOOD_SEEDS[1])
    r = client.post("/api/studies", headers=csrf,
                    files=[("files", ("good.png", good.read_bytes(), "image/png"))])
    assert r.status_code == 201, r.text
