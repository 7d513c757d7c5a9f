"""Run by the reference environment's Python (``.venv-reference``, with the ``yolov5`` 7.0.14
package; see scripts/install-test-deps.sh): build a reference model from its yaml with random
weights and random BatchNorm statistics, save it as an Ultralytics checkpoint (the model
pickled whole, in half precision, as ``train.py`` saves it) and save its raw head outputs and
decoded boxes on a fixed random input.

Usage: ``python tests/reference_yolov5.py OUT_DIR NAME:NC [NAME:NC ...]`` -> per model
``OUT_DIR/NAME.pt`` (checkpoint) and ``OUT_DIR/NAME-outputs.pt`` (``{"x", "raw", "decoded"}``,
float32).
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import yolov5
from yolov5.models.yolo import Model


def write(name: str, nc: int, out: str) -> None:
    """One reference model, its checkpoint and its outputs (module docstring)."""
    root = os.path.join(os.path.dirname(yolov5.__file__), "models")
    cfg = os.path.join(root, f"{name}.yaml")
    if not os.path.exists(cfg):
        cfg = os.path.join(root, "hub", f"{name}.yaml")
    torch.manual_seed(0)
    model = Model(cfg, ch=3, nc=nc)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.names = [f"class-{i}" for i in range(nc)]
    torch.save({"epoch": -1, "best_fitness": None, "model": copy.deepcopy(model).half(),
                "ema": None, "updates": None, "optimizer": None, "opt": {}, "git": None,
                "date": None}, os.path.join(out, f"{name}.pt"))
    reference = copy.deepcopy(model).half().float().eval()  # the weights as saved
    x = torch.rand(2, 3, 256, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoded, raw = reference(x)
    torch.save({"x": x, "raw": raw, "decoded": decoded},
               os.path.join(out, f"{name}-outputs.pt"))


if __name__ == "__main__":
    for spec in sys.argv[2:]:
        model_name, classes = spec.split(":")
        write(model_name, int(classes), sys.argv[1])
