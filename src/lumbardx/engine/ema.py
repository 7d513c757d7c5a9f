"""Exponential moving average of model weights, with the two references' decay ramps.

* ``yolov5`` (ultralytics/yolov5 ``utils/torch_utils.py`` ``ModelEMA``):
  ``d(t) = decay * (1 - exp(-t / tau))`` with ``t`` the number of updates so far (after
  incrementing), default ``decay = 0.9999``, ``tau = 2000``.
* ``paddle`` (PaddleDetection ``ppdet/optimizer/ema.py``, ``ema_decay_type: threshold``):
  ``d(t) = min(decay, (1 + t) / (10 + t))`` with ``t`` the number of updates before this one,
  default ``decay = 0.9998``.

Each update sets ``ema = d * ema + (1 - d) * model`` for every floating-point entry of the
state dict (parameters and BatchNorm running statistics); integer buffers (BatchNorm's
``num_batches_tracked``) are copied. The EMA model is the one evaluated and saved.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside ``DistributedDataParallel`` / ``DataParallel``."""
    return model.module if hasattr(model, "module") else model


class ModelEMA:
    """A detached copy of ``model`` whose weights follow an exponential moving average.

    Args:
        model: the model being trained (may be wrapped in DDP).
        kind: ``"yolov5"`` or ``"paddle"`` decay ramp (module docstring).
        decay: the asymptotic decay.
        tau: ramp time constant in updates (``yolov5`` only).
    """

    def __init__(
        self,
        model: nn.Module,
        kind: Literal["yolov5", "paddle"] = "yolov5",
        decay: float = 0.9999,
        tau: float = 2000.0,
    ) -> None:
        if kind not in ("yolov5", "paddle"):
            raise ValueError(f"unknown EMA kind {kind!r}")
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.kind = kind
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay used by the update that brings the counter from ``updates`` to +1."""
        if self.kind == "yolov5":
            return self.decay * (1.0 - math.exp(-(updates + 1) / self.tau))
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        d = self.decay_at(self.updates)
        self.updates += 1
        msd = unwrap(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach().to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(msd[k])

    def state_dict(self) -> dict[str, Any]:
        """Weights and the update counter."""
        return {"model": self.ema.state_dict(), "updates": self.updates, "kind": self.kind,
                "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights and counter saved by :meth:`state_dict`."""
        self.ema.load_state_dict(state["model"])
        self.updates = int(state["updates"])
