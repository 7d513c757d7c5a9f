"""Which spondylolisthesis verifier and rescoring power? Leave-one-fold-out selection.

Inputs: the held-out predictions of a detector's cross-validation (``DET/fold<k>/eval/
predictions.json``) and of one or more ``lumbardx verifier crossval`` runs on the same folds
(``VER/fold<k>/eval/predictions.json``, all made with power 1, so each slip box's verifier
probability is ``p = rescored score ** 2 / detector score``; the boxes are the detector's,
matched exactly). For every verifier variant and power ``g`` of a fixed grid, every fold's
slip scores are recomputed as the verifier rescores them,
:func:`lumbardx.models.slip_verifier.rescore` (the other classes do not change) and scored with
pycocotools (AP@0.5, COCO 101-point), exactly what running the fold's model with that power
gives (the boxes and the other scores are the same).

Selection without the fold that is scored: for each fold ``k`` the (variant, power) with the
highest mean mAP@0.5 over the *other* folds is applied to fold ``k``; the mean of those
scores is the nested estimate. The choice on all folds is what a release would ship. With
``--peer`` the nested and the all-folds choices are paired with the peer's folds.

Usage::

    python bench/verifier_power.py ../shared/data/yolospine-dev runs/cv-yolov5n-v2/yolov5n \
        runs/cv-yolov5n-v2-verifier/yolov5n ... --peer bench/results/peer_yolo11n_cpu.json \
        --out bench/results/verifier_power.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_fusion import held_out_set, load_predictions

from lumbardx.engine.metrics import Prediction, coco_evaluate
from lumbardx.engine.table1 import ModelFolds, paired_comparison
from lumbardx.io import atomic_write_text
from lumbardx.models.slip_verifier import rescore

POWERS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
CLASS = "spondylolisthesis"


def verifier_probability(base: Prediction, rescored: Prediction, c: int, where: str
                         ) -> np.ndarray:
    """``p`` per box of ``base`` (1 for other classes) from the same boxes rescored at power 1
    (``sqrt(score * p)``).

    Raises:
        SystemExit: a slip box of ``base`` has no identical box in ``rescored``.
    """
    p = np.ones(len(base.scores), np.float64)
    for j in np.flatnonzero(base.labels == c):
        same = np.flatnonzero((rescored.labels == c)
                              & (np.abs(rescored.boxes - base.boxes[j]).max(1) < 1e-3))
        if not len(same):
            raise SystemExit(f"{where}: a {CLASS} box of the detector is missing")
        p[j] = min(1.0, float(rescored.scores[same[0]]) ** 2 / max(float(base.scores[j]), 1e-12))
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("detector", type=Path, help="CV/<model> of the detector alone")
    ap.add_argument("verifiers", type=Path, nargs="+", help="'verifier crossval' OUT/<model>")
    ap.add_argument("--peer", type=Path, default=None, help="peer results.json (same folds)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    files = sorted(args.detector.glob("fold*/eval/predictions.json"))
    ds, base, gts = held_out_set(args.data, files)
    names = list(ds.class_names)
    c = names.index(CLASS)
    folds = {f.parent.parent.name: sorted(load_predictions([f], names)) for f in files}
    scores: dict[str, dict[str, dict]] = {}  # rule -> fold -> {ap50, map50}
    for vdir in args.verifiers:
        settings = json.loads((vdir.parent / "crossval.json").read_text())
        power = settings["second_stage"]["verifier"].get("power", 1.0)
        if power != 1.0:
            raise SystemExit(f"{vdir}: made with power {power}; this needs power 1")
        ver = load_predictions(sorted(vdir.glob("fold*/eval/predictions.json")), names)
        probs = {i: verifier_probability(base[i], ver[i], c, f"{vdir} {i}") for i in base}
        for g in POWERS:
            rule = f"{vdir.parent.name} power {g:g}"
            for fold, ids in folds.items():
                preds = [Prediction(base[i].boxes, rescore(
                    torch.from_numpy(base[i].scores.astype(np.float64)),
                    torch.from_numpy(probs[i]), g).numpy().astype(np.float32), base[i].labels)
                         for i in ids]
                m = coco_evaluate([gts[i] for i in ids], preds, names)
                scores.setdefault(rule, {})[fold] = {
                    "ap50": dict(zip(names, map(float, m.ap50))), "map50": float(m.map50),
                    "map50_95": float(m.map50_95)}
            print(f"{rule:45s} " + " ".join(f"{100 * scores[rule][f]['map50']:5.1f}"
                                             for f in folds)
                  + f"  mean {100 * statistics.mean(v['map50'] for v in scores[rule].values()):.2f}",
                  flush=True)

    def mean_without(rule: str, skip: str | None) -> float:
        return statistics.mean(v["map50"] for f, v in scores[rule].items() if f != skip)

    nested = {}
    for fold in folds:
        rule = max(scores, key=lambda r: mean_without(r, fold))
        nested[fold] = {"rule": rule, **scores[rule][fold]}
    overall = max(scores, key=lambda r: mean_without(r, None))
    result = {"powers": list(POWERS), "rules": scores, "nested": nested,
              "nested_mean_map50": statistics.mean(v["map50"] for v in nested.values()),
              "chosen_on_all_folds": overall,
              "chosen_mean_map50": mean_without(overall, None)}
    print("nested: " + ", ".join(f"{f} {v['rule']} {100 * v['map50']:.1f}"
                                 for f, v in nested.items()))
    print(f"nested mean mAP@0.5 {100 * result['nested_mean_map50']:.2f}; chosen on all folds: "
          f"{overall} ({100 * result['chosen_mean_map50']:.2f})")
    if args.peer is not None:
        peer = json.loads(args.peer.read_text())
        prow = ModelFolds("peer", sorted(peer["folds"], key=lambda f: f["fold"]))
        result["paired_with_peer"] = {}
        for label, per_fold in (("nested", nested), ("chosen", scores[overall])):
            row = ModelFolds(label, [{"fold": int(f.removeprefix("fold")), **per_fold[f]}
                                     for f in folds])
            d = paired_comparison(row, prow, names)["map50"]
            result["paired_with_peer"][label] = d.to_dict()
            print(f"{label} - peer: mAP@0.5 {100 * d.diff.mean:+.2f} (95% t {100 * d.diff.ci_low:+.2f}"
                  f" to {100 * d.diff.ci_high:+.2f}), folds won {d.wins_a}:{d.wins_b}")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
