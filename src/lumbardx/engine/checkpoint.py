"""Checkpoints: atomic writes, exact-resume state, and (partial) weight loading.

A checkpoint is a plain ``dict`` saved with ``torch.save`` and read with
``torch.load(weights_only=True)`` (no pickled code, safe for files from elsewhere). Keys written
by the trainer:

``model`` (state dict of the trained weights), ``ema`` (EMA state or ``None``), ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (last finished, 0-based), ``step`` (iterations done),
``best_fitness``, ``rng`` (:func:`rng_state`), ``sampler`` (seed and next epoch), ``recipe``
(dict), ``model_name``, ``num_classes``, ``class_names``, ``seed``.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lumbardx.data.errors import InputError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed to disk, and replaces
    ``path`` with ``os.replace``; a crash at any point leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
