"""``lumbardx export``: a training checkpoint -> ONNX file that ONNX Runtime runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from lumbardx.cli.export import export
from lumbardx.engine.checkpoint import rng_state, save_checkpoint
from lumbardx.engine.ema import ModelEMA
from lumbardx.engine.recipes import recipe_for
from lumbardx.models.export import DecodedDetector
from lumbardx.models.registry import build_model
from lumbardx.models.runtime import OnnxBackend

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

NAMES = ["normal", "disc herniation", "spondylolisthesis"]
SIZE = 64  # training size recorded in the checkpoint's recipe


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(export)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), [*args])


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("yolov5n", len(NAMES), image_size=SIZE).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A ``lumbardx train``-style checkpoint of a random yolov5n whose EMA weights (seed 0)
    differ from its trained weights (seed 1); returns (path, EMA state, trained state)."""
    ema = ModelEMA(_model(0))
    trained = _model(1)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)
    state = {
        "model": trained.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 0,
        "step": 1,
        "best_fitness": 0.0,
        "rng": rng_state(),
        "recipe": recipe_for("yolov5n", image_size=SIZE).to_dict(),
        "model_name": "yolov5n",
        "num_classes": len(NAMES),
        "class_names": NAMES,
        "seed": 0,
    }
    path = save_checkpoint(state, tmp_path_factory.mktemp("run") / "best.pt")
    return path, ema.state_dict()["model"], trained.state_dict()


def _decoded(state: dict, images: torch.Tensor, size: int) -> torch.Tensor:
    model = _model(2)
    model.load_state_dict(state)
    with torch.no_grad():
        return DecodedDetector(model, (size, size))(images)


def test_export_default_path_uses_checkpoint_names_size_and_ema(checkpoint) -> None:
    path, ema_state, trained_state = checkpoint
    result = _run(str(path))
    assert result.exit_code == 0, result.output
    onnx_path = path.with_suffix(".onnx")
    assert onnx_path.is_file() and str(onnx_path) in result.output
    backend = OnnxBackend(onnx_path, threads=1)
    assert backend.class_names == NAMES
    assert backend.name == "yolov5n"
    assert backend.image_size == (SIZE, SIZE)
    # the graph carries the EMA weights, not the last trained ones
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    got = backend.decoded(images)
    torch.testing.assert_close(got, _decoded(ema_state, images, SIZE), atol=1e-3, rtol=1e-4)
    assert not torch.allclose(got, _decoded(trained_state, images, SIZE), atol=1e-2)
    dets = backend(images)  # NMS with the checkpoint model's settings: boxes clipped
    assert len(dets) == 2
    assert all(bool(((d["boxes"] >= 0) & (d["boxes"] <= SIZE)).all()) for d in dets)


def test_export_out_size_and_opset_options(checkpoint, tmp_path: Path) -> None:
    path, _, _ = checkpoint
    target = tmp_path / "deploy" / "spine.onnx"
    result = _run(str(path), "--out", str(target), "--imgsz", "96", "--opset", "18")
    assert result.exit_code == 0, result.output
    backend = OnnxBackend(target)
    assert backend.image_size == (96, 96) and backend.class_names == NAMES
    proto = onnx.load(str(target))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_export_bad_inputs_exit_2_and_write_nothing(checkpoint, tmp_path: Path) -> None:
    path, _, _ = checkpoint
    missing = tmp_path / "missing.pt"
    result = _run(str(missing))
    assert result.exit_code == 2 and "missing.pt" in result.output
    assert "not found" in result.output

    out = tmp_path / "odd.onnx"
    result = _run(str(path), "--out", str(out), "--imgsz", "100")
    assert result.exit_code == 2 and "multiple of 32" in result.output
    assert not out.exists()

    result = _run(str(path), "--out", str(out), "--opset", "11")
    assert result.exit_code == 2 and "opset 11" in result.output
    assert not out.exists()

    bare = save_checkpoint({"model": _model(0).state_dict()}, tmp_path / "bare.pt")
    result = _run(str(bare))
    assert result.exit_code == 2 and "model_name" in result.output
    assert not bare.with_suffix(".onnx").exists()

    result = _run(str(path), "--out", str(path))
    assert result.exit_code == 2 and "overwrite the checkpoint" in result.output
    assert path.read_bytes()[:2] == b"PK"  # still the torch (zip) checkpoint


def test_export_records_that_a_model_reads_t1_t2_pairs(tmp_path: Path, checkpoint) -> None:
    from lumbardx.models.pretrained import load_detector

    recipe = recipe_for("yolov5n", image_size=SIZE).to_dict()
    recipe["sequence_pairs"] = True
    path = save_checkpoint({"model": _model(0).state_dict(), "recipe": recipe,
                            "model_name": "yolov5n", "class_names": NAMES},
                           tmp_path / "pairs.pt")
    res = _run(str(path), "--out", str(tmp_path / "pairs.onnx"))
    assert res.exit_code == 0, res.output
    assert OnnxBackend(tmp_path / "pairs.onnx").inputs == "T1+T2"
    assert load_detector(tmp_path / "pairs.onnx").info.inputs == "T1+T2"
    single = _run(str(checkpoint[0]), "--out", str(tmp_path / "single.onnx"))
    assert single.exit_code == 0, single.output
    assert load_detector(tmp_path / "single.onnx").info.inputs == "slice"
