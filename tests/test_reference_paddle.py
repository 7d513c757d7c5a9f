"""PaddleDetection checkpoints in (``lumbardx import-weights W.pdparams``): a ``.pdparams`` file
read without its code, mapped onto ``ppyolov2`` / ``yolov3``, equivalent to the reference.

The reference models come from PaddleDetection 2.6.0 (``paddledet``, PaddlePaddle 3.3.1) in its
own environment (``.venv-paddle``, made by scripts/install-test-deps.sh, or
``$LUMBARDX_PADDLE_PYTHON``): ``tests/reference_paddle.py`` builds them there from ppdet's own
classes and the published configs' model sections, with random weights, saves them with
``paddle.save`` and records their outputs; this process never imports paddle. The tests that
need it skip when that environment is absent; the others (hostile and malformed files, the
mapping's refusals) always run.

Tolerances: the reference is run in float64 with weights that are float32 values, then saved
in float32 (as checkpoints are) and run again in float32. The imported model in float64 gives
the float64 outputs within 1e-4 (measured: about 3e-8 for PP-YOLOv2, 4e-10 for YOLOv3). In
float32 both frameworks are off their own float64 result by float32 rounding, which a random
ResNet-50 / Darknet-53 amplifies to about 1e-2 / 1e-4 on outputs of size 5 to 10; the float32
results are checked to differ by no more than that.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from lumbardx.data.errors import InputError
from lumbardx.models.dcn import DeformableConvV2
from lumbardx.models.reference_paddle import (
    NAME_TABLE_KEY,
    import_paddle,
    paddle_names,
    read_pdparams,
)
from lumbardx.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
PADDLE_PYTHON = Path(os.environ.get("LUMBARDX_PADDLE_PYTHON",
                                    ROOT / ".venv-paddle" / "bin" / "python"))

#: What the reference script writes, one process per tuple: model:classes:pickle protocol, the
#: state dict names of PP-YOLOv2 R101 (not run), and the deformable convolution check.
SPECS = (("ppyolov2:80:4", "names:ppyolov2-r101:80"), ("yolov3:3:2", "dcn"))
#: Classes of each reference model (PP-YOLOv2 with COCO's 80: a COCO checkpoint maps whole).
CLASSES = {"ppyolov2": 80, "yolov3": 3}

#: The reference side, run by the PaddleDetection environment's Python.
REFERENCE_SCRIPT = ROOT / "tests" / "reference_paddle.py"


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the reference ``.pdparams`` files and outputs of :data:`SPECS`."""
    if not PADDLE_PYTHON.is_file():
        pytest.skip(f"no PaddleDetection environment at {PADDLE_PYTHON} (made by "
                    "scripts/install-test-deps.sh)")
    out = tmp_path_factory.mktemp("paddle")
    for specs in SPECS:
        done = subprocess.run([str(PADDLE_PYTHON), str(REFERENCE_SCRIPT), str(out), *specs],
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode:
            pytest.fail(f"reference script failed on {specs}:\n{done.stderr[-3000:]}")
    return out


def _paddle_layout(raw: Tensor, iou_aware: bool) -> Tensor:
    """Our ``[B, A, H, W, K]`` as the head convolution's ``[B, C, H, W]`` (PP-YOLOv2: the A
    IoU logits first, then A groups of x, y, w, h, obj, classes)."""
    b, a, h, w, k = raw.shape
    if not iou_aware:
        return raw.permute(0, 1, 4, 2, 3).reshape(b, a * k, h, w)
    rest = raw[..., :-1].permute(0, 1, 4, 2, 3).reshape(b, a * (k - 1), h, w)
    return torch.cat([raw[..., -1], rest], dim=1)


def _max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("name", ["ppyolov2", "yolov3"])
def test_pdparams_import_computes_the_reference_network(references: Path, name: str) -> None:
    model, read, report = import_paddle(references / f"{name}.pdparams", name)
    assert report.complete and report.equivalent and report.num_classes == CLASSES[name]
    assert len(report.mapped) == len(read.state) == (532 if name == "ppyolov2" else 366)
    assert read.param_names and all(t.dtype == torch.float32 for t in read.state.values())
    assert "paddle" not in sys.modules and "ppdet" not in sys.modules  # none of their code
    ref = {k: torch.from_numpy(v) for k, v in np.load(references / f"{name}-outputs.npz").items()}
    iou_aware = name == "ppyolov2"
    with torch.no_grad():
        raw32 = model.forward_raw(ref["x"])
        raw64 = model.double().forward_raw(ref["x"].double())
    for level in range(3):  # ours stride 8 first, Paddle's stride 32 first
        theirs64, theirs32 = ref[f"raw64{2 - level}"], ref[f"raw32{2 - level}"]
        ours64 = _paddle_layout(raw64[level], iou_aware)
        ours32 = _paddle_layout(raw32[level], iou_aware)
        assert _max_diff(ours64, theirs64) <= 1e-4
        rounding = _max_diff(ours32, ours64) + _max_diff(theirs32, theirs64)
        assert _max_diff(ours32, theirs32) <= rounding + 1e-4
    # YOLOBox before NMS: same boxes (Paddle clips to W - 1) and scores, for the same threshold
    post = model.postprocess
    post.conf_thresh = 0.01 if iou_aware else 0.005  # the configs' YOLOBox conf_thresh
    boxes, scores = post.decode(raw64, (320, 320))  # [1, N, 4], [1, N, nc], stride 8 first
    sizes = [3 * 10 * 10, 3 * 20 * 20, 3 * 40 * 40]  # Paddle's levels, stride 32 first
    their_boxes = torch.cat(ref["boxes"].float().split(sizes, dim=1)[::-1], dim=1)
    their_scores = torch.cat(ref["scores"].float().transpose(1, 2).split(sizes, dim=1)[::-1], 1)
    kept = their_scores.amax(-1) > 0  # Paddle leaves the boxes under the threshold at zero
    assert kept.any()
    assert _max_diff(boxes.clamp(max=319.0)[kept], their_boxes[kept]) <= 1e-3  # pixels
    assert _max_diff(scores, their_scores) <= 1e-5


def test_deformable_conv_matches_paddle(references: Path) -> None:
    """Our DCNv2 layer against ``paddle.vision.ops.deform_conv2d``, offsets of about 2 pixels
    (samples falling outside the map), strides 1 and 2."""

    class Given(nn.Module):  # stands in for the offset/mask convolution
        def __init__(self, offset_and_logits: Tensor) -> None:
            super().__init__()
            self.value = offset_and_logits

        def forward(self, x: Tensor) -> Tensor:
            return self.value

    ref = {k: torch.from_numpy(v) for k, v in np.load(references / "dcn.npz").items()}
    for stride in (1, 2):
        layer = DeformableConvV2(8, 16, 3, stride)
        layer.weight.data = ref[f"weight{stride}"].double()
        mask = ref[f"mask{stride}"].double()
        layer.conv_offset = Given(torch.cat([ref[f"offset{stride}"].double(),
                                             torch.log(mask / (1 - mask))], dim=1))
        with torch.no_grad():
            y = layer(ref[f"x{stride}"].double())
        assert _max_diff(y, ref[f"y{stride}"]) <= 1e-5


def test_the_r101_table_names_every_paddle_tensor(references: Path) -> None:
    theirs = {k: tuple(s) for k, s in
              json.loads((references / "ppyolov2-r101-names.json").read_text())}
    model = build_model("ppyolov2-r101", 80)
    table = paddle_names("ppyolov2-r101", model)
    own = model.state_dict()
    assert sorted(table.values()) == sorted(theirs)
    assert all(tuple(own[ours].shape) == theirs[t] for ours, t in table.items())
    assert set(table) == {k for k in own if not k.endswith("num_batches_tracked")}


def test_cli_writes_weights_that_train_from(references: Path, tmp_path: Path) -> None:
    from lumbardx.cli import _register, app
    from lumbardx.engine.checkpoint import build_detector, load_checkpoint, load_weights

    _register()
    out = tmp_path / "imported.pt"
    result = CliRunner().invoke(app, ["import-weights", str(references / "ppyolov2.pdparams"),
                                      "--model", "ppyolov2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "532 tensors mapped onto ppyolov2 (80 classes)" in " ".join(result.output.split())
    saved = load_checkpoint(out)
    assert saved["model_name"] == "ppyolov2" and len(saved["class_names"]) == 80
    target = build_detector("ppyolov2", 3, 320)  # a dataset's 3 classes: a new head
    report = load_weights(target, out)
    head = {f"head.yolo_outputs.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert set(report.shape_mismatch) == head
    assert not report.missing or set(report.missing) <= head
    wrong = CliRunner().invoke(app, ["import-weights", str(references / "ppyolov2.pdparams"),
                                     "--model", "yolov3", "--out", str(tmp_path / "no.pt")])
    assert wrong.exit_code == 1 and not (tmp_path / "no.pt").exists()
    assert "does not map onto yolov3" in " ".join(wrong.output.split())


# ------------------------------------------------------------ without the reference environment
class _Payload:
    """Pickles as a call of ``os.system`` (what a hostile checkpoint could hold)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _Eval:
    """Pickles as ``eval(...)``: how paddle.save writes a raw DenseTensor, never a state dict."""

    def __reduce__(self) -> tuple:
        return eval, ("1 + 1",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pdparams_that_would_run_code_runs_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pdparams"
    path.write_bytes(pickle.dumps({"backbone.conv0.conv.weight": np.zeros(3, "float32"),
                                   "x": _Payload(marker)}, protocol=protocol))
    with pytest.raises(InputError, match=r"hostile.pdparams: .*refused.*(posix|os)\.system"):
        read_pdparams(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"w": _Eval()}, protocol=protocol))
    with pytest.raises(InputError, match=r"refused.*builtins\.eval"):
        read_pdparams(path)


def test_malformed_pdparams_are_refused_by_name(tmp_path: Path) -> None:
    cases = {
        "junk": (b"not a checkpoint at all", "not a readable .pdparams file"),
        "list": (pickle.dumps([np.zeros(2)]), "holds a list, not a dict"),
        "text": (pickle.dumps({"a.weight": "text"}), "'a.weight' is a str, not a numeric"),
        "objects": (pickle.dumps({"a.weight": np.array([1, "a"], dtype=object)}),
                    "'a.weight' is a object, not a numeric"),
        "empty": (pickle.dumps({NAME_TABLE_KEY: {}}), "holds no parameters"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(data)
        with pytest.raises(InputError, match=str(path.name)) as err:
            read_pdparams(path)
        assert message in str(err.value), (name, str(err.value))
    with pytest.raises(InputError, match="not found"):
        read_pdparams(tmp_path / "missing.pdparams")
    with pytest.raises(InputError, match="map onto ppyolov2, ppyolov2-r101, yolov3"):
        import_paddle(tmp_path / "missing.pdparams", "yolov5s")


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_the_paddle_save_format_reads(tmp_path: Path, protocol: int) -> None:
    """What ``paddle.save(state_dict)`` writes (``paddle/framework/io.py``): names -> arrays,
    the name table, a lone Tensor as ``(name, array)``, arrays over 1 GiB split in slices."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype("float16")
    big = rng.standard_normal(6).astype("float32")
    raw = {"conv.weight": w, "bn._mean": np.arange(4, dtype="float64"),
           "lone": ("conv2d_0.b_0", big[:2]),
           "big@@.0": big[:4], "big@@.1": big[4:],
           "UnpackBigParamInfor@@": {"big": {"OriginShape": (2, 3),
                                             "slices": ["big@@.0", "big@@.1"]}},
           NAME_TABLE_KEY: {"conv.weight": "conv2d_0.w_0"}}
    path = tmp_path / "small.pdparams"
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    read = read_pdparams(path)
    assert list(read.state) == ["conv.weight", "bn._mean", "lone", "big"]
    assert all(t.dtype == torch.float32 for t in read.state.values())
    assert torch.equal(read.state["conv.weight"], torch.from_numpy(w.astype("float32")))
    assert torch.equal(read.state["big"], torch.from_numpy(big.reshape(2, 3)))
    assert read.param_names == {"conv.weight": "conv2d_0.w_0"}


def test_what_does_not_map_is_named_and_refused(tmp_path: Path) -> None:
    """A YOLOv3 state dict in Paddle's names (written here, no paddle needed) with one tensor
    missing, one extra and one of another shape: the import names all three and refuses."""
    model = build_model("yolov3", 3)
    own = model.state_dict()
    table = paddle_names("yolov3", model)
    state = {theirs: own[ours].numpy() for ours, theirs in table.items()}
    assert len(state) == 366 and "yolo_head.yolo_output.0.weight" in state
    del state["neck.yolo_block.1.tip.conv.weight"]
    state["neck.coord_conv.weight"] = np.zeros((3, 3), "float32")
    state["backbone.conv0.batch_norm._mean"] = np.zeros(16, "float32")
    path = tmp_path / "broken.pdparams"
    path.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(InputError, match="broken.pdparams: does not map onto yolov3") as err:
        import_paddle(path, "yolov3")
    message = " ".join(str(err.value).split())
    assert "1 not mapped (reference): neck.coord_conv.weight" in message
    assert ("1 not mapped (lumbardx): neck.block4.tip.conv.weight "
            "(no neck.yolo_block.1.tip.conv.weight)") in message
    assert ("backbone.conv0.batch_norm._mean (16,) vs backbone.stem.bn.running_mean (32,)"
            in message)
