"""Learning-rate and momentum schedules with linear warm-up, evaluated per iteration.

The schedule is a pure function of the global iteration ``step`` and the ``epoch``, so that a
resumed run reproduces it exactly from the two counters stored in the checkpoint.

* ``linear`` (YOLOv5 ``train.py``): ``f(e) = (1 - e / E) * (1 - lrf) + lrf``.
* ``cosine`` (YOLOv5 ``utils/general.py`` ``one_cycle(1, lrf, E)``):
  ``f(e) = ((1 - cos(pi * e / E)) / 2) * (lrf - 1) + 1``.
* ``piecewise`` (PaddleDetection ``PiecewiseDecay``):
  ``f(e) = gamma ** #{m in milestones: e >= m}``.

Warm-up over the first ``W`` iterations interpolates linearly from a start value to the
scheduled value (YOLOv5 ``np.interp(ni, [0, nw], [start, lr0 * f(epoch)])``; PaddleDetection
``LinearWarmup`` with ``start_factor``): weights and normalisation parameters start at
``warmup_start_factor * lr``, biases at ``warmup_bias_lr`` when the recipe sets it (YOLOv5), and
momentum rises from ``warmup_momentum`` to ``momentum``.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer

from lumbardx.engine.recipes import Recipe


def schedule_factor(recipe: Recipe, epoch: int) -> float:
    """The multiplier of ``lr0`` at ``epoch`` (0-based) before warm-up is applied."""
    e, total = float(epoch), float(recipe.epochs)
    if recipe.schedule == "linear":
        return (1.0 - e / total) * (1.0 - recipe.lrf) + recipe.lrf
    if recipe.schedule == "cosine":
        return ((1.0 - math.cos(e * math.pi / total)) / 2.0) * (recipe.lrf - 1.0) + 1.0
    passed = sum(1 for m in recipe.milestones if epoch >= m)
    return recipe.gamma**passed


def warmup_iterations(recipe: Recipe, iters_per_epoch: int) -> int:
    """Warm-up length in iterations (optimiser steps are not counted: every batch is)."""
    if recipe.warmup_iters is not None:
        return int(recipe.warmup_iters)
    if recipe.warmup_epochs <= 0:
        return 0
    return max(round(recipe.warmup_epochs * iters_per_epoch), recipe.warmup_min_iters)


class WarmupSchedule:
    """Sets ``lr`` (and ``momentum``) of every param group for a given iteration and epoch.

    Param groups must carry ``"initial_lr"`` and ``"kind"`` (``"bias"``, ``"norm"`` or
    ``"weight"``), as :func:`lumbardx.engine.optim.build_optimizer` makes them.
    """

    def __init__(self, optimizer: Optimizer, recipe: Recipe, iters_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.recipe = recipe
        self.iters_per_epoch = iters_per_epoch
        self.warmup = warmup_iterations(recipe, iters_per_epoch)
        self.last_step = -1
        self.last_epoch = -1

    def values(self, step: int, epoch: int) -> list[tuple[float, float]]:
        """``(lr, momentum)`` for each param group at global iteration ``step``."""
        r = self.recipe
        f = schedule_factor(r, epoch)
        out = []
        for group in self.optimizer.param_groups:
            target = group["initial_lr"] * f
            momentum = r.momentum
            if step < self.warmup:
                t = step / self.warmup
                if group.get("kind") == "bias" and r.warmup_bias_lr is not None:
                    start = r.warmup_bias_lr
                else:
                    start = r.warmup_start_factor * target
                target = start + (target - start) * t
                if r.warmup_momentum is not None:
                    momentum = r.warmup_momentum + (r.momentum - r.warmup_momentum) * t
            out.append((target, momentum))
        return out

    def step(self, step: int, epoch: int) -> None:
        """Write the values of ``(step, epoch)`` into the optimiser's param groups."""
        for group, (lr, momentum) in zip(self.optimizer.param_groups, self.values(step, epoch)):
            group["lr"] = lr
            if "momentum" in group:
                group["momentum"] = momentum
        self.last_step, self.last_epoch = step, epoch

    def state_dict(self) -> dict[str, Any]:
        """The counters (the schedule itself is rebuilt from the recipe)."""
        return {"last_step": self.last_step, "last_epoch": self.last_epoch,
                "warmup": self.warmup, "iters_per_epoch": self.iters_per_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters saved by :meth:`state_dict`."""
        self.last_step = int(state["last_step"])
        self.last_epoch = int(state["last_epoch"])
        self.warmup = int(state["warmup"])
        self.iters_per_epoch = int(state["iters_per_epoch"])
