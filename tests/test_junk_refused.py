"""An image in which no disc is found is refused as "not a sagittal lumbar spine MRI" -- by the
Python API, by ``lumbardx diagnose`` (the batch goes on, the exit code says it) and by the web
app (the study is marked failed with the reason) -- never reported as a study without
findings. The rule's measurement on real slices and junk: ``bench/junk_images.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import random_checkpoint
from PIL import Image

from lumbardx.data.errors import InputError
from lumbardx.diagnosis import NOT_A_SPINE, Diagnoser


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lumbardx.synth import generate_case

    root = tmp_path_factory.mktemp("junk")
    rng = np.random.default_rng(0)
    arrays = {"black": np.zeros((256, 256), np.uint8),
              "noise": rng.integers(0, 256, (256, 256), dtype=np.uint8),
              "spine": generate_case(np.random.default_rng(3)).image}
    out = {}
    for name, a in arrays.items():
        out[name] = root / f"{name}.png"
        Image.fromarray(a).save(out[name])
    return out


def _blind_detector(tmp_path: Path) -> Path:
    """A random detector whose thresholds no box reaches: it finds nothing anywhere."""
    path = random_checkpoint(tmp_path / "blind.pt")
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "thresholds": {n: 1.0 for n in raw["class_names"]}}, path)
    return path


def test_api_refuses_an_image_without_discs(tmp_path: Path, images: dict[str, Path]) -> None:
    dx = Diagnoser(_blind_detector(tmp_path), backend="torch", segments=False)
    with pytest.raises(InputError, match="not a sagittal lumbar spine MRI") as err:
        dx.diagnose(images["spine"])  # a spine, but this detector finds no disc
    assert err.value.path == images["spine"] and err.value.problem == NOT_A_SPINE
    lenient = Diagnoser(_blind_detector(tmp_path), backend="torch", segments=False,
                        refuse_without_discs=False)
    assert lenient.diagnose(images["spine"]).findings.discs == []


def test_uniform_and_noise_images_are_refused_before_detection(images: dict[str, Path]) -> None:
    from lumbardx.stages.plausibility import MAX_ROUGHNESS, image_problem, roughness

    black = np.asarray(Image.open(images["black"]))
    noise = np.asarray(Image.open(images["noise"]))
    spine = np.asarray(Image.open(images["spine"]))
    assert "uniform" in image_problem(black)
    assert "pixel noise" in image_problem(noise) and roughness(noise) > 1.0
    assert image_problem(spine) is None and roughness(spine) < MAX_ROUGHNESS


def _shipped() -> None:
    from lumbardx.models.pretrained import NoShippedWeightsError, shipped_weights

    try:
        shipped_weights("default")
    except NoShippedWeightsError as exc:
        pytest.skip(f"shipped weights not installed: {exc}")


def test_cli_batch_reports_junk_and_goes_on(tmp_path: Path, images: dict[str, Path]) -> None:
    import typer
    from typer.testing import CliRunner

    from lumbardx.cli.diagnose import diagnose as diagnose_command

    _shipped()
    app = typer.Typer()
    app.command()(diagnose_command)
    paths = [images["black"], images["noise"], images["spine"]]
    r = CliRunner().invoke(app, [*map(str, paths), "--out", str(tmp_path / "o"), "--no-pdf"],
                           terminal_width=200)
    assert r.exit_code == 1, r.output  # something failed
    text = " ".join(r.output.split())
    assert "black.png: not a sagittal lumbar spine MRI: the image is uniform" in text
    assert "noise.png: not a sagittal lumbar spine MRI: the image is pixel noise" in text
    summary = (tmp_path / "o" / "summary.csv").read_text()
    assert summary.count("not a sagittal lumbar spine MRI") == 2
    done = list((tmp_path / "o").glob("spine-*/findings.json"))
    assert len(done) == 1 and json.loads(done[0].read_text())["findings"]
    assert not list((tmp_path / "o").glob("black*")) and not list((tmp_path / "o").glob("noise*"))


def test_web_app_marks_junk_failed_with_the_reason(tmp_path: Path,
                                                   images: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from lumbardx.app.server import create_app
    from lumbardx.app.settings import AppSettings

    _shipped()
    static = tmp_path / "static"
    static.mkdir()
    for name in ("login.html", "login.js", "login.css", "index.html", "app.js"):
        (static / name).write_text(f"/* {name} */\n", encoding="utf-8")
    settings = AppSettings(data_dir=tmp_path / "data", static_dir=static,
                           analyse_in_background=False)
    app = create_app(settings, diagnoser=Diagnoser(backend="torch"))
    app.state.ctx.users.add("alice", "correct horse battery", "clinician")
    client = TestClient(app)
    token = client.get("/api/auth/login-token").json()["csrf_token"]
    r = client.post("/api/auth/login", json={"username": "alice",
                                             "password": "correct horse battery"},
                    headers={"X-CSRF-Token": token})
    csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
    r = client.post("/api/studies", headers=csrf, files=[
        ("files", ("black.png", images["black"].read_bytes(), "image/png"))])
    assert r.status_code == 201, r.text
    row = r.json()["study"]
    assert row["status"] == "failed", row
    key = row["study_key"]
    detail = client.get(f"/api/studies/{key}").json()
    assert "not a sagittal lumbar spine MRI" in json.dumps(detail)
    assert client.get(f"/api/studies/{key}/findings.json").status_code == 404
    corrections = settings.data_dir / "corrections"  # training data: nothing reached it
    assert not corrections.exists() or not any(corrections.iterdir())
