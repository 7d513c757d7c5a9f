"""Loading a trained detector -- a checkpoint file or the shipped weights -- ready to run.

Where weights come from (never downloaded):

* ``weights=None``: a **shipped** file, ``lumbardx/weights/<choice>.pt`` installed with the
  package (read through :mod:`importlib.resources`), ``choice`` ``"default"``, ``"best"`` or
  ``"single"`` (a model reading one slice, for studies that a shipped T1+T2 model cannot read
  as a pair: :func:`shipped_single_slice`).
  The environment variable ``LUMBARDX_WEIGHTS_DIR`` points to another folder holding those
  files (a site that installs weights apart from the package). See ``lumbardx/weights/README.md``.
* ``weights=<file>.pt``: a checkpoint written by the engine (``last.pt`` / ``best.pt``, keys in
  :mod:`lumbardx.engine.checkpoint`; the EMA weights are used when present) or a file of the
  same layout holding only ``model`` / ``ema`` and the metadata keys below.
* ``weights=<file>.onnx``: a file written by :func:`lumbardx.models.export.export_onnx`
  (ONNX Runtime backend; thresholds cannot travel in it, the defaults apply).

Every ``.pt`` file is read with ``torch.load(weights_only=True)`` (no pickled code runs) and
the network rebuilt by :func:`lumbardx.engine.checkpoint.rebuild_detector`: the checkpoint must
name its architecture (``model_name``) and classes (``class_names`` or ``num_classes``); the
input size comes from ``image_size`` or ``recipe["image_size"]``.
Optional keys: ``thresholds`` (class name -> decision threshold in [0, 1], chosen on
validation data by :mod:`lumbardx.clinical.thresholds`; classes without one use
:data:`~lumbardx.clinical.thresholds.DEFAULT_THRESHOLDS`), ``lumbardx_version`` and ``tag``
(shown in reports as the model version) and ``training_data``; ``rescorer`` (a second stage,
e.g. the spondylolisthesis verifier of :mod:`lumbardx.models.slip_verifier`, rebuilt with the
detector and run after it by either backend). A model card
``<weights>.json`` next to the file may also give ``training_data``.

The model's post-process keeps candidates down to the lowest decision threshold (boxes below
every threshold could never count as findings), so diagnosis does not carry the thousands of
low-score boxes that evaluation (conf 0.001) needs; a model with a second stage that can raise
a score (``rescorer``) keeps them down to the lowest score that the second stage could lift to
a threshold (:func:`candidate_floor`), 0.001 when it cannot say. Both backends apply the same
floor, also after the thresholds change (:func:`set_candidate_floor`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lumbardx import __version__
from lumbardx.clinical.thresholds import DEFAULT_THRESHOLDS
from lumbardx.data.errors import InputError, LumbardxError
from lumbardx.engine.checkpoint import load_checkpoint, rebuild_detector
from lumbardx.models.detector import Detector
from lumbardx.models.runtime import OnnxBackend, TorchBackend, choose_backend
from lumbardx.study import PAIR_INPUTS, ModelInfo

log = logging.getLogger(__name__)

#: Shipped weight choices (``--model``) and their file names in ``lumbardx/weights/``.
SHIPPED: dict[str, str] = {"default": "default.pt", "best": "best.pt", "single": "single.pt"}
#: The shipped choice that reads one slice, used for a shipped T1+T2 model's single slices.
SINGLE_SLICE_CHOICE = "single"
#: Environment variable naming a folder that replaces ``lumbardx/weights/``.
WEIGHTS_DIR_ENV = "LUMBARDX_WEIGHTS_DIR"
#: Decision threshold of a class outside ``DEFAULT_THRESHOLDS`` when the checkpoint chose none:
#: the confidence threshold of YOLOv5 ``detect.py`` (``conf_thres=0.25``), as those defaults.
DEFAULT_THRESHOLD = 0.25

Backend = TorchBackend | OnnxBackend


class NoShippedWeightsError(LumbardxError, FileNotFoundError):
    """The shipped weights asked for are not installed."""


@dataclass
class LoadedModel:
    """A detector ready for diagnosis.

    Attributes:
        backend: runs ``float32 [B, 3, S, S]`` images in [0, 1] -> per image ``boxes [K, 4]``
            (xyxy input pixels), ``scores [K]``, ``labels [K]`` (:mod:`lumbardx.models.runtime`).
        info: name, version, weights hash, classes, input size and backend (for findings.json).
        thresholds: decision threshold of every class; a box counts as a finding when its
            score reaches its class threshold.
        chosen: the classes whose threshold was chosen (stored in the file or given by the
            user); the others have the defaults.
        model: the PyTorch detector (``None`` for an ONNX file).
        source: the weights file (``None`` for an in-memory model).
        checkpoint_meta: metadata read from the file (epoch, recipe name, fitness...).
    """

    backend: Backend
    info: ModelInfo
    thresholds: dict[str, float]
    chosen: set[str] = field(default_factory=set)
    model: Detector | None = None
    source: Path | None = None
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)

    def set_thresholds(self, chosen: Mapping[str, float]) -> None:
        """Replace the thresholds of some classes (validated as :func:`parse_thresholds`); a
        class whose threshold changes loses its sensitivity evidence (measured at the old
        one)."""
        new = parse_thresholds(chosen, self.class_names, None)
        for name, value in new.items():
            if value != self.thresholds.get(name):
                self.info.sensitivity_evidence.pop(name, None)
        if not self.info.sensitivity_evidence:
            self.info.sensitivity_basis = None
        self.thresholds.update(new)
        self.chosen |= set(new)
        if self.model is not None:
            set_candidate_floor(self.model, candidate_floor(self.model, self.thresholds,
                                                            self.class_names), self.backend)

    @property
    def image_size(self) -> int:
        """Square network input size in pixels."""
        return self.info.image_size

    @property
    def class_names(self) -> list[str]:
        """Class names, index order."""
        return list(self.info.class_names)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_folder() -> Path:
    """The folder holding shipped weights: ``$LUMBARDX_WEIGHTS_DIR`` or ``lumbardx/weights``."""
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("lumbardx") / "weights"))


def shipped_choices() -> list[str]:
    """The shipped choices (``"default"``, ``"best"``) whose file is installed."""
    folder = weights_folder()
    return [name for name, file in SHIPPED.items() if (folder / file).is_file()]


def shipped_weights(choice: str = "default") -> Path:
    """Path of the shipped weights ``choice`` (a key of :data:`SHIPPED`).

    Raises:
        ValueError: unknown choice.
        NoShippedWeightsError: the file is not installed (the message says how to pass
            ``--weights`` instead).
    """
    if choice not in SHIPPED:
        raise ValueError(f"unknown model {choice!r}: use {', '.join(SHIPPED)}, or pass a "
                         "checkpoint file with --weights")
    folder = weights_folder()
    path = folder / SHIPPED[choice]
    if not path.is_file():
        have = shipped_choices()
        also = f" (installed: {', '.join(have)})" if have else ""
        raise NoShippedWeightsError(
            f"no shipped weights are installed for model {choice!r}: {path} does not exist"
            f"{also}. Pass a trained checkpoint with --weights PATH (Python: "
            f"weights=PATH), e.g. the best.pt written by training, or set {WEIGHTS_DIR_ENV} "
            "to a folder holding default.pt")
    return path


def shipped_single_slice(choice: str) -> Path | None:
    """The shipped single-slice model that goes with shipped choice ``choice``, or ``None``.

    A detector trained on T1/T2 pairs reads a lone slice worse than a detector trained on
    single slices, so a shipped pair model is paired with the shipped ``"single"`` choice,
    which diagnosis uses for image files and studies without a co-registered pair. ``None``
    when ``choice`` is itself that model or ``single.pt`` is not installed.
    """
    if choice == SINGLE_SLICE_CHOICE:
        return None
    path = weights_folder() / SHIPPED[SINGLE_SLICE_CHOICE]
    return path if path.is_file() else None


def parse_thresholds(raw: Any, class_names: list[str], where: Path | None) -> dict[str, float]:
    """Validate a ``class name -> threshold`` mapping from a file.

    Raises:
        InputError: not a mapping, unknown class name, or a value outside [0, 1].
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InputError(where, f"'thresholds' must map class names to numbers, got "
                                f"{type(raw).__name__}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if name not in class_names:
            raise InputError(where, f"threshold for unknown class {name!r} (classes: "
                                    f"{', '.join(class_names)})")
        try:
            v = float(value.item() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError):
            raise InputError(where, f"threshold of {name!r} is not a number: {value!r}") from None
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise InputError(where, f"threshold of {name!r} must lie in [0, 1], got {v}")
        out[str(name)] = v
    return out


#: :attr:`~lumbardx.study.ModelInfo.sensitivity_basis` of evidence from the threshold choice.
THRESHOLD_CHOICE_BASIS = ("the discs the thresholds were chosen on (held-out patients of the "
                          "training data, every box grouped)")


def _matching(name: Any, threshold: Any, thresholds: Mapping[str, float]) -> bool:
    try:
        return name in thresholds and math.isclose(float(threshold), thresholds[name],
                                                   rel_tol=0, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def sensitivity_evidence(call_evidence: Any, threshold_evidence: Any,
                         thresholds: Mapping[str, float]
                         ) -> tuple[dict[str, tuple[int, int]], str | None]:
    """Class -> ``(called, positives)``: of the held-out discs with each finding, how many the
    model called, and on what basis (``None`` without evidence).

    Preferred: a release's ``call_evidence`` (``{"calls": {class: {"called", "positives",
    "threshold", ...}}, "basis": str}``, :func:`lumbardx.clinical.thresholds.finding_calls`:
    the discs called as diagnosis calls them). Otherwise the ``threshold_evidence`` of the
    threshold choice (:class:`lumbardx.clinical.thresholds.ThresholdChoice` per class: the
    discs that reached the threshold, every box grouped; :data:`THRESHOLD_CHOICE_BASIS`). Only
    classes whose decision threshold is still the one measured; malformed entries are left out
    (the evidence is a statement in reports, not needed to run)."""
    out: dict[str, tuple[int, int]] = {}
    if isinstance(call_evidence, Mapping) and isinstance(call_evidence.get("calls"), Mapping):
        for name, ev in call_evidence["calls"].items():
            try:
                called, positives = int(ev["called"]), int(ev["positives"])
            except (KeyError, TypeError, ValueError):
                continue
            if _matching(name, ev.get("threshold"), thresholds) and 0 <= called <= positives \
                    and positives > 0:
                out[str(name)] = (called, positives)
        if out:
            return out, str(call_evidence.get("basis") or "held-out discs")
    if not isinstance(threshold_evidence, Mapping):
        return out, None
    for name, ev in threshold_evidence.items():
        try:
            sens, positives = float(ev["sensitivity"]), int(ev["n_positive"])
        except (KeyError, TypeError, ValueError):
            continue
        if _matching(name, ev.get("threshold"), thresholds) and positives > 0 \
                and 0.0 <= sens <= 1.0:
            out[str(name)] = (round(sens * positives), positives)
    return out, (THRESHOLD_CHOICE_BASIS if out else None)


def default_thresholds(class_names: list[str]) -> dict[str, float]:
    """:data:`~lumbardx.clinical.thresholds.DEFAULT_THRESHOLDS` for ``class_names``
    (:data:`DEFAULT_THRESHOLD` for classes outside the study's three)."""
    return {n: DEFAULT_THRESHOLDS.get(n, DEFAULT_THRESHOLD) for n in class_names}


#: Confidence down to which the post-process keeps candidates in evaluation (as YOLOv5 val).
EVAL_CONF = 0.001


def candidate_floor(model: Detector, thresholds: Mapping[str, float],
                    class_names: list[str]) -> float:
    """The lowest detector score that can still end as a finding: the lowest decision
    threshold, or for a model with a second stage that may raise a score
    (``Detector.rescorer``) the lowest score it could lift to its class threshold
    (``least_score_reaching``), :data:`EVAL_CONF` when the stage cannot say; never above the
    lowest threshold, never below :data:`EVAL_CONF`."""
    lowest = min(float(thresholds[n]) for n in class_names)
    rescorer = getattr(model, "rescorer", None)
    if rescorer is None:
        return lowest
    reach = getattr(rescorer, "least_score_reaching", None)
    if reach is None:
        return min(lowest, EVAL_CONF)
    floor = min(reach(float(thresholds[n]), i) for i, n in enumerate(class_names))
    return min(lowest, max(float(floor), EVAL_CONF))


def set_candidate_floor(model: Detector, floor: float, backend: Any = None) -> None:
    """Let the post-process keep boxes down to ``floor`` (:func:`candidate_floor`): the
    PyTorch model's, and an ONNX Runtime ``backend``'s NMS settings when given (its graph
    decodes every candidate; the floor is applied in its NMS)."""
    post = model.postprocess
    if hasattr(post, "conf_thresh"):
        post.conf_thresh = float(floor)  # type: ignore[assignment]
    settings = getattr(backend, "postprocess", None)
    if isinstance(settings, dict) and "conf_thresh" in settings:
        settings["conf_thresh"] = float(floor)


def from_detector(
    model: Detector,
    class_names: list[str],
    image_size: int,
    thresholds: Mapping[str, float] | None = None,
    backend: str = "torch",
    device: str = "cpu",
    threads: int | None = None,
    source: Path | None = None,
    weights_sha256: str | None = None,
    version: str | None = None,
    training_data: str | None = None,
    meta: dict[str, Any] | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Wrap an in-memory detector (e.g. one just trained) as a :class:`LoadedModel`.

    ``thresholds`` are the chosen ones (others: :func:`default_thresholds`); ``backend`` is
    ``"torch"``, ``"onnx"`` or ``"auto"`` (:func:`lumbardx.models.runtime.choose_backend`);
    ``evidence`` holds the release's ``call_evidence`` and ``threshold_evidence``, if any
    (:func:`sensitivity_evidence`).
    """
    chosen = parse_thresholds(dict(thresholds or {}), class_names, source)
    thr = {**default_thresholds(class_names), **chosen}
    # An exported graph bakes the floor of YOLOv3-style decoding: export at the lowest useful
    # one, then apply the model's floor to both backends (thresholds may later go down).
    set_candidate_floor(model, EVAL_CONF)
    run = choose_backend(model.eval(), backend,  # type: ignore[arg-type]
                         image_size, class_names, device, threads)
    set_candidate_floor(model, candidate_floor(model, thr, list(class_names)), run)
    info = ModelInfo(
        name=model.name or type(model).__name__, version=version or f"lumbardx {__version__}",
        weights_sha256=weights_sha256, class_names=list(class_names), image_size=int(image_size),
        backend="onnxruntime" if isinstance(run, OnnxBackend) else "torch",
        training_data=training_data,
        inputs=PAIR_INPUTS if (meta or {}).get("sequence_pairs") else "slice")
    info.sensitivity_evidence, info.sensitivity_basis = sensitivity_evidence(
        (evidence or {}).get("call_evidence"), (evidence or {}).get("threshold_evidence"), thr)
    return LoadedModel(run, info, thr, set(chosen), model, source, dict(meta or {}))


def model_card(path: Path) -> dict[str, Any]:
    """The model card ``<weights>.json`` next to a weights file (``{}`` when absent).

    Raises:
        InputError: the card exists but is not a JSON object.
    """
    card = path.with_suffix(".json")
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(card, f"model card is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(card, "model card must be a JSON object")
    return data


def _version(ckpt: dict[str, Any], path: Path) -> str:
    trained = ckpt.get("lumbardx_version")
    tag = ckpt.get("tag") or path.name
    epoch = ckpt.get("epoch")
    parts = [f"lumbardx {trained}" if trained else "lumbardx (version not recorded)", str(tag)]
    if isinstance(epoch, int):
        parts.append(f"epoch {epoch + 1}")
    return ", ".join(parts)


def load_detector(
    weights: Path | str | None = None,
    device: str = "cpu",
    *,
    model: str = "default",
    backend: str = "torch",
    threads: int | None = None,
) -> LoadedModel:
    """Load a detector for diagnosis.

    Args:
        weights: a checkpoint ``.pt`` or an exported ``.onnx`` file; ``None`` uses the shipped
            weights ``model``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (ONNX files run on the CPU).
        model: shipped choice when ``weights`` is ``None``: ``"default"``, ``"best"`` or
            ``"single"``.
        backend: ``"torch"``, ``"onnx"`` (export to ONNX Runtime) or ``"auto"``.
        threads: intra-op threads of ONNX Runtime (PyTorch's are set by the caller).

    Returns:
        The ready detector with its :class:`~lumbardx.study.ModelInfo` (sha256 of the file)
        and decision thresholds.

    Raises:
        NoShippedWeightsError: ``weights`` is ``None`` and the shipped file is not installed.
        InputError: naming the file when it is missing, unreadable or not a lumbardx model.
    """
    path = shipped_weights(model) if weights is None else Path(weights)
    if not path.is_file():
        raise InputError(path, "weights file not found" if not path.exists()
                         else "is not a file (expected a .pt checkpoint or .onnx export)")
    digest = sha256_file(path)
    card = model_card(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, digest, card, threads)
    ckpt = load_checkpoint(path, map_location="cpu")
    det = rebuild_detector(ckpt, path)
    net, names, size = det.model, det.class_names, det.image_size
    thresholds = parse_thresholds(ckpt.get("thresholds", card.get("thresholds")), names, path)
    meta = {k: ckpt[k] for k in ("epoch", "best_fitness", "seed") if k in ckpt}
    meta["recipe"] = (ckpt.get("recipe") or {}).get("name")
    meta["sequence_pairs"] = det.sequence_pairs
    meta["ema"] = isinstance(ckpt.get("ema"), dict)
    try:
        return from_detector(net, names, size, thresholds, backend, device, threads, path,
                             digest, _version(ckpt, path),
                             ckpt.get("training_data") or card.get("training_data"), meta,
                             {key: ckpt.get(key, card.get(key))
                              for key in ("call_evidence", "threshold_evidence")})
    except (ValueError, RuntimeError) as exc:
        raise InputError(path, f"cannot run this model with backend {backend!r} on "
                               f"{device}: {exc}") from exc


def _load_onnx(path: Path, digest: str, card: dict[str, Any], threads: int | None
               ) -> LoadedModel:
    """An exported ``.onnx`` file in ONNX Runtime; thresholds from the model card if any."""
    run = OnnxBackend(path, threads=threads)
    if run.image_size[0] != run.image_size[1]:
        raise InputError(path, f"exported at {run.image_size[0]}x{run.image_size[1]}; "
                               "diagnosis needs a square input size")
    chosen = parse_thresholds(card.get("thresholds"), run.class_names, path)
    thr = {**default_thresholds(run.class_names), **chosen}
    # NMS runs outside the graph: keep candidates down to the lowest decision threshold only
    run.postprocess["conf_thresh"] = max(float(run.postprocess.get("conf_thresh", 0.0)),
                                         min(thr.values()))
    info = ModelInfo(run.name, f"lumbardx {run.lumbardx_version or '(not recorded)'}, "
                     f"{path.name}", digest, run.class_names, run.image_size[0], "onnxruntime",
                     card.get("training_data"),
                     PAIR_INPUTS if run.inputs == PAIR_INPUTS else "slice")
    info.sensitivity_evidence, info.sensitivity_basis = sensitivity_evidence(
        card.get("call_evidence"), card.get("threshold_evidence"), thr)
    return LoadedModel(run, info, thr, set(chosen), None, path)
