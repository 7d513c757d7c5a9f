"""Reference checkpoints in: an Ultralytics YOLOv5 v7.0 checkpoint (``yolov5s.pt``,
``yolov3.pt``, or one trained with that code) mapped onto the registry's model, tensor by
tensor, for transfer learning (``lumbardx import-weights``, then ``lumbardx train --weights``).
PaddleDetection ``.pdparams`` files (PP-YOLOv2, YOLOv3) are read by
:mod:`lumbardx.models.reference_paddle`, which shares :class:`ImportReport`.

**Reading without running the checkpoint's code.** An Ultralytics checkpoint is a pickled dict
whose ``model`` (and ``ema``) is the whole ``nn.Module``: unpickling it normally imports the
``yolov5`` package (``models.yolo.DetectionModel``...) and runs whatever the pickle names.
:class:`_RecordingUnpickler` resolves only torch's tensor and parameter rebuilding functions
(storages are torch's own), ``collections.OrderedDict`` and a few builtins; every other name the
pickle asks for -- the checkpoint's classes, but also any function such as ``os.system`` --
becomes an inert :class:`_Record` that only keeps the arguments and state the pickle gives it.
No constructor, ``__setstate__`` or function of the checkpoint runs, and neither the ``yolov5``
package nor anything else is imported. The module tree is then walked through the records'
``_modules`` / ``_parameters`` / ``_buffers`` to the state dict the reference ``state_dict()``
would give (``model.0.conv.weight``, ...), in float32 (checkpoints are saved in half precision).

**Mapping.** The registry's ``yolov5*`` and ``yolov3`` register their modules in the order of
the reference model's yaml, so, with the anchors left out, the reference state dict and the
registry model's align one to one: the i-th tensors must agree in shape, and the class count is
read from the head (``na * (5 + nc)`` output channels), so a COCO checkpoint maps whole with its
80 classes (``lumbardx train --weights`` then keeps every tensor but the head's class channels,
:func:`lumbardx.engine.checkpoint.load_weights`). The reference keeps the anchors in grid units
of each stride (``Detect.anchors``, after ``anchors / stride``); the registry's YOLOv5 keeps
them in input pixels, so they are multiplied back by the strides; the registry's YOLOv3 has
fixed anchors, and a checkpoint whose anchors differ from them is reported. Anything that does
not map is named in the :class:`ImportReport` and the import is refused.

**Equivalence.** A YOLOv5 v7.0 checkpoint imported this way gives the reference network's raw
head outputs and decoded boxes exactly (tested against the ``yolov5`` 7.0.14 package). The
registry's YOLOv3 is the study's PaddleDetection Darknet-53 (LeakyReLU 0.1), while Ultralytics'
v7.0 ``yolov3.yaml`` builds the same layers with SiLU: such a checkpoint maps tensor for tensor
but is not the same function, and the report says so (``equivalent`` false): use it to start
training, not as the reference model. PaddleDetection's own ``yolov3_darknet53_270e_coco``
``.pdparams`` is the same function (:mod:`lumbardx.models.reference_paddle`).
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lumbardx.data.errors import InputError

#: Names a reference checkpoint may resolve to real objects: torch's tensor rebuilding and a
#: few containers. Everything else becomes a :class:`_Record`.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"):
        getattr(torch._utils, "_rebuild_parameter_with_state", None),
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
for _dtype in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "bool"):
    _ALLOWED[("torch", _dtype)] = getattr(torch, _dtype)


class _Record:
    """An inert stand-in for anything a checkpoint's pickle names outside :data:`_ALLOWED`: it
    keeps its name, the arguments it was called or created with, and the state given to it."""

    name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _record_class(module: str, name: str) -> type[_Record]:
    return type(name, (_Record,), {"name": f"{module}.{name}", "__module__": "_record"})


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickler that never imports: :data:`_ALLOWED` names or :class:`_Record` subclasses."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol < 3)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _ALLOWED.get((module, name))
        return obj if obj is not None else _record_class(module, name)


class _RecordingPickle:
    """The ``pickle_module`` handed to :func:`torch.load` (it subclasses ``Unpickler``)."""

    Unpickler = _RecordingUnpickler
    load = pickle.load
    __name__ = "lumbardx-recording-pickle"


def _state(obj: Any) -> dict[str, Any]:
    """The attribute dict a module record was given (``BUILD`` state), or ``{}``."""
    state = getattr(obj, "state", None)
    if isinstance(state, tuple) and state and isinstance(state[0], dict):  # (dict, slots)
        state = state[0]
    return state if isinstance(state, dict) else {}


def module_state_dict(module: Any, prefix: str = "") -> dict[str, Tensor]:
    """The ``state_dict()`` of a recorded ``nn.Module`` (parameters and persistent buffers, in
    registration order, children after their own tensors as torch does), float32 for floats."""
    st = _state(module)
    out: dict[str, Tensor] = {}
    non_persistent = set(st.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (st.get(kind) or {}).items():
            if tensor is None or (kind == "_buffers" and name in non_persistent):
                continue
            t = tensor.detach()
            out[prefix + name] = t.float() if t.is_floating_point() else t.clone()
    for name, child in (st.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


#: The activation of each registry family's convolutions (``common.Conv``).
ACTIVATIONS: dict[str, str] = {"yolov5": "SiLU", "yolov3": "LeakyReLU"}


def activations(module: Any) -> set[str]:
    """Class names of the activation modules recorded in a reference module tree."""
    found: set[str] = set()
    for child in (_state(module).get("_modules") or {}).values():
        if child is None:
            continue
        kind = type(child).__name__
        if kind in ("SiLU", "LeakyReLU", "ReLU", "Hardswish", "Mish", "GELU", "Sigmoid"):
            found.add(kind)
        found |= activations(child)
    return found


def _find_detect(module: Any) -> dict[str, Any] | None:
    """The attribute dict of the reference ``Detect`` module (the last child of ``model``)."""
    children = list((_state(module).get("_modules") or {}).values())
    for child in children[::-1]:
        inner = list((_state(child).get("_modules") or {}).values())
        for sub in inner[::-1]:
            if type(sub).__name__ in ("Detect", "Segment"):
                return _state(sub)
    return None


@dataclass
class ReferenceCheckpoint:
    """What a reference checkpoint holds, read without running its code.

    Attributes:
        path: the file.
        state: reference tensor name -> float32 tensor (``model.0.conv.weight`` ...).
        anchors: ``[nl, na, 2]`` anchors in grid units of each stride (``Detect.anchors``).
        strides: ``[nl]`` strides of the detection layers (``Detect.stride``).
        names: the class names the checkpoint carries (``model.names``), if any.
        source: ``"ema"`` or ``"model"`` (the EMA weights are taken when present).
        activations: class names of its activation modules (``{"SiLU"}`` for v7.0 models).
    """

    path: Path
    state: dict[str, Tensor]
    anchors: Tensor
    strides: Tensor
    names: list[str]
    source: str
    activations: set[str] = field(default_factory=set)


def read_ultralytics(path: str | Path) -> ReferenceCheckpoint:
    """Read an Ultralytics YOLOv5 v7.0 checkpoint (module docstring).

    Raises:
        InputError: naming the file when it is not such a checkpoint.
    """
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", pickle_module=_RecordingPickle,
                         weights_only=False)
    except FileNotFoundError as exc:
        raise InputError(path, "checkpoint not found") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "not an Ultralytics checkpoint (expected a dict with 'model')")
    source = "ema" if isinstance(raw.get("ema"), _Record) else "model"
    model = raw.get(source)
    if not isinstance(model, _Record):
        raise InputError(path, "not an Ultralytics checkpoint: no pickled 'model' module")
    state = module_state_dict(model)
    detect = _find_detect(model)
    if not state or detect is None:
        raise InputError(path, f"no detection model in the checkpoint ({model.name})")
    buffers = detect.get("_buffers") or {}
    anchors = buffers.get("anchors")
    strides = detect.get("stride")
    if not isinstance(anchors, Tensor) or not isinstance(strides, Tensor):
        raise InputError(path, "the Detect layer has no anchors or strides")
    names_raw = _state(model).get("names")
    if isinstance(names_raw, dict):
        names = [str(names_raw[k]) for k in sorted(names_raw)]
    elif isinstance(names_raw, (list, tuple)):
        names = [str(n) for n in names_raw]
    else:
        names = []
    return ReferenceCheckpoint(path, state, anchors.detach().float(), strides.detach().float(),
                               names, source, activations(model))


@dataclass
class ImportReport:
    """How a reference checkpoint mapped onto a registry model.

    Attributes:
        model_name: the registry model.
        num_classes: classes of the reference head.
        mapped: ``(reference name, lumbardx name)`` pairs, in order.
        unmapped_reference, unmapped_model: names left on either side.
        shape_mismatch: ``(reference name, lumbardx name, reference shape, model shape)``.
        notes: anything else the user should know (e.g. anchors not taken).
        equivalent: whether the imported model computes what the reference does (same
            activations); ``False`` means the weights only initialise training.
    """

    model_name: str
    num_classes: int
    mapped: list[tuple[str, str]] = field(default_factory=list)
    unmapped_reference: list[str] = field(default_factory=list)
    unmapped_model: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list)
    notes: list[str] = field(default_factory=list)
    equivalent: bool = True

    @property
    def complete(self) -> bool:
        """Every tensor mapped on both sides with equal shapes."""
        return not (self.unmapped_reference or self.unmapped_model or self.shape_mismatch)

    def summary(self, limit: int = 5) -> str:
        """One paragraph: counts, then the problems by name (the first ``limit`` of each
        kind, and how many more; :meth:`problems` lists them all)."""
        lines = [f"{len(self.mapped)} tensors mapped onto {self.model_name} "
                 f"({self.num_classes} classes)"]
        for kind, items in self.problems().items():
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"{len(items)} {kind}: {', '.join(items[:limit])}{more}")
        return "; ".join(lines + self.notes)

    def problems(self) -> dict[str, list[str]]:
        """Every tensor that did not map, by kind."""
        kinds = {"not mapped (reference)": list(self.unmapped_reference),
                 "not mapped (lumbardx)": list(self.unmapped_model),
                 "with another shape": [f"{a} {tuple(sa)} vs {b} {tuple(sb)}"
                                        for a, b, sa, sb in self.shape_mismatch]}
        return {k: v for k, v in kinds.items() if v}


def _is_anchor(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "anchors"


def import_ultralytics(path: str | Path, model_name: str
                       ) -> tuple[torch.nn.Module, ReferenceCheckpoint, ImportReport]:
    """Build ``model_name`` (``yolov5n/s/m/l`` or ``yolov3``) with the reference head's class
    count and load the checkpoint into it (module docstring).

    Returns:
        ``(model, reference, report)``; the model in eval mode.

    Raises:
        InputError: naming the file when the checkpoint does not map completely (the report's
            summary says what did not).
    """
    from lumbardx.models.registry import build_model
    from lumbardx.models.yolov5 import set_anchors

    if not (model_name.startswith("yolov5") or model_name == "yolov3"):
        raise InputError(None, f"--model {model_name!r}: Ultralytics checkpoints map onto "
                               "yolov5n/s/m/l and yolov3")
    ref = read_ultralytics(path)
    head = [(k, v) for k, v in ref.state.items() if not _is_anchor(k)][-1]
    na = int(ref.anchors.shape[1])
    out_ch = int(head[1].shape[0])
    if out_ch % na or out_ch // na < 6:
        raise InputError(ref.path, f"head {head[0]} has {out_ch} outputs for {na} anchors")
    nc = out_ch // na - 5
    model = build_model(model_name, nc)
    report = ImportReport(model_name, nc)
    own = {k: v for k, v in model.state_dict().items() if not _is_anchor(k)}
    theirs = [(k, v) for k, v in ref.state.items() if not _is_anchor(k)]
    take: dict[str, Tensor] = {}
    for (rk, rv), (mk, mv) in zip(theirs, own.items()):
        if tuple(rv.shape) != tuple(mv.shape):
            report.shape_mismatch.append((rk, mk, tuple(rv.shape), tuple(mv.shape)))
        else:
            take[mk] = rv.to(mv.dtype)
            report.mapped.append((rk, mk))
    report.unmapped_reference = [k for k, _ in theirs[len(own):]]
    report.unmapped_model = list(own)[len(theirs):]
    if not report.complete:
        raise InputError(ref.path, f"does not map onto {model_name}: {report.summary()}")
    model.load_state_dict(take, strict=False)
    ours = ACTIVATIONS["yolov5" if model_name.startswith("yolov5") else "yolov3"]
    if ref.activations and ref.activations != {ours}:
        report.equivalent = False
        report.notes.append(f"the checkpoint's convolutions use {', '.join(sorted(ref.activations))}"
                            f" where {model_name} uses {ours}: the tensors map one to one, but "
                            "the network computes something else, so the weights are a "
                            "starting point for training, not the reference model")
    pixels = ref.anchors * ref.strides.view(-1, 1, 1)
    if model_name.startswith("yolov5"):
        set_anchors(model, pixels)
    else:
        fixed = getattr(model.postprocess, "anchors", None)
        if fixed is not None and not torch.allclose(fixed.float().reshape(pixels.shape), pixels,
                                                    atol=1e-3):
            report.notes.append("the checkpoint's anchors differ from YOLOv3's fixed anchors "
                                "and were not taken")
    return model.eval(), ref, report
