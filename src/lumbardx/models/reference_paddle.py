"""PaddleDetection checkpoints in: a ``.pdparams`` file of PaddleDetection 2.x (the published
``ppyolov2_r50vd_dcn_365e_coco.pdparams``, ``ppyolov2_r101vd_dcn_365e_coco.pdparams``,
``yolov3_darknet53_270e_coco.pdparams``, or one trained with that code) mapped onto the
registry's ``ppyolov2`` / ``ppyolov2-r101`` / ``yolov3``, tensor by tensor, for transfer learning
(``lumbardx import-weights``, then ``lumbardx train --weights``).

**Reading without running the file's code.** ``paddle.save(model.state_dict(), path)`` writes a
pickle (protocol 2 to 4) of a dict: parameter name -> ``numpy.ndarray`` (pickled by numpy's
``_reconstruct`` / ``ndarray`` / ``dtype``; at protocol 2 the raw bytes go through
``_codecs.encode``), plus ``"StructuredToParameterName@@"``, a dict of names -> Paddle's
internal names (``conv2d_0.w_0``), and, for arrays over 1 GiB at protocols 2-3,
``"UnpackBigParamInfor@@"`` with the slices to join. :class:`_PdparamsUnpickler` resolves
exactly those names (:data:`_ALLOWED`); any other global the pickle asks for (a class, or a
function such as ``os.system`` or ``builtins.eval``) stops the read with an :class:`InputError`
naming the file and the global, before anything is called. Neither paddle nor ppdet is
imported; floating arrays become float32 tensors (checkpoints may be float16).

**Mapping.** Paddle names its tensors by its own module tree
(``backbone.res2.res2a.branch2a.conv.weight``, ``neck.fpn.0.conv_module.spp.conv.conv.weight``,
``yolo_head.yolo_output.0.weight``); the tables below name, for every tensor of the registry
model, the Paddle tensor it takes, and shapes must agree. Paddle keeps BatchNorm statistics as
parameters ``_mean`` / ``_variance`` (so its parameter totals count them: 54,668,983 for
PP-YOLOv2 R50 at nc = 80 against 54,579,383 trainable ones here) -> ``running_mean`` /
``running_var``; torch's ``num_batches_tracked`` has no Paddle counterpart and is left as built.
The registry's heads are ordered stride 8, 16, 32, Paddle's 32, 16, 8
(``yolo_output.0`` -> ``head.*.2``), with the same channel layout (PP-YOLOv2: the 3 IoU logits
first). Nothing here is a ``Linear`` (Paddle stores those ``[in, out]``; they would be
transposed). The class count is read from ``yolo_head.yolo_output.0.weight``
(``3 * (5 + nc)`` outputs, ``3 * (6 + nc)`` with the IoU-aware branch), so a COCO checkpoint maps
whole (80 classes; ``lumbardx train --weights`` then keeps every tensor but the head's,
:func:`lumbardx.engine.checkpoint.load_weights`). Anchors are not in a ``.pdparams`` file: the
registry's are the configs' COCO anchors. Anything that does not map is named in the
:class:`~lumbardx.models.reference_weights.ImportReport` and the import is refused.

**Equivalence.** Imported so, the registry models compute what PaddleDetection 2.6.0's
(PaddlePaddle 3.3.1) compute, DCNv2 included (``torchvision.ops.deform_conv2d`` against
``paddle.vision.ops.deform_conv2d``): on random weights, BatchNorm statistics and DCN offsets
(``tests/test_reference_paddle.py``), raw head outputs agree within 4e-8 (PP-YOLOv2) and 4e-10
(YOLOv3) in float64; in float32 each framework is off its own float64 result by float32
rounding (about 1e-2 / 1e-4 on outputs of size 5 to 6), and the two by no more. The ``YOLOBox``
boxes and scores before NMS agree within 1e-4 px and 1e-6, except that Paddle clips boxes to
``[0, W - 1]`` and lumbardx to ``[0, W]``.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lumbardx.data.errors import InputError
from lumbardx.models.dcn import DeformableConvV2
from lumbardx.models.ppyolo_pan import SPP, DropBlock
from lumbardx.models.reference_weights import ImportReport
from lumbardx.models.resnet_vd import ConvNorm

try:  # numpy >= 2 pickles as numpy._core, 1.x as numpy.core (both names resolve here)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it (array bytes kept as a latin-1 string); any
    other codec is refused."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refused: the pickle asks for the {encoding!r} codec")
    return codecs.encode(text, "latin1")


#: The only globals a ``.pdparams`` pickle may name: numpy's array rebuilding, the bytes
#: decoding of protocol 2 (latin-1 only), and a dict class. Anything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
NAME_TABLE_KEY = "StructuredToParameterName@@"
BIG_PARAM_KEY = "UnpackBigParamInfor@@"  # paddle/framework/io_utils.py _unpack_saved_dict


class _PdparamsUnpickler(pickle.Unpickler):
    """Unpickler that resolves :data:`_ALLOWED` names and refuses every other."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol < 3)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused: the pickle asks for {module}.{name}, which "
                                         "a .pdparams file (names -> numpy arrays) never holds")
        return obj


@dataclass
class PaddleCheckpoint:
    """What a ``.pdparams`` file holds, read without running its code.

    Attributes:
        path: the file.
        state: Paddle tensor name -> float32 tensor (``backbone.conv1.conv1_1.conv.weight``...),
            in the file's order.
        param_names: Paddle's internal parameter names (``conv2d_0.w_0``) by tensor name, when
            the file has them.
        names: class names (a ``.pdparams`` file has none).
        source: what was read (``"pdparams"``).
    """

    path: Path
    state: dict[str, Tensor]
    param_names: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    source: str = "pdparams"


def _join_big_params(raw: dict[str, Any]) -> None:
    """Reassemble the arrays paddle.save split in slices (``UnpackBigParamInfor@@``)."""
    info = raw.pop(BIG_PARAM_KEY)
    for key, spec in info.items():
        parts = [raw.pop(part) for part in spec["slices"]]
        raw[key] = np.concatenate(parts).reshape(spec["OriginShape"])


def read_pdparams(path: str | Path) -> PaddleCheckpoint:
    """Read a PaddleDetection ``.pdparams`` file (module docstring).

    Raises:
        InputError: naming the file when it is missing, is not such a file, holds anything but
            numeric arrays, or its pickle names a global outside :data:`_ALLOWED`.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = _PdparamsUnpickler(f).load()
        if isinstance(raw, dict) and BIG_PARAM_KEY in raw:
            _join_big_params(raw)
    except FileNotFoundError as exc:
        raise InputError(path, "checkpoint not found") from exc
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refused"):
            raise InputError(path, f"not a PaddleDetection .pdparams file: {exc}") from exc
        raise InputError(path, f"not a readable .pdparams file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable .pdparams file ({type(exc).__name__}: {exc})"
                         ) from exc
    if not isinstance(raw, dict):
        raise InputError(path, f"not a PaddleDetection .pdparams file: holds a "
                               f"{type(raw).__name__}, not a dict of parameters")
    table = raw.pop(NAME_TABLE_KEY, {})
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # (paddle name, array): how paddle.save pickles a lone Tensor
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise InputError(path, f"{key!r} is a {kind}, not a numeric array: not a "
                                   "PaddleDetection .pdparams file")
        t = torch.from_numpy(np.ascontiguousarray(value))
        state[str(key)] = t.float() if t.is_floating_point() else t
    if not state:
        raise InputError(path, "holds no parameters")
    names = {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}
    return PaddleCheckpoint(path, state, names)


# ------------------------------------------------------------------ mapping tables
_BN = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}


class _Table:
    """Builds the map ``our tensor name -> (Paddle tensor name, transpose)`` module by module."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.map: dict[str, tuple[str, bool]] = {}

    def leaf(self, ours: str, theirs: str) -> None:
        """The tensors a module holds itself (``weight``, ``bias``, BN statistics)."""
        module = self.model.get_submodule(ours)
        names = [n for n, _ in module.named_parameters(recurse=False)]
        names += [n for n, _ in module.named_buffers(recurse=False) if n != "num_batches_tracked"]
        for n in names:
            their = _BN.get(n, n) if isinstance(module, nn.modules.batchnorm._BatchNorm) else n
            self.map[f"{ours}.{n}"] = (f"{theirs}.{their}", isinstance(module, nn.Linear))

    def conv_bn(self, ours: str, theirs: str, norm: str = "batch_norm") -> None:
        """Conv (or DCNv2) + BatchNorm: ours ``.conv/.bn`` (``common.Conv``) or ``.0/.1``
        (``nn.Sequential``) -> Paddle ``.conv`` (+ ``.conv_offset``) and ``.{norm}``."""
        module = self.model.get_submodule(ours)
        conv, bn = ("conv", "bn") if hasattr(module, "bn") else ("0", "1")
        if isinstance(module.get_submodule(conv), DeformableConvV2):
            self.leaf(f"{ours}.{conv}.conv_offset", f"{theirs}.conv_offset")
        self.leaf(f"{ours}.{conv}", f"{theirs}.conv")
        self.leaf(f"{ours}.{bn}", f"{theirs}.{norm}")


def _resnet_block_name(stage: int, count: int, index: int) -> str:
    """Paddle's ResNet block names (``ppdet/modeling/backbones/name_adapter.py``):
    ``res4a, res4b1 .. res4b22`` for stages of more than 10 blocks, else ``res3a, res3b``..."""
    if count > 10 and stage == 4:
        return f"res{stage}a" if index == 0 else f"res{stage}b{index}"
    return f"res{stage}{chr(ord('a') + index)}"


def _csp_block(t: _Table, ours: str, theirs: str) -> None:
    """``CSPBlock`` -> ``PPYOLODetBlockCSP`` (``conv_module.{j}.{0,1}``, ``.spp``)."""
    for side in ("conv1", "conv2", "conv3"):
        t.conv_bn(f"{ours}.{side}", f"{theirs}.{side}")
    k = 0
    for i, layer in enumerate(t.model.get_submodule(f"{ours}.conv_module")):
        if isinstance(layer, DropBlock):
            continue
        if isinstance(layer, SPP):
            t.conv_bn(f"{ours}.conv_module.{i}.conv", f"{theirs}.conv_module.spp.conv")
        else:
            t.conv_bn(f"{ours}.conv_module.{i}", f"{theirs}.conv_module.{k // 2}.{k % 2}")
        k += 1


def _ppyolov2_table(model: nn.Module) -> _Table:
    """ResNet-vd (``ppdet/modeling/backbones/resnet.py``), ``PPYOLOPAN`` and ``YOLOv3Head``."""
    t = _Table(model)
    for i in range(3):
        t.conv_bn(f"backbone.conv1.{i}", f"backbone.conv1.conv1_{i + 1}", "norm")
    for s, stage in enumerate(model.backbone.res_layers):
        for j, block in enumerate(stage):
            ours = f"backbone.res_layers.{s}.{j}"
            theirs = f"backbone.res{s + 2}.{_resnet_block_name(s + 2, len(stage), j)}"
            for branch in ("branch2a", "branch2b", "branch2c"):
                if hasattr(block, branch):
                    t.conv_bn(f"{ours}.{branch}", f"{theirs}.{branch}", "norm")
            if isinstance(block.short, ConvNorm):
                t.conv_bn(f"{ours}.short", f"{theirs}.short", "norm")
            elif block.short is not None:  # variant d, stride 2: avg-pool, then conv
                t.conv_bn(f"{ours}.short.1", f"{theirs}.short.conv", "norm")
    neck = model.neck
    for i in range(len(neck.fpn_blocks)):
        _csp_block(t, f"neck.fpn_blocks.{i}", f"neck.fpn.{i}")
    for i in range(len(neck.fpn_routes)):
        t.conv_bn(f"neck.fpn_routes.{i}", f"neck.fpn_transition.{i}")
    for i in range(len(neck.pan_blocks)):
        t.conv_bn(f"neck.pan_routes.{i}", f"neck.pan_transition.{i}")
        _csp_block(t, f"neck.pan_blocks.{i}", f"neck.pan.{i}")
    n = len(model.head.yolo_outputs)
    for k in range(n):  # ours stride 8 first, Paddle stride 32 first
        t.leaf(f"head.yolo_outputs.{k}", f"yolo_head.yolo_output.{n - 1 - k}")
    return t


def _yolov3_table(model: nn.Module) -> _Table:
    """DarkNet-53 (``ppdet/modeling/backbones/darknet.py``), ``YOLOv3FPN`` and ``YOLOv3Head``."""
    t = _Table(model)
    t.conv_bn("backbone.stem", "backbone.conv0")
    for i, stage in enumerate(model.backbone.stages):
        down = "backbone.downsample0" if i == 0 else f"backbone.stage.{i - 1}.downsample"
        t.conv_bn(f"backbone.stages.{i}.0", f"{down}.conv_bn_layer")
        for j in range(1, len(stage)):  # residual units: basicblock0, then "stage.{i}.{j}"
            unit = "basicblock0" if j == 1 else f"stage.{i}.{j - 1}"
            t.conv_bn(f"backbone.stages.{i}.{j}.cv1", f"backbone.stage.{i}.{unit}.conv1")
            t.conv_bn(f"backbone.stages.{i}.{j}.cv2", f"backbone.stage.{i}.{unit}.conv2")
    for k, (block, lateral) in enumerate((("block5", "lateral5"), ("block4", "lateral4"),
                                          ("block3", None))):
        for c, name in enumerate(("conv0", "conv1", "conv2", "conv3", "route")):
            t.conv_bn(f"neck.{block}.convs.{c}", f"neck.yolo_block.{k}.conv_module.{name}")
        t.conv_bn(f"neck.{block}.tip", f"neck.yolo_block.{k}.tip")
        if lateral is not None:
            t.conv_bn(f"neck.{lateral}", f"neck.yolo_transition.{k}")
    for k in range(3):
        t.leaf(f"head.m.{k}", f"yolo_head.yolo_output.{2 - k}")
    return t


#: Registry model -> (mapping table builder, IoU-aware head).
TABLES: dict[str, tuple[Callable[[nn.Module], _Table], bool]] = {
    "ppyolov2": (_ppyolov2_table, True),
    "ppyolov2-r101": (_ppyolov2_table, True),
    "yolov3": (_yolov3_table, False),
}
HEAD_KEY = "yolo_head.yolo_output.0.weight"


def paddle_names(model_name: str, model: nn.Module) -> dict[str, str]:
    """The mapping table: every tensor of the registry model ``model`` (a ``model_name``) ->
    the name of the PaddleDetection tensor it takes (BatchNorm's ``num_batches_tracked`` has
    none and is left out)."""
    return {ours: theirs for ours, (theirs, _) in TABLES[model_name][0](model).map.items()}


def import_paddle(path: str | Path, model_name: str
                  ) -> tuple[nn.Module, PaddleCheckpoint, ImportReport]:
    """Build ``model_name`` (``ppyolov2``, ``ppyolov2-r101`` or ``yolov3``) with the checkpoint
    head's class count and load the ``.pdparams`` file into it (module docstring).

    Returns:
        ``(model, reference, report)``; the model in eval mode.

    Raises:
        InputError: naming the file when it is not a readable ``.pdparams`` file or does not
            map completely (the report's summary says what did not).
    """
    from lumbardx.models.registry import build_model

    if model_name not in TABLES:
        raise InputError(None, f"--model {model_name!r}: PaddleDetection checkpoints map onto "
                               f"{', '.join(TABLES)}")
    build_table, iou_aware = TABLES[model_name]
    ref = read_pdparams(path)
    head = ref.state.get(HEAD_KEY)
    if head is None or head.ndim != 4:
        raise InputError(ref.path, f"no {HEAD_KEY}: not a PaddleDetection YOLOv3 / PP-YOLOv2 "
                                   "checkpoint")
    per_anchor = 6 if iou_aware else 5
    out_ch = int(head.shape[0])
    if out_ch % 3 or out_ch // 3 <= per_anchor:
        raise InputError(ref.path, f"head {HEAD_KEY} has {out_ch} outputs: not 3 anchors x "
                                   f"({per_anchor} + classes) as {model_name} needs")
    nc = out_ch // 3 - per_anchor
    model = build_model(model_name, nc)
    report = ImportReport(model_name, nc)
    table = build_table(model).map
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    take: dict[str, Tensor] = {}
    used: set[str] = set()
    for mk, mv in own.items():
        if mk not in table:
            report.unmapped_model.append(mk)
            continue
        rk, transpose = table[mk]
        if rk not in ref.state:
            report.unmapped_model.append(f"{mk} (no {rk})")
            continue
        rv = ref.state[rk].t() if transpose else ref.state[rk]
        used.add(rk)
        if tuple(rv.shape) != tuple(mv.shape):
            report.shape_mismatch.append((rk, mk, tuple(rv.shape), tuple(mv.shape)))
        else:
            take[mk] = rv.to(mv.dtype)
            report.mapped.append((rk, mk))
    report.unmapped_reference = [k for k in ref.state if k not in used]
    if not report.complete:
        raise InputError(ref.path, f"does not map onto {model_name}: {report.summary()}")
    model.load_state_dict(take, strict=False)
    return model.eval(), ref, report
