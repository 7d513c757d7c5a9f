"""ONNX export (network + decoding) and the torch / ONNX Runtime inference backends."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_convert, box_iou

import lumbardx
from lumbardx.data.errors import InputError
from lumbardx.models.dcn import DeformableConvV2
from lumbardx.models.decode import non_max_suppression
from lumbardx.models.detector import Detector
from lumbardx.models.export import (
    DecodedDetector,
    ExportError,
    OptionalDependencyError,
    export_onnx,
    postprocess_settings,
    unsupported_reason,
)
from lumbardx.models.postprocess_yolov3 import YOLOv3PostProcess
from lumbardx.models.registry import build_model
from lumbardx.models.runtime import OnnxBackend, TorchBackend, choose_backend, select_detections

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 256
NAMES = ["normal", "herniation", "spondylolisthesis"]
# Post-process settings that keep every detection (no max_det cut among near-equal scores)
BUILD_KWARGS = {
    "yolov5n": {"conf_thresh": 0.005, "max_det": 3000},
    "ppyolov2-r18": {"max_det": 3000},
}


def calibrate_batchnorm(model: Detector, images: torch.Tensor) -> Detector:
    """Set BatchNorm statistics from ``images`` so a random-weight model gives spread-out scores
    (freshly initialised statistics make nearly all scores equal, and ties order arbitrarily)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model.forward_raw(images)
    return model.eval()


@pytest.fixture(scope="module", params=["yolov5n", "ppyolov2-r18"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model, onnx path, images [2, 3, 256, 256]) for each CPU model, exported once."""
    torch.manual_seed(0)
    name = request.param
    images = torch.rand(2, 3, SIZE, SIZE)
    model = calibrate_batchnorm(build_model(name, 3, **BUILD_KWARGS[name]), images)
    path = export_onnx(model, tmp_path_factory.mktemp(name) / f"{name}.onnx", SIZE, NAMES)
    return model, path, images


def assert_decoded_close(got: torch.Tensor, expected: torch.Tensor, size: int) -> None:
    """ONNX Runtime vs PyTorch decoded outputs: atol 1e-4 on objectness / class probabilities
    and on boxes in normalised image units (boxes / size; 1e-4 of 256 px = 0.026 px). Boxes of
    several hundred pixels from a deep float32 network differ by ~1e-2 px between the two."""
    torch.testing.assert_close(got[..., 4:], expected[..., 4:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[..., :4] / size, expected[..., :4] / size, atol=1e-4, rtol=1e-4)


def assert_same_detections(a: dict, b: dict, box_atol: float = 2e-2, score_atol: float = 1e-4):
    """Same detections up to the order of (near-)equal scores: same count, same sorted scores,
    and a one-to-one match of (label, score, box)."""
    assert len(a["boxes"]) == len(b["boxes"]) == len(a["scores"]) == len(b["labels"])
    torch.testing.assert_close(
        a["scores"].sort().values, b["scores"].sort().values, atol=score_atol, rtol=0
    )
    free = torch.ones(len(b["boxes"]), dtype=torch.bool)
    for box, score, label in zip(a["boxes"], a["scores"], a["labels"]):
        ok = (
            free
            & (b["labels"] == label)
            & ((b["scores"] - score).abs() <= score_atol)
            & ((b["boxes"] - box).abs().amax(dim=1) <= box_atol)
        )
        assert ok.any(), f"no match for box {box.tolist()} label {int(label)} score {float(score)}"
        free[int(ok.nonzero()[0])] = False


# One image's decoded candidates (xyxy px) and [N, 3] class scores, for YOLOv3PostProcess.select
SELECT_BOXES = torch.tensor(
    [
        [40.0, 40.0, 60.0, 60.0],  # A: class 0 (0.9) and class 2 (0.5): two candidates
        [41.0, 40.0, 61.0, 60.0],  # B: near-duplicate of A in class 0 (0.8)
        [40.0, 40.0, 60.0, 60.0],  # C: same place as A, class 1 (0.7)
        [0.0, 0.0, 10.0, 10.0],  # D: far away, class 0 (0.6)
        [70.0, 70.0, 90.0, 90.0],  # E: every score at or below conf_thresh: no candidate
    ]
)
SELECT_SCORES = torch.tensor(
    [
        [0.9, 0.0, 0.5],
        [0.8, 0.0, 0.0],
        [0.0, 0.7, 0.0],
        [0.6, 0.0, 0.0],
        [0.01, 0.005, 0.0],
    ]
)


def test_yolov3_select_hard_nms() -> None:
    post = YOLOv3PostProcess(3, None, conf_thresh=0.01, nms="hard", nms_iou=0.45)
    out = post.select(SELECT_BOXES, SELECT_SCORES)
    assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    # B suppressed by A (same class, IoU 0.9); C and A's class-2 twin survive (other classes)
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7, 0.6, 0.5]))
    assert out["labels"].tolist() == [0, 1, 0, 2]
    torch.testing.assert_close(out["boxes"], SELECT_BOXES[[0, 2, 3, 0]])
    capped = YOLOv3PostProcess(3, None, nms="hard", max_det=2).select(SELECT_BOXES, SELECT_SCORES)
    assert capped["scores"].tolist() == pytest.approx([0.9, 0.7])
    loose = YOLOv3PostProcess(3, None, nms="hard", nms_iou=0.95)
    assert len(loose.select(SELECT_BOXES, SELECT_SCORES)["boxes"]) == 5  # B kept too
    none = post.select(SELECT_BOXES[:0], SELECT_SCORES[:0])
    assert none["boxes"].shape == (0, 4) and none["labels"].shape == (0,)
    with pytest.raises(ValueError, match=r"scores \[N, 3\]"):
        post.select(SELECT_BOXES, SELECT_SCORES[:, :2])


def test_yolov3_select_matrix_nms_decays_duplicates() -> None:
    post = YOLOv3PostProcess(3, None, conf_thresh=0.01, nms="matrix", matrix_kernel="linear")
    out = post.select(SELECT_BOXES, SELECT_SCORES)
    iou_ab = float(box_iou(SELECT_BOXES[:1], SELECT_BOXES[1:2]))
    # linear kernel: B's score decays by (1 - IoU(A, B)); nothing else overlaps within a class
    expected = sorted([0.9, 0.7, 0.6, 0.5, 0.8 * (1 - iou_ab)], reverse=True)
    torch.testing.assert_close(out["scores"], torch.tensor(expected))
    assert out["labels"].tolist() == [0, 1, 0, 2, 0]


def test_yolov3_select_from_settings_matches_model_postprocess() -> None:
    """The ONNX path rebuilds the selection from the stored settings: same output as the
    model's own post-process, and such a settings-only post-process refuses to decode."""
    torch.manual_seed(0)
    model = build_model("ppyolov2-r18", 3, max_det=7)
    settings = json.loads(json.dumps(postprocess_settings(model.postprocess)))  # as stored
    rebuilt = YOLOv3PostProcess.from_settings(settings)
    assert rebuilt.nms == "matrix" and rebuilt.max_det == 7
    a = model.postprocess.select(SELECT_BOXES, SELECT_SCORES)
    b = rebuilt.select(SELECT_BOXES, SELECT_SCORES)
    assert len(a["boxes"]) == 5
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(a[key], b[key])
    with pytest.raises(ValueError, match="no anchors"):
        rebuilt.decode([torch.zeros(1, 3, 2, 2, 8)] * 3, (64, 64))
    with pytest.raises(ValueError, match="kind"):
        YOLOv3PostProcess.from_settings(postprocess_settings(build_model("yolov5n", 3).postprocess))


def test_non_max_suppression_accepts_corner_boxes() -> None:
    torch.manual_seed(0)
    cxcywh = torch.cat((torch.rand(2, 200, 2) * 64, torch.rand(2, 200, 2) * 24 + 2,
                        torch.rand(2, 200, 4)), dim=-1)  # [B, N, 5 + 3]
    xyxy = torch.cat((box_convert(cxcywh[..., :4], "cxcywh", "xyxy"), cxcywh[..., 4:]), dim=-1)
    kwargs = {"conf_thresh": 0.05, "iou_thresh": 0.5, "multi_label": True, "image_size": (64, 64)}
    for a, b in zip(non_max_suppression(cxcywh, **kwargs),
                    non_max_suppression(xyxy, box_format="xyxy", **kwargs)):
        assert len(a["boxes"]) > 10
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["labels"], b["labels"])
    with pytest.raises(ValueError, match="box_format"):
        non_max_suppression(xyxy, box_format="xywh")  # type: ignore[arg-type]


def test_onnx_decoded_output_matches_torch(exported) -> None:
    model, path, images = exported
    backend = OnnxBackend(path, threads=1)
    with torch.no_grad():
        expected = DecodedDetector(model, (SIZE, SIZE))(images)
    got = backend.decoded(images)
    n = 3 * sum((SIZE // s) ** 2 for s in (8, 16, 32))
    assert got.shape == expected.shape == (2, n, 5 + 3)
    assert_decoded_close(got, expected, SIZE)
    # dynamic batch: one image alone gives the same rows
    assert_decoded_close(backend.decoded(images[1:]), expected[1:], SIZE)
    # layout: x1 <= x2, y1 <= y2, objectness and class probabilities in [0, 1]
    assert bool((got[..., 2] >= got[..., 0]).all()) and bool((got[..., 3] >= got[..., 1]).all())
    assert bool(((got[..., 4:] >= 0) & (got[..., 4:] <= 1)).all())


def test_nms_outside_graph_equals_model_postprocess(exported) -> None:
    """Decoding + select_detections in PyTorch gives exactly the model's own evaluation output."""
    model, _, images = exported
    with torch.no_grad():
        reference = model(images)
        decoded = DecodedDetector(model, (SIZE, SIZE))(images)
    ours = select_detections(decoded, postprocess_settings(model.postprocess), (SIZE, SIZE))
    for a, b in zip(reference, ours):
        assert len(a["boxes"]) > 0
        assert_same_detections(a, b, box_atol=1e-3, score_atol=1e-6)


def test_final_boxes_match_between_backends(exported) -> None:
    model, path, images = exported
    torch_out = TorchBackend(model, image_size=SIZE)(images)
    onnx_out = OnnxBackend(path, threads=1)(images)
    assert len(torch_out) == len(onnx_out) == 2
    for a, b in zip(torch_out, onnx_out):
        assert len(a["boxes"]) > 0
        assert b["boxes"].dtype == torch.float32 and b["labels"].dtype == torch.int64
        assert_same_detections(a, b)


def test_metadata_round_trip(exported) -> None:
    model, path, _ = exported
    backend = OnnxBackend(path)
    assert backend.name == model.name
    assert backend.class_names == NAMES
    assert backend.image_size == (SIZE, SIZE)
    assert backend.strides == [8, 16, 32]
    assert backend.lumbardx_version == lumbardx.__version__
    assert backend.postprocess["conf_thresh"] == model.postprocess.conf_thresh
    assert backend.postprocess["max_det"] == 3000
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["image_size"]) == [SIZE, SIZE]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    torch_backend = TorchBackend(model, class_names=NAMES, image_size=SIZE)
    assert (torch_backend.name, torch_backend.class_names, torch_backend.image_size) == (
        backend.name, backend.class_names, backend.image_size,
    )


def test_export_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("yolov5n", 3)
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"an older file")
    export_onnx(model, target, 64)  # replaces the existing file
    first = target.read_bytes()
    assert first != b"an older file" and OnnxBackend(target).image_size == (64, 64)
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)

    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(ExportError, match="simulated exporter crash"):
        export_onnx(model, target, 64)
    assert target.read_bytes() == first  # the previous file is untouched
    assert sorted(os.listdir(target.parent)) == ["model.onnx"]  # no temporary left behind


def test_dcn_model_exports_with_deformconv_and_matches(tmp_path: Path) -> None:
    """PP-YOLOv2 R50 (DCNv2 in res5) exports via ONNX DeformConv (opset 19) and matches."""
    torch.manual_seed(1)
    model = build_model("ppyolov2", 3).eval()
    dcns = [m for m in model.modules() if isinstance(m, DeformableConvV2)]
    assert len(dcns) == 3
    for m in dcns:  # non-zero, fractional offsets and masks (the init predicts zero offsets)
        nn.init.normal_(m.conv_offset.weight, std=0.002)
        nn.init.normal_(m.conv_offset.bias, std=0.7)
    with pytest.raises(ExportError, match="need 19"):
        export_onnx(model, tmp_path / "r50_17.onnx", 128, opset=17)
    path = export_onnx(model, tmp_path / "r50.onnx", 128)
    proto = onnx.load(str(path), load_external_data=False)
    assert sum(n.op_type == "DeformConv" for n in proto.graph.node) == 3
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [19]
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = DecodedDetector(model, (128, 128))(images)
    got = OnnxBackend(path, threads=1).decoded(images)
    assert_decoded_close(got, expected, 128)


def test_missing_onnxruntime_gives_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model("yolov5n", 3)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(OptionalDependencyError, match=r"onnxruntime.*lumbardx\[onnx\]"):
        OnnxBackend(tmp_path / "model.onnx")
    assert isinstance(choose_backend(model, "auto", 64), TorchBackend)
    with pytest.raises(OptionalDependencyError, match="onnxruntime"):
        choose_backend(model, "onnx", 64)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(OptionalDependencyError, match="'onnx'"):
        export_onnx(model, tmp_path / "model.onnx", 64)
    assert list(tmp_path.iterdir()) == []


def test_bad_files_and_inputs_name_the_problem(exported, tmp_path: Path) -> None:
    _, path, _ = exported
    with pytest.raises(InputError, match="not found") as err:
        OnnxBackend(tmp_path / "missing.onnx")
    assert err.value.path == tmp_path / "missing.onnx"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        OnnxBackend(junk)
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("detections", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["images"], ["detections"])],
                                   "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(foreign))
    with pytest.raises(InputError, match="not a lumbardx export"):
        OnnxBackend(foreign)
    backend = OnnxBackend(path)
    with pytest.raises(ValueError, match=f"{SIZE}x{SIZE}"):
        backend(torch.rand(1, 3, 320, 320))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backend(torch.rand(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="multiple of 32|multiples of 32"):
        TorchBackend(build_model("yolov5n", 3))(torch.rand(1, 3, 100, 100))


def test_choose_backend(tmp_path: Path) -> None:
    model = build_model("yolov5n", 3)
    auto = choose_backend(model, "auto", 64, NAMES)
    assert isinstance(auto, OnnxBackend) and auto.class_names == NAMES
    assert auto.path.is_file()  # temporary export lives as long as the backend
    assert isinstance(choose_backend(model, "torch", 64), TorchBackend)
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend(model, "tensorrt", 64)  # type: ignore[arg-type]
    odd = Detector(nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity())
    assert "post-process" in (unsupported_reason(odd) or "")
    with pytest.raises(ExportError, match="post-process"):
        export_onnx(odd, tmp_path / "odd.onnx", 64)
    assert not (tmp_path / "odd.onnx").exists()


def test_real_slice_same_findings(yolospine_dev: Path, tmp_path: Path) -> None:
    """A real MRI slice (centre 256 x 256 crop) gives the same PP-YOLOv2 R18 detections in both
    backends (BatchNorm calibrated on the slice itself, so that scores do not saturate)."""
    from PIL import Image

    file = sorted((yolospine_dev / "images").rglob("*.png"))[0]
    gray = np.asarray(Image.open(file).convert("L"), dtype=np.float32) / 255.0
    top, left = (gray.shape[0] - SIZE) // 2, (gray.shape[1] - SIZE) // 2
    crop = torch.from_numpy(gray[top : top + SIZE, left : left + SIZE].copy())
    images = crop.expand(1, 3, SIZE, SIZE).contiguous()
    torch.manual_seed(0)
    model = calibrate_batchnorm(build_model("ppyolov2-r18", 3), images)
    path = export_onnx(model, tmp_path / "r18.onnx", SIZE, NAMES)
    a = TorchBackend(model, image_size=SIZE)(images)[0]
    b = OnnxBackend(path, threads=1)(images)[0]
    assert len(a["boxes"]) > 0 and float(a["scores"].max()) < 0.999
    assert_same_detections(a, b)
