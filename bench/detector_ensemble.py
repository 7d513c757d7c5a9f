"""Two or more fold detectors read each held-out image and their boxes are averaged: what an
ensemble of detectors gives, scored by fold against each member alone.

One training run of the detector is noisy on the rare class (two runs of the shipped recipe
differ by about 10 spondylolisthesis AP points on a fold), and averaging independently trained
models is the usual remedy, at the cost of one more detector pass per study. Each member is a
crossval's model folder (``fold<k>/last.pt``, the verifier applied as in diagnosis); every
member reads every held-out image of fold ``k`` (T1 and T2 together where the image has a
partner, boxes down to :data:`~lumbardx.models.pretrained.EVAL_CONF`) with its own fold-``k``
detector, and the boxes are fused as ``bench/scale_tta.py`` fuses sizes
(:func:`scale_tta.fuse_sizes` with members in place of sizes: per class, clusters at IoU >=
:data:`scale_tta.FUSE_IOU`; box the score-weighted mean; score the mean over members of each
member's best score in the cluster, 0 for a member without one). Only folds every member has
are read.

Scored per fold (:func:`scale_tta.score_folds`) for each member alone and for ``fused``: COCO
AP@0.5 per class (pycocotools, 101-point), the slip image-level AUC (an image's highest slip
score), and the disc level as diagnosis groups boxes at the F1 thresholds chosen on the other
folds' every-box discs of the same reading (nested). Paired per-fold differences of ``fused``
against each member, and against the better member of each fold, metric by metric (the
member a study would have been read with had it been chosen after the fact; for the disc
level's sensitivity and specificity each is its own better member, so that row flatters the
members).

**Pilot rule** (fixed before any fold was scored): an ensemble is worth a five-fold trial
against the shipped default (a second training of the shipped recipe as the other member)
when ``fused`` has slip AP higher than or equal to the better member in at least three
quarters of the folds scored, its mean slip AP is at least :data:`PILOT_SLIP_GAIN` points above
the members' mean, and its mean herniation AP is no more than :data:`PILOT_HERNIATION_LOSS`
points below the better member's. The pilot decides whether that training is worth its hours;
it does not change what ships.

Usage::

    python bench/detector_ensemble.py ../shared/data/yolospine-dev \\
        --detectors runs/cv-yolov5n-pairs-ddd-verifier/yolov5n \\
        --detectors runs/cv-yolov5n-pairs-dddign-verifier/yolov5n \\
        --out bench/results/detector_ensemble_pilot.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disc_level import read_fold
from machine_info import cpu_name
from scale_tta import FUSE_IOU, METRICS, fuse_sizes, score_folds
from segment_end_to_end import FOLDS, dataset_with_folds

from lumbardx.data.boxes import Box
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.pretrained import EVAL_CONF

#: truth, each member's boxes, (W, H)
Image = tuple[list[Box], list[list[Box]], tuple[int, int]]
#: Pilot rule: least mean slip AP gain of ``fused`` over the members' mean (AP points).
PILOT_SLIP_GAIN = 3.0
#: Pilot rule: most mean herniation AP ``fused`` may lose against the better member (points).
PILOT_HERNIATION_LOSS = 0.5
FUSED = "fused"


def member_names(n: int) -> list[str]:
    """``member0`` ... ``member<n-1>``, the order of ``--detectors``."""
    return [f"member{j}" for j in range(n)]


def readings(folds: dict[int, list[Image]]) -> dict[str, dict[int, list]]:
    """Each member's boxes alone and ``fused``, as ``{rule: {fold: [(truth, boxes, (W, H))]}}``."""
    n = len(next(iter(folds.values()))[0][1])
    out: dict[str, dict[int, list]] = {
        name: {k: [(truth, per[j], wh) for truth, per, wh in imgs] for k, imgs in folds.items()}
        for j, name in enumerate(member_names(n))}
    out[FUSED] = {k: [(truth, fuse_sizes(per), wh) for truth, per, wh in imgs]
                  for k, imgs in folds.items()}
    return out


def pilot(fused: list[dict[str, Any]], better: dict[str, list[float]], members_slip_mean: float
          ) -> dict[str, Any]:
    """The pilot rule (module docstring) on the scored folds: ``fused`` per fold, ``better``
    the better member's value per metric and fold, ``members_slip_mean`` the members' mean
    slip AP; its three parts and the verdict."""
    slip, hern = "ap50_spondylolisthesis", "ap50_herniation"
    ge_best = sum(f[slip] >= b for f, b in zip(fused, better[slip], strict=True))
    needed = math.ceil(0.75 * len(fused))
    gain = 100 * (sum(f[slip] for f in fused) / len(fused) - members_slip_mean)
    hern_loss = 100 * (sum(b - f[hern] for f, b in zip(fused, better[hern], strict=True))
                       / len(fused))
    parts = {"slip_ge_better_member": {"folds": ge_best, "of": len(fused), "needed": needed,
                                       "holds": ge_best >= needed},
             "slip_gain_over_members_mean": {"points": gain, "needed": PILOT_SLIP_GAIN,
                                             "holds": gain >= PILOT_SLIP_GAIN},
             "herniation_loss_vs_better_member": {"points": hern_loss,
                                                  "allowed": PILOT_HERNIATION_LOSS,
                                                  "holds": hern_loss <= PILOT_HERNIATION_LOSS}}
    worth = all(p["holds"] for p in parts.values())
    return {**parts, "verdict": "worth a five-fold trial" if worth else "not worth a trial"}


def compare(folds: dict[int, list[Image]]) -> dict[str, Any]:
    """Every member and ``fused`` scored, means over folds, ``fused`` paired by fold against
    each member and against the better member of each fold, and the pilot rule."""
    rules = {name: score_folds(images) for name, images in readings(folds).items()}
    members = [r for r in rules if r != FUSED]
    out: dict[str, Any] = {"rules": rules, "mean": {}, "paired_fused_minus": {}}
    for r, res in rules.items():
        out["mean"][r] = {m: fold_stat([f[m] for f in res["folds"]]).__dict__ for m in METRICS}
    fused = rules[FUSED]["folds"]
    for r in members:
        out["paired_fused_minus"][r] = {
            m: fold_differences([f[m] - g[m] for f, g in
                                 zip(fused, rules[r]["folds"], strict=True)])
            for m in METRICS}
    better = {m: [max(rules[r]["folds"][i][m] for r in members) for i in range(len(fused))]
              for m in METRICS}
    out["paired_fused_minus"]["better_member"] = {
        m: fold_differences([f[m] - b for f, b in zip(fused, better[m], strict=True)])
        for m in METRICS}
    members_slip_mean = float(np.mean([f["ap50_spondylolisthesis"]
                                       for r in members for f in rules[r]["folds"]]))
    out["pilot"] = pilot(fused, better, members_slip_mean)
    return out


def common_folds(detectors: list[Path], fold_of: dict[str, int]) -> list[int]:
    """The folds every member has a detector for (``fold<k>/last.pt``)."""
    return [k for k in sorted(set(fold_of.values()))
            if all((d / f"fold{k}" / "last.pt").is_file() for d in detectors)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--detectors", type=Path, action="append", required=True,
                    help="a crossval's model folder (fold<k>/last.pt per fold); repeat, 2 or more")
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if len(args.detectors) < 2:
        ap.error("an ensemble needs two or more --detectors")
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    ks = common_folds(args.detectors, fold_of)
    if len(ks) < 2:
        print("needs two or more folds that every member has a detector for", file=sys.stderr)
        return 2
    folds: dict[int, list[Image]] = {}
    for k in ks:
        per_member = [read_fold(k, ds, pairs, fold_of, d) for d in args.detectors]
        folds[k] = [(imgs[0][0], [im[1] for im in imgs], imgs[0][2])
                    for imgs in zip(*per_member, strict=True)]
        print(f"fold {k}: {len(folds[k])} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {"members": {name: str(d) for name, d in
                          zip(member_names(len(args.detectors)), args.detectors, strict=True)},
              "folds_scored": ks, "fuse_iou": FUSE_IOU,
              "candidates": f"every box down to {EVAL_CONF}",
              **compare(folds),
              "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for r, mean in result["mean"].items():
        print(f"{r:8s} " + ", ".join(f"{m} {mean[m]['mean']:.3f}" for m in METRICS))
    for r, diffs in result["paired_fused_minus"].items():
        print(f"fused - {r}: " + ", ".join(f"{m} {d['mean']:+.3f} [{d['wins']}:{d['losses']}]"
                                           for m, d in diffs.items()))
    print(f"pilot: {result['pilot']['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
