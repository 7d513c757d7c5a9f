"""Do competing class scores at one prediction help? Held-out AP with class-competitive scores.

A YOLOv5 head scores each class with its own sigmoid (multi-label): one prediction
can say herniation 0.8 and spondylolisthesis 0.3 at the same disc, and both boxes survive
per-class NMS. ``bench/class_confusion.py`` shows that this is where spondylolisthesis loses
its AP (its false positives sit on herniation discs and outscore the true slips). This
benchmark re-runs each fold's model on its held-out fold and rescores every prediction before
NMS, with ``p`` its class probabilities ``[nc]`` and ``o`` its objectness:

* ``independent``: ``o * p_c``, multi-label (the reference, what the shipped post-process
  does);
* ``single-label``: ``o * p_c`` of the best class only (YOLOv5 ``detect.py``'s NMS);
* ``normalised``: ``o * p_c / sum_k p_k`` (the classes as mutually exclusive);
* ``competitive``: ``o * p_c * p_c / sum_k p_k`` (the reference score, lowered when other
  classes fire at the same prediction).

Per-class AP@0.5 / mAP@0.5 (pycocotools, COCO 101-point, :func:`coco_evaluate`) per fold, their
mean, and pooled over folds (all held-out images ranked together, each scored by its own fold's
model). YOLOv5 models only (``YOLOv5PostProcess``). Nothing is trained or chosen on a held-out fold: every rule is fixed here.

Usage::

    python bench/class_rescoring.py ../shared/data/yolospine-dev runs/cv/yolov5n \
        --out bench/results/class_rescoring.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_fusion import held_out_set, load_predictions

from lumbardx.engine.crossval import load_detector
from lumbardx.engine.evaluate import evaluate
from lumbardx.engine.metrics import coco_evaluate
from lumbardx.io import atomic_write_text
from lumbardx.models.decode import YOLOv5PostProcess, decode_yolov5, non_max_suppression

RULES = ("independent", "single-label", "normalised", "competitive")


def rescore(p: Tensor, rule: str) -> Tensor:
    """Class probabilities ``p [..., nc]`` -> the factors that multiply objectness under
    ``rule`` (module docstring; ``single-label`` keeps ``p`` and changes NMS instead)."""
    if rule in ("independent", "single-label"):
        return p
    share = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
    if rule == "normalised":
        return share
    if rule == "competitive":
        return p * share
    raise ValueError(f"unknown rule {rule!r}: use one of {RULES}")


def patch_scores(postprocess: YOLOv5PostProcess, rule: str) -> None:
    """Make ``postprocess`` (a :class:`YOLOv5PostProcess`) score with ``rule`` (patching
    again replaces the rule)."""
    if not isinstance(postprocess, YOLOv5PostProcess):
        raise SystemExit(f"only YOLOv5 post-processing is supported, not "
                         f"{type(postprocess).__name__}")
    pp = postprocess

    def forward(raw: list[Tensor], image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        pred = decode_yolov5(raw, pp.anchors, pp.strides)
        pred = torch.cat([pred[..., :5], rescore(pred[..., 5:], rule)], -1)
        return non_max_suppression(pred, pp.conf_thresh, pp.iou_thresh, pp.max_det,
                                   pp.multi_label and rule != "single-label", pp.agnostic,
                                   image_size=image_size)

    pp.forward = forward  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("model_dir", type=Path, help="crossval folder of one model (fold*/last.pt)")
    ap.add_argument("--weights", default="last.pt")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    folds = sorted(args.model_dir.glob("fold*/eval/predictions.json"))
    if not folds:
        raise SystemExit(f"no fold*/eval/predictions.json under {args.model_dir}")
    result: dict = {"rules": {}, "folds": [p.parent.parent.name for p in folds]}
    pooled: dict[str, tuple[list, list]] = {r: ([], []) for r in RULES}
    ds, _, _ = held_out_set(args.data, folds)  # checks every predicted image is in data
    names = list(ds.class_names)
    for pred_file in folds:
        fold_dir = pred_file.parent.parent
        held = load_predictions([pred_file], names)
        subset = [ds[i] for i, r in enumerate(ds.records) if r.image_id in held]  # held out
        det = load_detector(fold_dir / args.weights, "cpu")
        for rule in RULES:
            patch_scores(det.model.postprocess, rule)  # replaces the previous rule's
            res = evaluate(det.model, subset, image_size=det.image_size, class_names=names,
                           pad_value=det.pad_value)
            pooled[rule][0].extend(res.ground_truth)
            pooled[rule][1].extend(res.predictions)
            entry = {"ap50": res.ap50, "map50": res.map50, "map50_95": res.map50_95}
            result["rules"].setdefault(rule, {"folds": {}})["folds"][fold_dir.name] = entry
            print(f"{fold_dir.name} {rule:12s} mAP@0.5 {100 * res.map50:5.1f}  "
                  + "  ".join(f"{n} {100 * v:5.1f}" for n, v in res.ap50.items()), flush=True)
    for rule in RULES:
        per_fold = result["rules"][rule]["folds"].values()
        result["rules"][rule]["mean_map50"] = statistics.mean(f["map50"] for f in per_fold)
        cm = coco_evaluate(pooled[rule][0], pooled[rule][1], names)
        result["rules"][rule]["pooled"] = {
            "ap50": dict(zip(names, map(float, cm.ap50))), "map50": cm.map50}
        print(f"{rule:12s} mean over folds {100 * result['rules'][rule]['mean_map50']:5.1f}; "
              f"pooled " + "  ".join(f"{n} {100 * float(v):5.1f}" for n, v in zip(names, cm.ap50)))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
