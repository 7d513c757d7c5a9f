"""``lumbardx train | evaluate | predict`` on tiny synthetic data (CPU, one epoch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner
from synth_data import two_per_patient

from dicom_factory import write_mr
from lumbardx.cli.train import evaluate, predict, train
from lumbardx.data.errors import InputError
from lumbardx.data.images import read_image
from lumbardx.engine import crossval as cv
from lumbardx.engine.evaluate import predict as engine_predict

NAMES = ["normal", "herniation", "spondylolisthesis"]
app = typer.Typer()
for command in (train, evaluate, predict):
    app.command(command.__name__)(command)


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 128-px images, two per patient."""
    return two_per_patient(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of yolov5n at 64 px, validated on fold 0 of 2."""
    out = tmp_path_factory.mktemp("runs") / "v5n"
    res = invoke("train", data, "--model", "yolov5n", "--epochs", 1, "--imgsz", 64, "--batch", 4,
                 "--workers", 0, "--device", "cpu", "--fold", 0, "-k", 2, "--out", out,
                 "--set", "optimizer=adamw", "--set", "lr0=0.002", "--set", "close_mosaic=1",
                 "--set", "augment.mixup=0.25")
    assert res.exit_code == 0, res.output
    assert "AP@0.5" in res.output and "mAP" in res.output
    return out


def test_train_writes_self_describing_checkpoints(run: Path) -> None:
    for name in ("last.pt", "best.pt", "results.csv", "run.json", "folds.csv",
                 "eval/metrics.json", "eval/pr_curves.png", "eval/confusion_matrix.png",
                 "eval/predictions.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "yolov5n" and ckpt["class_names"] == NAMES
    assert ckpt["recipe"]["image_size"] == 64
    r = ckpt["recipe"]  # --set settings reach the recipe (and the checkpoint records them)
    assert (r["optimizer"], r["lr0"], r["close_mosaic"]) == ("adamw", 0.002, 1)
    assert r["augment"]["mixup"] == 0.25 and r["augment"]["mosaic"] == 1.0
    info = json.loads((run / "run.json").read_text())
    assert info["fold"] == 0 and info["lumbardx_version"] and info["image_size"] == 64
    assert info["train_images"] + info["val_images"] == 8
    # the checkpoint alone rebuilds the detector, anchors included
    det = cv.load_detector(run / "best.pt")
    assert (det.model_name, det.class_names, det.image_size) == ("yolov5n", NAMES, 64)
    np.testing.assert_allclose(det.model.postprocess.anchors.numpy(),
                               np.asarray(info["autoanchor"]["anchors"]), rtol=1e-6)
    assert not det.model.training
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["num_images"] == info["val_images"]
    assert metrics["interpolation"] == "COCO 101-point"


def test_train_refuses_bad_input(run: Path, data: Path, tmp_path: Path) -> None:
    res = invoke("train", data, "--model", "yolov5n", "--epochs", 1, "--out", run)
    assert res.exit_code == 2 and "already holds a training run" in res.output
    res = invoke("train", data, "--model", "yolov9x", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "unknown model 'yolov9x'" in res.output
    assert "yolov5n" in res.output  # the choices are listed
    res = invoke("train", tmp_path / "nowhere", "--model", "yolov5n", "--out", tmp_path / "y")
    assert res.exit_code == 2 and "dataset folder not found" in res.output
    assert "nowhere" in res.output
    res = invoke("train", data, "--model", "yolov5n", "--fold", 0, "--val", data)
    assert res.exit_code == 2 and "not both" in res.output
    res = invoke("train", data, "--model", "yolov5n", "--out", tmp_path / "z", "--set", "lr0")
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.output
    res = invoke("train", data, "--model", "yolov5n", "--out", tmp_path / "z",
                 "--set", "optimiser=adamw")
    assert res.exit_code == 2 and "unknown recipe fields: optimiser" in res.output
    res = invoke("train", data, "--model", "yolov5n", "--out", tmp_path / "z",
                 "--set", "optimizer=lamb")
    assert res.exit_code == 2 and "unknown optimizer 'lamb'" in res.output
    assert not (tmp_path / "z").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_evaluate_on_the_held_out_fold(run: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    res = invoke("evaluate", run / "best.pt", data, "--fold", 0, "--folds-csv",
                 run / "folds.csv", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "mAP" in res.output and "ms per image" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["num_images"] == trained["num_images"]
    assert metrics["map50"] == pytest.approx(trained["map50"], abs=1e-9)
    assert metrics["ap50"] == pytest.approx(trained["ap50"], abs=1e-9)
    for name in ("pr_curves.png", "confusion_matrix.png", "confusion_matrix.npy"):
        assert (out / name).is_file()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    res = invoke("evaluate", bad, data)
    assert res.exit_code == 2 and "bad.pt" in res.output and "checkpoint" in res.output
    with pytest.raises(InputError, match="lacks model_name"):
        torch.save({"model": {}}, tmp_path / "bare.pt")
        cv.load_detector(tmp_path / "bare.pt")


def test_predict_coco_schema_and_unreadable_files(run: Path, data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    (folder / "series").mkdir(parents=True)
    for i in (0, 1):
        shutil.copy(next(data.rglob(f"case_0000{i}.png")), folder / f"case_0000{i}.png")
    write_mr(folder / "series" / "IM_0001.dcm",
             (np.arange(96 * 80, dtype=np.uint16).reshape(96, 80) % 900))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (folder / "notes.txt").write_text("labels and notes are not images")
    out = tmp_path / "preds.json"
    res = invoke("predict", run / "best.pt", folder, "--out", out, "--device", "cpu",
                 "--batch", 2)
    assert res.exit_code == 1, res.output  # one unreadable file
    assert "broken.png" in res.output and "notes.txt" not in res.output

    coco = json.loads(out.read_text())
    assert {"images", "categories", "annotations"} <= set(coco)
    assert coco["categories"] == [{"id": i + 1, "name": n, "supercategory": "spine"}
                                  for i, n in enumerate(NAMES)]
    images = {im["id"]: im for im in coco["images"]}
    assert sorted(im["file_name"] for im in images.values()) == [
        "case_00000.png", "case_00001.png", "series/IM_0001.dcm"]
    assert len(images) == 3
    dcm = next(im for im in images.values() if im["file_name"].endswith(".dcm"))
    assert (dcm["width"], dcm["height"]) == (80, 96)
    anns = coco["annotations"]
    assert anns, "the one-epoch model should give low-score detections"
    assert len({a["id"] for a in anns}) == len(anns)
    for a in anns:
        assert a["image_id"] in images and 1 <= a["category_id"] <= 3
        assert len(a["bbox"]) == 4 and a["bbox"][2] >= 0 and a["bbox"][3] >= 0
        assert 0.0 <= a["score"] <= 1.0

    # bbox is [x, y, w, h] of the model's xyxy boxes in original pixels, per image in order
    # (same images, order and batch as the command, so ties in score keep their order)
    det = cv.load_detector(run / "best.pt")
    order = sorted(images.values(), key=lambda im: im["id"])
    arrays = [read_image(folder / im["file_name"]).display for im in order]
    for im, img in zip(order, arrays):
        assert (im["width"], im["height"]) == (img.shape[1], img.shape[0])
    preds = engine_predict(det.model, arrays, det.image_size, "cpu", 2, det.pad_value)
    for im, p in zip(order, preds):
        got = np.asarray([a["bbox"] for a in anns if a["image_id"] == im["id"]],
                         np.float64).reshape(-1, 4)
        want = np.column_stack([p.boxes[:, :2], p.boxes[:, 2:] - p.boxes[:, :2]])
        np.testing.assert_allclose(got, want, atol=1e-3)
        scores = [a["score"] for a in anns if a["image_id"] == im["id"]]
        np.testing.assert_allclose(scores, p.scores, atol=1e-6)
        labels = [a["category_id"] - 1 for a in anns if a["image_id"] == im["id"]]
        assert labels == p.labels.tolist()

    res = invoke("predict", run / "best.pt", tmp_path / "missing", "--out", tmp_path / "p.json")
    assert res.exit_code == 2 and "image folder not found" in res.output


def test_train_from_weights_without_validation(run: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    res = invoke("train", data, "--model", "yolov5n", "--epochs", 1, "--imgsz", 64, "--batch", 4,
                 "--workers", 0, "--device", "cpu", "--weights", run / "best.pt", "--out", out)
    assert res.exit_code == 0, res.output
    assert "training without validation" in res.output
    assert "skipped 0 with another shape, 0 missing" in res.output  # every tensor loaded
    assert (out / "last.pt").is_file() and not (out / "best.pt").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["weights"] == str(run / "best.pt") and info["val_images"] == 0


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    return {f"{k}.{n}": t for k in ("model", "ema") if isinstance(ckpt.get(k), dict)
            for n, t in ckpt[k].items() if isinstance(t, torch.Tensor)}


def test_train_killed_mid_epoch_resumes_to_the_same_weights(data: Path, tmp_path: Path) -> None:
    """``lumbardx train`` killed (SIGKILL) during its second epoch leaves a readable ``last.pt``
    of the first, and ``--resume`` ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "lumbardx", "train", str(data), "--model", "yolov5n",
                "--epochs", "3", "--imgsz", "64", "--batch", "4", "--workers", "0",
                "--device", "cpu", "--out", str(out), "--no-autoanchor", "--seed", "3", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stdout + full.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(command(cut), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (cut / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch ends by writing last.pt; the second starts
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first = torch.load(cut / "last.pt", weights_only=True)  # readable: written atomically
    assert first["epoch"] in (0, 1)
    resumed = subprocess.run(command(cut, "--resume"), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = _model_tensors(tmp_path / "full" / "last.pt"), _model_tensors(cut / "last.pt")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_scoring_the_validation_set_less_often_leaves_the_weights_unchanged(
        data: Path, tmp_path: Path) -> None:
    """``eval_interval`` changes the log and best.pt, not the training: what lets a resumed
    cross-validation change it (``crossval.LOG_ONLY_SETTINGS``)."""
    runs = {}
    for interval in (1, 2):
        out = tmp_path / f"every{interval}"
        res = invoke("train", data, "--model", "yolov5n", "--epochs", 2, "--imgsz", 64,
                     "--batch", 4, "--workers", 0, "--device", "cpu", "--fold", 0, "-k", 2,
                     "--no-autoanchor", "--seed", 3, "--out", out,
                     "--set", f"eval_interval={interval}")
        assert res.exit_code == 0, res.output
        runs[interval] = _model_tensors(out / "last.pt")
        rows = (out / "results.csv").read_text().strip().splitlines()[1:]
        assert len(rows) == 2  # one row per epoch, scored or not
    assert runs[1].keys() == runs[2].keys() and runs[1]
    for k in runs[1]:
        assert torch.equal(runs[1][k], runs[2][k]), k
