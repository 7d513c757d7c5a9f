"""Reference checkpoints in (``lumbardx import-weights``): an Ultralytics YOLOv5 v7.0
checkpoint read without its code, mapped onto the registry model, equivalent to the reference.

The reference models come from the ``yolov5`` 7.0.14 package in its own environment
(``.venv-reference``, made by scripts/install-test-deps.sh, or ``$LUMBARDX_REFERENCE_PYTHON``):
``tests/reference_yolov5.py`` builds them with random weights there, saves them in their own
format, and records their outputs; this process never imports ``yolov5``.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lumbardx.data.errors import InputError
from lumbardx.models.decode import decode_yolov5
from lumbardx.models.reference_weights import import_ultralytics, read_ultralytics

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = Path(os.environ.get("LUMBARDX_REFERENCE_PYTHON",
                                       ROOT / ".venv-reference" / "bin" / "python"))


#: The reference models the tests use: name -> classes.
MODELS = {"yolov5s": 3, "yolov5n": 80, "yolov3": 3}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with each of :data:`MODELS` as an Ultralytics checkpoint and its outputs."""
    if not REFERENCE_PYTHON.is_file():
        pytest.skip(f"no reference environment at {REFERENCE_PYTHON} (made by "
                    "scripts/install-test-deps.sh)")
    out = tmp_path_factory.mktemp("reference")
    subprocess.run([str(REFERENCE_PYTHON), str(ROOT / "tests" / "reference_yolov5.py"),
                    str(out), *(f"{k}:{v}" for k, v in MODELS.items())], check=True,
                   capture_output=True, timeout=600)
    return out


def _reference(folder: Path, name: str) -> tuple[Path, dict]:
    return folder / f"{name}.pt", torch.load(folder / f"{name}-outputs.pt", weights_only=True)


@pytest.mark.parametrize("name", ["yolov5s", "yolov5n"])
def test_yolov5_checkpoint_imports_to_the_same_network(references: Path, name: str) -> None:
    nc = MODELS[name]
    ckpt, ref = _reference(references, name)
    model, read, report = import_ultralytics(ckpt, name)
    assert report.complete and report.equivalent and report.num_classes == nc
    assert read.names == [f"class-{i}" for i in range(nc)] and read.activations == {"SiLU"}
    with torch.no_grad():
        raw = model.forward_raw(ref["x"])
        decoded = decode_yolov5(raw, model.postprocess.anchors, [8, 16, 32])
    assert len(raw) == len(ref["raw"]) == 3
    for ours, theirs in zip(raw, ref["raw"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-4
    assert decoded.shape == ref["decoded"].shape
    assert (decoded - ref["decoded"]).abs().max().item() <= 1e-3  # boxes in pixels
    # and the boxes after the registry's own post-process are those of the decoded maps
    with torch.no_grad():
        dets = model(ref["x"])
    assert len(dets) == 2 and all(d["boxes"].shape[-1] == 4 for d in dets)


def test_yolov3_checkpoint_maps_but_is_reported_not_equivalent(references: Path) -> None:
    ckpt, _ = _reference(references, "yolov3")
    _, read, report = import_ultralytics(ckpt, "yolov3")
    assert report.complete and not report.equivalent
    assert read.activations == {"SiLU"} and "LeakyReLU" in " ".join(report.notes)


def test_cli_writes_weights_that_train_from(references: Path, tmp_path: Path) -> None:
    from lumbardx.cli import _register, app
    from lumbardx.engine.checkpoint import build_detector, load_checkpoint, load_weights

    ckpt, _ = _reference(references, "yolov5n")
    _register()
    out = tmp_path / "imported.pt"
    result = CliRunner().invoke(app, ["import-weights", str(ckpt), "--model", "yolov5n",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mapped onto yolov5n (80 classes)" in " ".join(result.output.split())
    saved = load_checkpoint(out)
    assert saved["model_name"] == "yolov5n" and len(saved["class_names"]) == 80
    target = build_detector("yolov5n", 3, 384)  # a dataset's 3 classes: a new head
    report = load_weights(target, out)
    assert set(report.shape_mismatch) == {f"head.m.{i}.{p}" for i in range(3)
                                          for p in ("weight", "bias")}
    assert not report.missing or all(n.startswith("head.m.") for n in report.missing)
    wrong = CliRunner().invoke(app, ["import-weights", str(ckpt), "--model", "yolov5s",
                                     "--out", str(tmp_path / "no.pt")])
    assert wrong.exit_code == 1 and not (tmp_path / "no.pt").exists()
    assert "does not map onto yolov5s" in " ".join(wrong.output.split())


def test_import_needs_neither_the_yolov5_package_nor_its_code(references: Path) -> None:
    ckpt, _ = _reference(references, "yolov5s")
    code = ("import sys; sys.modules['yolov5'] = None; sys.modules['models'] = None\n"
            "from lumbardx.models.reference_weights import import_ultralytics\n"
            f"m, r, rep = import_ultralytics({str(ckpt)!r}, 'yolov5s')\n"
            "assert rep.complete and 'yolov5' not in [k for k, v in sys.modules.items() if v]\n"
            "print('ok', len(rep.mapped))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr


class _Payload:
    """Pickles as a call of ``os.system`` (what a hostile checkpoint could hold)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pt"
    torch.save({"model": _Payload(marker), "epoch": 1}, path, pickle_module=pickle)
    with pytest.raises(InputError, match="no detection model|not an Ultralytics"):
        read_ultralytics(path)
    assert not marker.exists()
    buf = io.BytesIO(b"not a checkpoint at all")
    (tmp_path / "junk.pt").write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="not a readable checkpoint"):
        read_ultralytics(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="not found"):
        read_ultralytics(tmp_path / "missing.pt")
