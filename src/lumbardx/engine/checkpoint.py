"""Checkpoints: atomic writes, exact-resume state, (partial) weight loading, and rebuilding the
detector a checkpoint describes (:func:`rebuild_detector`, the one place that does so).

A checkpoint is a plain ``dict`` saved with ``torch.save`` and read with
``torch.load(weights_only=True)`` (no pickled code, safe for files from elsewhere). Keys written
by the trainer:

``model`` (state dict of the trained weights), ``ema`` (EMA state or ``None``), ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (last finished, 0-based), ``step`` (iterations done),
``best_fitness``, ``rng`` (:func:`rng_state`), ``sampler`` (seed and next epoch), ``recipe``
(dict), ``model_name``, ``num_classes``, ``class_names``, ``seed``, ``lumbardx_version``.

To rebuild the detector without training data, a checkpoint must name its architecture
(``model_name``) and classes (``class_names``, or ``num_classes`` giving ``class_0`` ...); the
input size comes from ``image_size`` or ``recipe["image_size"]``. A detector with a second stage
(:func:`lumbardx.engine.slip_verifier.save_with_rescorer`) adds ``rescorer`` (its configuration,
:data:`lumbardx.models.slip_verifier.RESCORER_KEY`) and ``rescorer_training``; its weights are in
``model`` beside the detector's, under ``rescorer.``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lumbardx.data.errors import InputError
from lumbardx.io import atomic_save
from lumbardx.models.detector import Detector
from lumbardx.models.registry import available_models, build_model
from lumbardx.models.slip_verifier import RESCORER_KEY, build_rescorer


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`lumbardx.io.atomic_save`: temporary file
    in the same folder, fsync, ``os.replace``); a crash at any point leaves the previous file
    intact."""
    return atomic_save(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or a bare state dict).

    Raises:
        InputError: naming the file when it is missing or not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(path, f"not a readable PyTorch checkpoint ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), numpy and ``random``, in types
    ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        source: the file read.
        loaded: names of tensors copied into the model.
        shape_mismatch: ``name -> (checkpoint shape, model shape)`` for tensors skipped.
        missing: model tensors absent from the checkpoint (left as initialised).
        unexpected: checkpoint tensors with no counterpart in the model.
    """

    source: Path
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model tensor was loaded."""
        return not self.shape_mismatch and not self.missing

    def summary(self) -> str:
        """One line for the log."""
        return (f"{self.source}: loaded {len(self.loaded)} tensors, skipped "
                f"{len(self.shape_mismatch)} with another shape, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected")


def weights_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict to deploy from a checkpoint: the EMA weights when present, else
    ``model``; a bare state dict is returned as is."""
    ema = ckpt.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("model"), dict):
        return ema["model"]
    if isinstance(ckpt.get("model"), dict):
        return ckpt["model"]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise ValueError("checkpoint holds neither 'ema', 'model' nor a state dict")


def load_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load every tensor of a local checkpoint whose name and shape match ``model``.

    Tensors of another shape (e.g. the class channels of a head trained with another class
    count) and names the model lacks are skipped and listed in the returned report.

    Raises:
        InputError: naming the file when it cannot be read or holds no weights.
    """
    ckpt = load_checkpoint(path)
    try:
        src = weights_from_checkpoint(ckpt)
    except ValueError as exc:
        raise InputError(path, str(exc)) from exc
    report = LoadReport(Path(path))
    own = model.state_dict()
    take = {}
    for name, tensor in src.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.shape_mismatch[name] = (tuple(tensor.shape), tuple(own[name].shape))
        else:
            take[name] = tensor
            report.loaded.append(name)
    report.missing = [n for n in own if n not in src]
    model.load_state_dict(take, strict=False)
    return report


def check_model_name(name: str) -> None:
    """Raise :class:`InputError` naming the choices when ``name`` is not a registered model."""
    names = available_models()
    if name not in names:
        raise InputError(None, f"unknown model {name!r}; choose from {', '.join(names)}")


def build_detector(model_name: str, num_classes: int, image_size: int) -> Detector:
    """A randomly initialised registered detector (YOLOv5 gets the training size, which scales
    its objectness loss gain).

    Raises:
        InputError: ``model_name`` is not registered (:func:`check_model_name`).
    """
    check_model_name(model_name)
    kwargs: dict[str, Any] = {"image_size": image_size} if model_name.startswith("yolov5") else {}
    return build_model(model_name, num_classes, **kwargs)


@dataclass
class LoadedDetector:
    """A detector rebuilt from a checkpoint, with what inference needs.

    Attributes:
        model: the detector in eval mode on the requested device (EMA weights when saved).
        model_name: registry name; class_names: index -> name; image_size: square input size
            in pixels (the training size); pad_value: letterbox gray level of the recipe;
        recipe: the training recipe dict; path: the checkpoint; lumbardx_version: the writer's
            version when the checkpoint records it.
    """

    model: Detector
    model_name: str
    class_names: list[str]
    image_size: int
    pad_value: int
    recipe: dict[str, Any]
    path: Path
    lumbardx_version: str | None = None

    @property
    def sequence_pairs(self) -> bool:
        """Whether it was trained on T1/T2 pairs (its recipe's ``sequence_pairs``) and reads
        them (:class:`lumbardx.data.pairs.SequencePairs`)."""
        return bool(self.recipe.get("sequence_pairs"))


def checkpoint_spec(ckpt: dict[str, Any], path: Path) -> tuple[str, list[str], int]:
    """``(model_name, class_names, image_size)`` from a checkpoint's metadata.

    Raises:
        InputError: naming ``path`` when the architecture is missing or unknown, there are no
            class names (nor ``num_classes``), or no input size that is a multiple of 32.
    """
    name = ckpt.get("model_name")
    if not name:
        raise InputError(path, "the checkpoint lacks model_name (its architecture): use a "
                               "checkpoint written by 'lumbardx train'")
    if name not in available_models():
        raise InputError(path, f"unknown architecture {name!r} (available: "
                               f"{', '.join(available_models())})")
    names = ckpt.get("class_names")
    if names is None and isinstance(ckpt.get("num_classes"), int):
        names = [f"class_{i}" for i in range(ckpt["num_classes"])]
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(path, "the checkpoint holds no class names ('class_names' missing)")
    size = ckpt.get("image_size") or (ckpt.get("recipe") or {}).get("image_size")
    if not isinstance(size, int) or size < 32 or size % 32:
        raise InputError(path, f"the checkpoint holds no usable input size (got {size!r}); "
                               "expected 'image_size' or recipe.image_size, a multiple of 32")
    return str(name), list(names), size


def rebuild_detector(ckpt: dict[str, Any], path: str | Path,
                     device: str | torch.device = "cpu") -> LoadedDetector:
    """Rebuild the detector a checkpoint describes (:func:`checkpoint_spec`) with its deployed
    weights (:func:`weights_from_checkpoint`: EMA when saved), in eval mode on ``device``.
    A checkpoint with a ``rescorer`` entry (a second stage such as
    :class:`~lumbardx.models.slip_verifier.SlipVerifier`) gets it attached as
    ``Detector.rescorer``, its weights read from the same state dict.

    Args:
        ckpt: the dict read by :func:`load_checkpoint`.
        path: the file it came from (named in errors, kept in the result).
        device: where the model goes (``"cpu"``, ``"cuda:0"``...).

    Raises:
        InputError: naming ``path`` when the metadata is unusable (:func:`checkpoint_spec`),
            there are no weights, or the weights do not fit the named model.
    """
    path = Path(path)
    name, names, size = checkpoint_spec(ckpt, path)
    try:
        state = weights_from_checkpoint(ckpt)
    except ValueError as exc:
        raise InputError(path, str(exc)) from exc
    model = build_detector(name, len(names), size)
    if ckpt.get(RESCORER_KEY) is not None:
        try:
            model.rescorer = build_rescorer(ckpt[RESCORER_KEY])
        except ValueError as exc:
            raise InputError(path, f"unusable second stage ({RESCORER_KEY!r}): {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0:3] or [type(exc).__name__]
        raise InputError(path, f"weights do not fit a {name} with {len(names)} classes: "
                               f"{' '.join(s.strip() for s in first)}") from exc
    model.to(device).eval()
    recipe = dict(ckpt.get("recipe") or {})
    pad = int((recipe.get("augment") or {}).get("pad_value", 0))
    return LoadedDetector(model, name, names, size, pad, recipe, path,
                          ckpt.get("lumbardx_version"))
