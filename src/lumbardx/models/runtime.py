"""Inference backends: PyTorch (:class:`TorchBackend`) and ONNX Runtime (:class:`OnnxBackend`).

Both are called the same way and give the same result as ``Detector`` evaluation:

``backend(images)`` with ``images`` ``float32 [B, 3, H, W]`` in [0, 1] -> one dict per image with
``"boxes"`` ``float32 [K, 4]`` (xyxy input pixels), ``"scores"`` ``float32 [K]`` in [0, 1] and
``"labels"`` ``int64 [K]``, on the CPU. Each backend exposes ``name`` (registry model name),
``class_names`` (index -> name) and ``image_size`` (``(H, W)`` the backend requires, or
``None`` when any multiple of 32 is accepted).

:class:`OnnxBackend` runs a file written by :func:`lumbardx.models.export.export_onnx` (network
and box decoding) in ONNX Runtime and applies NMS outside the graph with
:func:`select_detections` -- the very functions the PyTorch post-processes call
(:func:`lumbardx.models.decode.non_max_suppression`,
:meth:`lumbardx.models.postprocess_yolov3.YOLOv3PostProcess.select`), with the settings stored in
the file. ONNX files have a fixed input size.

:func:`choose_backend` picks a backend for a model; in ``"auto"`` mode ONNX Runtime is used when it
is installed, the model exports, and the device is the CPU. Choosing by measured speed is the job
of ``bench/onnx_speed.py``, not of this module.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lumbardx.data.errors import InputError
from lumbardx.models.decode import non_max_suppression
from lumbardx.models.detector import Detector
from lumbardx.models.export import (
    INPUT_NAME,
    ExportError,
    OptionalDependencyError,
    export_onnx,
    require,
    unsupported_reason,
)
from lumbardx.models.postprocess_yolov3 import YOLOv3PostProcess

log = logging.getLogger(__name__)

Prefer = Literal["auto", "torch", "onnx"]
REQUIRED_METADATA = ("model_name", "class_names", "image_size", "postprocess")


def _check_images(images: Tensor, image_size: tuple[int, int] | None, where: str) -> Tensor:
    """Validate ``images`` ``[B, 3, H, W]`` floating point; ``where`` names the backend."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{where}: images must be a [B, 3, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{where}: images must be floating point in [0, 1], got {images.dtype}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if image_size is not None and (h, w) != tuple(image_size):
        raise ValueError(
            f"{where}: expects {image_size[0]}x{image_size[1]} images, got {h}x{w}; "
            "letterbox the images to that size (or export the model at this size)"
        )
    if h % 32 or w % 32:
        raise ValueError(f"{where}: image height and width must be multiples of 32, got {h}x{w}")
    return images


def _default_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def _hw(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


class TorchBackend:
    """PyTorch inference with the model's own post-process (``Detector`` in eval mode).

    Args:
        model: the detector (put in eval mode and moved to ``device``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        class_names: one name per class (default ``class_0`` ...).
        image_size: ``(H, W)`` (or one int) every call must use; ``None`` accepts any multiple
            of 32.
    """

    kind = "torch"

    def __init__(
        self,
        model: Detector,
        device: str | torch.device = "cpu",
        class_names: Sequence[str] | None = None,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        nc = int(model.postprocess.num_classes)  # type: ignore[arg-type]
        self.class_names = _default_names(nc) if class_names is None else list(class_names)
        if len(self.class_names) != nc:
            raise ValueError(f"{len(self.class_names)} class names for a model with {nc} classes")
        self.image_size = _hw(image_size)
        self.name = model.name

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> list[dict[str, Tensor]]:
        """``[B, 3, H, W]`` in [0, 1] -> per image ``boxes [K, 4]``, ``scores``, ``labels``."""
        _check_images(images, self.image_size, f"torch backend ({self.name})")
        out = self.model(images.to(self.device, torch.float32))
        return [{k: v.cpu() for k, v in det.items()} for det in out]  # type: ignore[union-attr]


def select_detections(
    detections: Tensor, settings: dict[str, Any], image_size: tuple[int, int]
) -> list[dict[str, Tensor]]:
    """NMS on decoded detections, as the PyTorch post-process does it.

    Args:
        detections: ``[B, N, 5 + nc]``: ``x1, y1, x2, y2`` input pixels, objectness, class
            probabilities (the ONNX output layout, :mod:`lumbardx.models.export`).
        settings: :func:`lumbardx.models.export.postprocess_settings` of the model.
        image_size: ``(H, W)`` of the input.

    Returns:
        One dict per image: ``boxes`` ``float32 [K, 4]`` xyxy pixels, ``scores`` ``[K]``,
        ``labels`` ``int64 [K]``.
    """
    if settings["kind"] == "yolov5":
        return non_max_suppression(
            detections, settings["conf_thresh"], settings["iou_thresh"], settings["max_det"],
            settings["multi_label"], settings["agnostic"], image_size=image_size,
            box_format="xyxy",
        )
    if settings["kind"] == "yolov3":
        post = YOLOv3PostProcess.from_settings(settings)
        scores = detections[..., 4:5] * detections[..., 5:]  # [B, N, nc] confidence x class
        return [post.select(b, s) for b, s in zip(detections[..., :4], scores)]
    raise ValueError(f"unknown post-process kind {settings['kind']!r}")


class OnnxBackend:
    """ONNX Runtime inference of an exported lumbardx model, NMS outside the graph.

    Args:
        path: ``.onnx`` file from :func:`lumbardx.models.export.export_onnx`.
        providers: ONNX Runtime execution providers, in order of preference.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).

    Raises:
        OptionalDependencyError: ``onnxruntime`` is not installed.
        InputError: naming ``path`` when the file is missing, not a readable ONNX model, not a
            lumbardx export, or uses an operator this ONNX Runtime lacks.
    """

    kind = "onnx"

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "ONNX model file not found")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "DeformConv" in str(exc):
                raise InputError(
                    self.path,
                    "this ONNX Runtime cannot run DeformConv (deformable convolution, opset 19) "
                    f"used by PP-YOLOv2 R50/R101; upgrade onnxruntime or use the torch backend "
                    f"({msg})",
                ) from exc
            raise InputError(self.path, f"not a readable ONNX model ({msg})") from exc
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise InputError(
                self.path, f"not a lumbardx export: metadata {', '.join(missing)} missing"
            )
        try:
            self.metadata = meta
            self.name: str = meta["model_name"]
            self.class_names: list[str] = list(json.loads(meta["class_names"]))
            h, w = json.loads(meta["image_size"])
            self.image_size: tuple[int, int] = (int(h), int(w))
            self.strides: list[int] = [int(s) for s in json.loads(meta.get("strides", "[]"))]
            self.postprocess: dict[str, Any] = json.loads(meta["postprocess"])
        except (ValueError, TypeError) as exc:
            raise InputError(self.path, f"unreadable lumbardx metadata ({exc})") from exc
        self.lumbardx_version = meta.get("lumbardx_version", "")
        #: ``"slice"`` or ``"T1+T2"`` (files exported before it was recorded: ``"slice"``).
        self.inputs: str = meta.get("inputs", "slice")
        self.providers = self.session.get_providers()
        #: A second stage run on the detections (the exported graph holds the one-stage
        #: detector only); :func:`choose_backend` sets the model's ``Detector.rescorer``.
        self.rescorer: torch.nn.Module | None = None

    def decoded(self, images: Tensor) -> Tensor:
        """The graph output: ``images [B, 3, H, W]`` -> ``detections [B, N, 5 + nc]`` (CPU)."""
        _check_images(images, self.image_size, f"{self.path}")
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(None, {INPUT_NAME: x})
        return torch.from_numpy(out)

    def __call__(self, images: Tensor) -> list[dict[str, Tensor]]:
        """``[B, 3, H, W]`` in [0, 1] -> per image ``boxes [K, 4]``, ``scores``, ``labels``
        (rescored by :attr:`rescorer` when one is set)."""
        dets = select_detections(self.decoded(images), self.postprocess, self.image_size)
        if self.rescorer is not None:
            with torch.inference_mode():
                dets = self.rescorer(images.detach().cpu().float(), dets)
        return dets


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (and onnx, needed for export) can be imported."""
    try:
        require("onnxruntime")
        require("onnx")
    except OptionalDependencyError:
        return False
    return True


def choose_backend(
    model: Detector,
    prefer: Prefer = "auto",
    image_size: int | Sequence[int] = 640,
    class_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> TorchBackend | OnnxBackend:
    """A backend for ``model``.

    ``"torch"``: :class:`TorchBackend`. ``"onnx"``: export to a temporary file (kept while the
    backend lives) and :class:`OnnxBackend`; errors if ONNX Runtime is missing or the model
    does not export. ``"auto"``: ONNX Runtime when it is installed, the model exports and
    ``device`` is the CPU; otherwise PyTorch (the reason is logged). A model's second stage
    (``Detector.rescorer``) runs after ONNX Runtime's detections, its networks in ONNX Runtime
    too when it can (``use_onnxruntime``), else in PyTorch.

    Both backends then require ``image_size`` (``H = W`` or ``(H, W)``, multiples of 32).
    """
    if prefer not in ("auto", "torch", "onnx"):
        raise ValueError(f"unknown backend {prefer!r}: use 'auto', 'torch' or 'onnx'")
    hw = _hw(image_size)
    if prefer == "torch":
        return TorchBackend(model, device, class_names, hw)
    if prefer == "auto":
        reason = None
        if torch.device(device).type != "cpu":
            reason = f"device {device} (ONNX Runtime is used on the CPU only)"
        elif not onnxruntime_available():
            reason = "onnx / onnxruntime not installed"
        else:
            reason = unsupported_reason(model)
        if reason is not None:
            log.info("using the torch backend: %s", reason)
            return TorchBackend(model, device, class_names, hw)
    require("onnxruntime")  # fail before a costly export when it is missing
    tmp = tempfile.TemporaryDirectory(prefix="lumbardx-onnx-")
    try:
        path = export_onnx(model, Path(tmp.name) / f"{model.name or 'model'}.onnx", hw, class_names)
        backend = OnnxBackend(path, threads=threads)
    except BaseException as exc:
        tmp.cleanup()
        if prefer == "onnx" or not isinstance(exc, (ExportError, InputError)):
            raise
        log.warning("ONNX export failed, using the torch backend: %s", exc)
        return TorchBackend(model, device, class_names, hw)
    backend._tmpdir = tmp  # type: ignore[attr-defined]  # removed with the backend
    backend.rescorer = getattr(model, "rescorer", None)
    if backend.rescorer is not None and hasattr(backend.rescorer, "use_onnxruntime"):
        try:
            backend.rescorer.use_onnxruntime(threads)
        except Exception as exc:  # noqa: BLE001 - the exporter and ORT raise many kinds
            log.warning("the second stage runs in PyTorch: ONNX Runtime failed (%s)", exc)
    return backend
