"""SGD (or AdamW) with YOLOv5's three parameter groups (``utils/torch_utils.py``
``smart_optimizer``; Ultralytics ``BaseTrainer.build_optimizer`` builds AdamW the same way).

* ``bias``: every parameter named ``bias`` -- no weight decay;
* ``norm``: ``weight`` of normalisation layers (BatchNorm, GroupNorm, LayerNorm, ...) -- no
  weight decay;
* ``weight``: every other parameter -- weight decay.

PaddleDetection does the same with ``L2Decay(0.)`` on normalisation and head-bias parameters.
"""

from __future__ import annotations

from torch import nn
from torch.optim import SGD, AdamW, Optimizer

from lumbardx.engine.recipes import Recipe

_NORMS = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split trainable parameters into ``{"bias": [...], "norm": [...], "weight": [...]}``."""
    groups: dict[str, list[nn.Parameter]] = {"bias": [], "norm": [], "weight": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if name == "bias":
                groups["bias"].append(p)
            elif name == "weight" and isinstance(module, _NORMS):
                groups["norm"].append(p)
            else:
                groups["weight"].append(p)
    return groups


def build_optimizer(model: nn.Module, recipe: Recipe, world_size: int = 1) -> Optimizer:
    """``recipe.optimizer`` over the three groups; each group carries ``initial_lr`` and
    ``kind``.

    Weight decay is scaled by ``batch * world_size * accumulate / nominal_batch`` when the
    recipe accumulates gradients (YOLOv5 ``train.py``). AdamW takes ``betas = (momentum,
    0.999)`` (Ultralytics); its decay is decoupled (``torch.optim.AdamW``) and, as for SGD,
    applied to the ``weight`` group only.
    """
    wd = recipe.weight_decay
    if recipe.nominal_batch is not None:
        wd *= recipe.batch_size * world_size * recipe.accumulate(world_size) / recipe.nominal_batch
    g = param_groups(model)
    spec = [("bias", 0.0), ("norm", 0.0), ("weight", wd)]
    groups = [
        {"params": g[k], "weight_decay": decay, "kind": k, "initial_lr": recipe.lr0}
        for k, decay in spec
        if g[k]
    ]
    if recipe.optimizer == "adamw":
        return AdamW(groups, lr=recipe.lr0, betas=(recipe.momentum, 0.999))
    return SGD(groups, lr=recipe.lr0, momentum=recipe.momentum, nesterov=recipe.nesterov)
