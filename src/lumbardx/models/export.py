"""ONNX export of a :class:`~lumbardx.models.detector.Detector`: network and box decoding.

What goes into the graph: backbone, neck, head and the box **decoding** of the model's
post-process, wrapped by :class:`DecodedDetector`. What stays outside: NMS (hard NMS via
``torchvision.ops.batched_nms`` or Matrix NMS), which :mod:`lumbardx.models.runtime` runs on
the ONNX Runtime outputs with the settings stored in the file.

Graph signature:

* input ``images``: ``float32 [B, 3, H, W]``, values in [0, 1]. The batch is dynamic; ``H`` and
  ``W`` are **fixed** at export (``image_size``), because the decoding bakes the image size into
  the graph (PP-YOLOv2 / YOLOv3 derive the stride from it and clip boxes to it).
* output ``detections``: ``float32 [B, N, 5 + nc]`` with ``N = sum_i A * (H / s_i) * (W / s_i)``;
  columns ``x1, y1, x2, y2`` (input pixels, lumbardx's continuous convention), ``objectness``
  in [0, 1], then ``nc`` class probabilities in [0, 1]. The score of class ``c`` is
  ``objectness * p_c``. For YOLOv5 the boxes are not clipped (clipping follows NMS, as in
  ``decode.non_max_suppression``); for YOLOv3 / PP-YOLOv2 they are clipped to the image and the
  objectness is the (IoU-aware) confidence set to 0 below ``conf_thresh``, exactly as
  ``YOLOv3PostProcess.decode``.

Deformable convolution (PP-YOLOv2 R50 / R101, DCNv2 in res5): torchvision registers no ONNX
symbolic for ``torchvision::deform_conv2d``. This module maps it to the standard ONNX
``DeformConv`` operator (opset 19; same ``(dy, dx)`` offset layout and modulation mask), which
ONNX Runtime's CPU provider implements. Models with DCN are therefore exported at opset 19;
models without at opset 17 unless asked otherwise.

The exporter is PyTorch's TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (the dynamo
exporter needs the ``onnxscript`` package, which is not a lumbardx dependency).

``onnx`` and ``onnxruntime`` are the optional extra ``lumbardx[onnx]``, imported lazily.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

import lumbardx
from lumbardx.data.errors import LumbardxError
from lumbardx.io import atomic_write_bytes
from lumbardx.models.dcn import DeformableConvV2
from lumbardx.models.decode import YOLOv5PostProcess, decode_yolov5
from lumbardx.models.detector import Detector
from lumbardx.models.postprocess_yolov3 import YOLOv3PostProcess, confidence, decode_boxes

DEFAULT_OPSET = 17
DCN_OPSET = 19  # first opset with DeformConv
INPUT_NAME = "images"
OUTPUT_NAME = "detections"
LAYOUT = "x1,y1,x2,y2,objectness,class_probabilities"
INSTALL_HINT = "install the optional extra: pip install 'lumbardx[onnx]'"


class OptionalDependencyError(LumbardxError, ImportError):
    """An optional package (``onnx``, ``onnxruntime``) that a feature needs is not installed."""


class ExportError(LumbardxError, RuntimeError):
    """A model that cannot be exported to ONNX, or whose export does not match PyTorch."""


def require(module: str) -> ModuleType:
    """Import the optional ``module`` (``"onnx"`` or ``"onnxruntime"``) or raise a clear
    :class:`OptionalDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"ONNX export and inference need the package {module!r}, which is not installed; "
            f"{INSTALL_HINT}"
        ) from exc


def has_dcn(model: nn.Module) -> bool:
    """Whether ``model`` contains deformable convolutions (DCNv2)."""
    return any(isinstance(m, DeformableConvV2) for m in model.modules())


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be exported, or ``None`` when it can."""
    if not isinstance(model, Detector):
        return f"only lumbardx Detector models can be exported, got {type(model).__name__}"
    if not isinstance(model.postprocess, (YOLOv5PostProcess, YOLOv3PostProcess)):
        return (
            f"no ONNX decoding for post-process {type(model.postprocess).__name__}; "
            "supported: YOLOv5PostProcess, YOLOv3PostProcess"
        )
    return None


def postprocess_settings(post: nn.Module) -> dict[str, Any]:
    """The NMS settings of a post-process as a JSON-able dict (stored in the ONNX file).

    ``kind`` is ``"yolov5"`` (``decode.non_max_suppression``) or ``"yolov3"`` (hard / Matrix NMS
    of ``YOLOv3PostProcess``); the other keys are the post-process attributes of that name.
    """
    if isinstance(post, YOLOv5PostProcess):
        keys = ("conf_thresh", "iou_thresh", "max_det", "multi_label", "agnostic")
        return {"kind": "yolov5", "num_classes": post.num_classes,
                **{k: getattr(post, k) for k in keys}}
    if isinstance(post, YOLOv3PostProcess):
        keys = ("conf_thresh", "nms", "nms_iou", "max_det", "nms_top_k", "matrix_kernel",
                "matrix_sigma")
        return {"kind": "yolov3", "num_classes": post.num_classes,
                **{k: getattr(post, k) for k in keys}}
    raise ExportError(f"no ONNX decoding for post-process {type(post).__name__}")


def _strides(post: nn.Module) -> list[int]:
    return [int(s) for s in post.strides]  # type: ignore[attr-defined]


class DecodedDetector(nn.Module):
    """The exported graph: ``images [B, 3, H, W]`` -> ``detections [B, N, 5 + nc]``.

    See the module docstring for the column layout. ``image_size`` is ``(H, W)`` in pixels.
    """

    def __init__(self, model: Detector, image_size: tuple[int, int]) -> None:
        super().__init__()
        reason = unsupported_reason(model)
        if reason is not None:
            raise ExportError(reason)
        self.model = model
        self.image_size = image_size

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, N, 5 + nc]`` (xyxy px, objectness, class probs)."""
        raw = self.model.forward_raw(images)  # [B, A, H/s, W/s, K] per stride
        post = self.model.postprocess
        if isinstance(post, YOLOv5PostProcess):
            pred = decode_yolov5(raw, post.anchors, post.strides)  # [B, N, 5 + nc] cxcywh
            xyxy = box_convert(pred[..., :4], "cxcywh", "xyxy")
            return torch.cat((xyxy, pred[..., 4:]), dim=-1)
        return self._decode_yolov3(raw, post)  # type: ignore[arg-type]

    def _decode_yolov3(self, raw: list[Tensor], post: YOLOv3PostProcess) -> Tensor:
        """Mirror of ``YOLOv3PostProcess.decode`` keeping objectness and class probs apart."""
        nc = post.num_classes
        h, w = self.image_size
        levels = []
        for r, mask in zip(raw, post.anchor_masks):
            r = r.float()
            b = r.shape[0]
            boxes = decode_boxes(r, post.anchors[mask], self.image_size, post.scale_x_y)
            x1, y1, x2, y2 = boxes.unbind(-1)  # [B, A, Hs, Ws] each
            boxes = torch.stack(
                (x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)), dim=-1
            )
            conf = confidence(r, nc, post.iou_aware, post.iou_aware_factor)  # [B, A, Hs, Ws]
            conf = torch.where(conf >= post.conf_thresh, conf, torch.zeros_like(conf))
            cls = torch.sigmoid(r[..., 5 : 5 + nc])  # [B, A, Hs, Ws, nc]
            level = torch.cat((boxes, conf.unsqueeze(-1), cls), dim=-1)
            levels.append(level.reshape(b, -1, 5 + nc))
        return torch.cat(levels, dim=1)


def _deform_conv2d_symbolic(
    g: Any, input: Any, weight: Any, offset: Any, mask: Any, bias: Any,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
    groups: int, offset_groups: int, use_mask: bool,
) -> Any:
    """``torchvision::deform_conv2d`` -> ONNX ``DeformConv`` (opset 19)."""
    inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=[stride_h, stride_w],
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        dilations_i=[dil_h, dil_w],
        group_i=groups,
        offset_group_i=offset_groups,
    )


def _register_deform_conv() -> None:
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    symbolic = parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")(
        _deform_conv2d_symbolic
    )
    register_custom_op_symbolic("torchvision::deform_conv2d", symbolic, DCN_OPSET)


def _as_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or any(int(v) <= 0 or int(v) % 32 for v in hw):
        raise ValueError(f"image_size must be a positive multiple of 32 (or two), got {image_size}")
    return int(hw[0]), int(hw[1])


def export_onnx(
    model: Detector,
    path: str | Path,
    image_size: int | Sequence[int] = 640,
    class_names: Sequence[str] | None = None,
    opset: int | None = None,
    inputs: str = "slice",
) -> Path:
    """Export ``model`` (network + box decoding, no NMS) to an ONNX file, atomically.

    Args:
        model: a lumbardx detector; traced in eval mode on its own device (its training
            mode is restored afterwards).
        path: the ``.onnx`` file to write; the folder is created. The file is written to a
            temporary name in the same folder and moved into place with ``os.replace``
            (:func:`lumbardx.io.atomic_write_bytes`), so a failed export never leaves a
            partial file at ``path``; the file gets mode ``0o644``.
        image_size: input ``H = W`` or ``(H, W)`` in pixels, multiples of 32; fixed in the graph.
        class_names: one name per class (default ``class_0`` ... ``class_{nc-1}``); pass the
            checkpoint's ``class_names`` for trained weights.
        opset: ONNX opset; default 17, or 19 for models with deformable convolutions (which
            need ``DeformConv``; a lower explicit opset is refused).
        inputs: what the network reads, stored for diagnosis (``lumbardx.study.ModelInfo``):
            ``"slice"``, or ``"T1+T2"`` for a detector trained on T1/T2 pairs.

    Returns:
        ``path``. Metadata (``metadata_props``): ``model_name``, ``class_names`` (JSON list),
        ``image_size`` (JSON ``[H, W]``), ``strides`` (JSON list), ``lumbardx_version``,
        ``layout``, ``postprocess`` (JSON NMS settings, :func:`postprocess_settings`),
        ``inputs``.

    Raises:
        ExportError: unsupported model, opset too low for DCN, or the exporter failing.
        OptionalDependencyError: ``onnx`` is not installed.
    """
    onnx = require("onnx")
    hw = _as_hw(image_size)
    wrapper = DecodedDetector(model, hw)
    post = model.postprocess
    nc = int(post.num_classes)  # type: ignore[arg-type]
    names = [f"class_{i}" for i in range(nc)] if class_names is None else list(class_names)
    if len(names) != nc:
        raise ValueError(f"{len(names)} class names given for a model with {nc} classes")
    dcn = has_dcn(model)
    if opset is None:
        opset = DCN_OPSET if dcn else DEFAULT_OPSET
    if opset < DEFAULT_OPSET or (dcn and opset < DCN_OPSET):
        need = DCN_OPSET if dcn else DEFAULT_OPSET
        raise ExportError(f"opset {opset} is too low for {model.name or 'this model'}: need {need}")
    if dcn:
        _register_deform_conv()

    param = next(model.parameters())
    dummy = torch.zeros(1, 3, *hw, dtype=torch.float32, device=param.device)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape-derived Python numbers
            torch.onnx.export(
                wrapper, (dummy,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"exporting {model.name or 'the model'} to ONNX failed: {exc}") from exc
    finally:
        model.train(was_training)

    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        "model_name": model.name,
        "class_names": json.dumps(names),
        "image_size": json.dumps(list(hw)),
        "strides": json.dumps(_strides(post)),
        "lumbardx_version": lumbardx.__version__,
        "layout": LAYOUT,
        "postprocess": json.dumps(postprocess_settings(post)),
        "inputs": inputs,
    }
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name = "lumbardx"
    proto.producer_version = lumbardx.__version__
    # 0o644 whatever the umask: a model file is meant to be shared
    return atomic_write_bytes(path, proto.SerializeToString(), mode=0o644)
