"""Spondylolisthesis calls from the detector and the segment reader together, fold by fold.

The detector (with its slip verifier) puts a slip box at nearly every true slip, but its scores
do not separate those boxes from the normal segments; the segment reader scores each disc from
its motion segment. Here both are out of fold: for every fold ``k``, the fold's detector +
verifier (``lumbardx verifier crossval`` output, trained without fold ``k``) reads each held-out
image as diagnosis does (T1 and T2 together where the image has a partner, the slice twice
otherwise), :func:`lumbardx.stages.findings.find` groups its boxes into discs, and the fold's
segment-reader ensemble (``bench/segment_ensemble.py`` output, trained without fold ``k``)
gives each disc its slip probability ``p``. Every slip box of the detector is then scored

* ``detector``: its own score ``s`` (what diagnosis reports today);
* ``combined`` (the rule fixed before any fold was scored): ``sqrt(s * p)``, the geometric mean,
  with ``p`` of the disc the box was grouped into (``p = 0`` for a box set aside off the
  spine: diagnosis reports no finding for it);
* ``mean`` (secondary): ``(s + p) / 2``.

Reported per fold and as mean with paired differences against ``detector`` on the same folds:
slip AP@0.5 (COCO 101-point, pycocotools) on the same boxes, and image-level AUC (an image's
score is its highest slip-box score, 0 without one). Nothing is fitted: the rule has no
parameter, so no fold chooses anything.

**Disc level** (a disc is positive when it is not normal, as ``MODEL_CARD.md`` counts it; the
rules fixed with the slip rules). The ground-truth discs of every held-out image (study
classes) are matched (:func:`lumbardx.clinical.findings.match_discs`) to the discs of *every*
predicted box (no threshold, as the release's disc records), the reader reads those predicted
discs, and each rule gives a disc its herniation and spondylolisthesis scores from the
detector's best box of the class on the disc (``s``, 0 without one) and the reader's
probability of that class (``p``; a disc the detector did not find has ``s = p = 0``). Per fold:
the AUC of the disc's abnormal score (the larger of the two) and the point of its ROC curve at
specificity 0.93 (the best sensitivity at a cut chosen on the fold itself: a property of
the curve, not an operating point); with two or more folds, pooled
over folds at cuts chosen on the *other* folds' discs (nested, nothing chosen on the fold it
measures): sensitivity at the cut giving specificity >= 0.93 there (the issue's target point)
and the release's operating point (per-class F1 thresholds, a disc called abnormal when either
class reaches its own), Wilson 95% intervals over discs.

Usage::

    python bench/segment_combined.py ../shared/data/yolospine-dev \
        --detectors runs/cv-yolov5n-pairs-verifier/yolov5n --readers runs/segcv-ensemble4 \
        --out bench/results/segment_combined.json [--slip-rows runs/slip_rows.json]

Also reported (``slips``): how the annotated slips fare -- boxed by the detector at IoU >= 0.5
or not, and of the boxed ones how many the detector (``s >= 0.25``, YOLOv5's default
confidence) and the reader (``p >= 0.5``) call.
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
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name
from segment_end_to_end import dataset_with_folds

from lumbardx.clinical.findings import SLIP, SpineFindings, build_findings, match_discs, study_class
from lumbardx.clinical.stats import proportion
from lumbardx.clinical.thresholds import DiscScore, abnormal_calls, choose_thresholds
from lumbardx.data.boxes import Box
from lumbardx.data.images import MedicalImage
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.segment_crossval import auc, sensitivity_at_specificity
from lumbardx.engine.segment_training import SegmentItem, predict_items
from lumbardx.engine.segments import frame_tensor, segment_frames
from lumbardx.engine.table1 import fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.pretrained import load_detector
from lumbardx.models.segment_reader import LABELS, load_segment_reader
from lumbardx.stages import detect as detect_stage
from lumbardx.stages.findings import find

FOLDS = Path(__file__).resolve().parent / "folds" / "yolospine-dev-k5-seed0.csv"
RULES = ("detector", "combined", "mean")
METRICS = ("ap50", "image_auc", "disc_auc", "disc_sens_at_spec93")


def combine(s: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """The scores of each rule for detector scores ``s [N]`` and reader probabilities
    ``p [N]`` (both in [0, 1])."""
    return {"detector": s, "combined": np.sqrt(s * p), "mean": (s + p) / 2}


def reader_probs(spine: SpineFindings, reader: Any, planes: np.ndarray, image_id: str,
                 patient: str) -> np.ndarray:
    """The reader's probabilities ``float64 [L, K]`` (:data:`LABELS`) for the discs of
    ``spine`` (``[0, K]`` without discs or curve)."""
    frames = frame_tensor(segment_frames(spine, True))
    if not frames.shape[0]:
        return np.zeros((0, len(LABELS)), np.float64)
    item = SegmentItem(image_id, patient, planes, spine, frames,
                       torch.zeros(frames.shape[0], len(LABELS)), np.zeros((0, 4), np.float32))
    logits, _ = predict_items(reader, [item])[0]
    return torch.sigmoid(logits).double().numpy()


def slip_boxes_with_p(boxes: list[Box], image: MedicalImage, m: Any, reader: Any,
                      planes: np.ndarray, image_id: str, patient: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's slip boxes ``[N, 4]``, their scores ``[N]`` and the reader's slip
    probability of the disc each was grouped into ``[N]`` (0 off the spine)."""
    spine, _ = find(boxes, image, m)
    p_disc = np.zeros(len(spine.discs), np.float64)
    probs = reader_probs(spine, reader, planes, image_id, patient)
    if len(probs):
        p_disc = probs[:, LABELS.index("spondylolisthesis")]
    owner = {id(b): j for j, d in enumerate(spine.discs) for b in d.boxes}
    slips = [b for b in boxes if study_class(b.label) == SLIP]
    xyxy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in slips], np.float32).reshape(-1, 4)
    s = np.array([float(b.score or 0.0) for b in slips], np.float64)
    p = np.array([p_disc[owner[id(b)]] if id(b) in owner else 0.0 for b in slips], np.float64)
    return xyxy, s, p


def truth_slips(truth: np.ndarray, xyxy: np.ndarray, s: np.ndarray, p: np.ndarray
                ) -> list[dict[str, float]]:
    """Per ground-truth slip box ``truth [G, 4]``: the detector slip box that overlaps it
    most (IoU, its score ``s`` and its disc's reader probability ``p``; all 0 when no box
    overlaps it)."""
    out = []
    iou = box_iou(torch.from_numpy(truth).double(), torch.from_numpy(xyxy).double()).numpy() \
        if len(truth) and len(xyxy) else np.zeros((len(truth), 0))
    for g in range(len(truth)):
        j = int(iou[g].argmax()) if iou.shape[1] else None
        if j is None or iou[g, j] <= 0:
            out.append({"iou": 0.0, "s": 0.0, "p": 0.0})
            continue
        out.append({"iou": round(float(iou[g, j]), 3), "s": round(float(s[j]), 4),
                    "p": round(float(p[j]), 4)})
    return out


def slip_summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How the annotated slips fare: boxed by the detector (IoU >= 0.5) or not, and of the
    boxed ones how many the detector (``s >= 0.25``) and the reader (``p >= 0.5``) call."""
    boxed = [r for r in rows if r["iou"] >= 0.5]
    return {"slips": len(rows), "boxed": len(boxed),
            "boxed_s_ge_0.25": sum(r["s"] >= 0.25 for r in boxed),
            "boxed_p_ge_0.5": sum(r["p"] >= 0.5 for r in boxed),
            "boxed_neither": sum(r["s"] < 0.25 and r["p"] < 0.5 for r in boxed)}


ABNORMAL = ("herniation", "spondylolisthesis")
SPEC_TARGET = 0.93


def disc_records(boxes: list[Box], truth: list[Box], size: tuple[int, int], classes: list[str],
                 reader: Any, planes: np.ndarray, image_id: str, patient: str
                 ) -> dict[str, list[DiscScore]]:
    """Per rule, one :class:`DiscScore` per ground-truth disc (study-class ``truth`` boxes):
    its true classes and, from the predicted disc matched to it (every box counted), the
    rule's herniation and spondylolisthesis scores (module docstring)."""
    gt = build_findings(truth, size)
    pred = build_findings(boxes, size, thresholds=None, classes=classes)
    probs = reader_probs(pred, reader, planes, image_id, patient)
    match = match_discs(gt, pred)
    out: dict[str, list[DiscScore]] = {r: [] for r in RULES}
    for disc, j in zip(gt.discs, match):
        label = frozenset(f.label for f in disc.findings)
        det = dict(pred.discs[j].scores) if j is not None else {}
        s = np.array([det.get(c, 0.0) for c in ABNORMAL])
        p = probs[j, [LABELS.index(c) for c in ABNORMAL]] if j is not None else np.zeros(2)
        for rule, v in combine(s, p).items():
            out[rule].append(DiscScore(label, dict(zip(ABNORMAL, map(float, v)))))
    return out


def _abnormal(records: list[DiscScore]) -> tuple[np.ndarray, np.ndarray]:
    """Truth (not normal) and score (the larger abnormal score) per disc."""
    y = np.array([bool(r.truth - {"normal"}) for r in records], bool)
    score = np.array([max(r.scores.values(), default=0.0) for r in records], np.float64)
    return y, score


def spec_cut(score: np.ndarray, y: np.ndarray, spec: float = SPEC_TARGET) -> float:
    """The lowest cut (``score >= cut`` is a call) whose specificity on ``(score, y)`` is at
    least ``spec``: just above the ``spec`` quantile of the negatives' scores."""
    neg = np.sort(score[~y])
    if not len(neg):
        return 0.0
    allowed = int(np.floor((1.0 - spec) * len(neg) + 1e-9))  # false calls allowed
    # calling everything above the (n - allowed)-th smallest negative
    k = len(neg) - allowed
    if k <= 0:
        return float(neg[0])
    return float(np.nextafter(neg[k - 1], np.inf))


def nested_points(fold_records: dict[int, list[DiscScore]]) -> dict[str, Any]:
    """Pooled sensitivity / specificity, each fold at cuts chosen on the other folds: at
    specificity >= :data:`SPEC_TARGET` of the abnormal score, and at the release's per-class
    F1 thresholds."""
    counts = {"spec_target": np.zeros(4, np.int64), "f1": np.zeros(4, np.int64)}
    for k, recs in fold_records.items():
        others = [r for j, rs in fold_records.items() if j != k for r in rs]
        y_o, s_o = _abnormal(others)
        y, s = _abnormal(recs)
        call_t = s >= spec_cut(s_o, y_o)
        thr = {c: ch.threshold for c, ch in choose_thresholds(others, ABNORMAL, "f1").items()}
        _, call_f = abnormal_calls(recs, thr)
        for key, call in (("spec_target", call_t), ("f1", call_f)):
            counts[key] += np.array([(call & y).sum(), y.sum(), (~call & ~y).sum(),
                                     (~y).sum()], np.int64)
    out = {}
    for key, c in counts.items():
        sens, spec = proportion(int(c[0]), int(c[1])), proportion(int(c[2]), int(c[3]))
        out[key] = {"sensitivity": sens.estimate, "sensitivity_ci95": [sens.ci_low, sens.ci_high],
                    "specificity": spec.estimate, "specificity_ci95": [spec.ci_low, spec.ci_high],
                    "counts": [int(v) for v in c]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--detectors", type=Path, required=True,
                    help="<verifier crossval>/<model>: fold<k>/last.pt")
    ap.add_argument("--readers", type=Path, required=True,
                    help="segment-reader cross-validation: fold<k>/segment_reader.pt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--slip-rows", type=Path, default=None,
                    help="JSON: one row per annotated slip (image, patient, IoU, s, p); keep it "
                         "outside the repository, it locates the dataset's labels")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    folds_ready = [k for k in sorted(set(fold_of.values()))
                   if (args.detectors / f"fold{k}" / "last.pt").is_file()
                   and (args.readers / f"fold{k}" / "segment_reader.pt").is_file()]
    if not folds_ready:
        print("no fold has both a detector and a reader", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    folds = []
    fold_discs: dict[str, dict[int, list[DiscScore]]] = {}
    slips: list[dict[str, Any]] = []
    for k in folds_ready:
        m = load_detector(args.detectors / f"fold{k}" / "last.pt", "cpu", backend="torch")
        reader = load_segment_reader(torch.load(args.readers / f"fold{k}" / "segment_reader.pt",
                                                weights_only=True))
        gts, dts, img_score, pos = [], {r: [] for r in RULES}, {r: [] for r in RULES}, []
        discs: dict[str, list[DiscScore]] = {r: [] for r in RULES}
        for i, rec in enumerate(ds.records):
            if fold_of.get(rec.image_id) != k:
                continue
            planes = pairs[i].image  # uint8 [2, H, W]: T1, T2 (the slice twice without partner)
            sample = ds[i]
            own = sample.image
            with torch.inference_mode():
                x, geo = detect_stage.preprocess(m, own, (planes[0], planes[1]))
                boxes = detect_stage.detect(m, x, geo)
            h, w = own.shape
            image = MedicalImage(own.astype(np.float32), own, None, rec.image_path, "png")
            xyxy, s, p = slip_boxes_with_p(boxes, image, m, reader, planes, rec.image_id,
                                           rec.patient)
            named = [Box(ds.class_names[int(lab)], *map(float, b))
                     for b, lab in zip(sample.boxes, sample.labels, strict=True)]
            study = [Box(study_class(b.label), b.x1, b.y1, b.x2, b.y2) for b in named
                     if study_class(b.label)]  # the detector's class names
            for rule, recs in disc_records(boxes, study, (w, h), list(m.class_names), reader,
                                           planes, rec.image_id, rec.patient).items():
                discs[rule].extend(recs)
            truth = np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in named
                                if study_class(b.label) == SLIP], np.float32).reshape(-1, 4)
            gts.append(GroundTruth(rec.image_id, w, h, truth, np.zeros(len(truth), np.int64)))
            pos.append(len(truth) > 0)
            slips.extend({"fold": k, "image": rec.image_id, "patient": rec.patient, **t}
                         for t in truth_slips(truth, xyxy, s, p))
            for rule, score in combine(s, p).items():
                dts[rule].append(Prediction(xyxy, score.astype(np.float32),
                                            np.zeros(len(score), np.int64)))
                img_score[rule].append(float(score.max()) if len(score) else 0.0)
        row: dict[str, Any] = {"fold": k, "images": len(gts), "images_with_slip": int(sum(pos)),
                               "discs": len(discs["detector"]),
                               "discs_abnormal": int(_abnormal(discs["detector"])[0].sum())}
        for rule in RULES:
            ev = coco_evaluate(gts, dts[rule], ["spondylolisthesis"])
            row[f"ap50_{rule}"] = float(ev.ap50[0])
            row[f"image_auc_{rule}"] = auc(np.array(img_score[rule]), np.array(pos))
            y, score = _abnormal(discs[rule])
            row[f"disc_auc_{rule}"] = auc(score, y)
            row[f"disc_sens_at_spec93_{rule}"] = sensitivity_at_specificity(score, y,
                                                                            SPEC_TARGET)
            fold_discs.setdefault(rule, {})[k] = discs[rule]
        folds.append(row)
        print(f"fold {k}: slip AP detector {100 * row['ap50_detector']:.1f}, combined "
              f"{100 * row['ap50_combined']:.1f}, mean {100 * row['ap50_mean']:.1f}; image AUC "
              f"{row['image_auc_detector']:.3f} / {row['image_auc_combined']:.3f} / "
              f"{row['image_auc_mean']:.3f}; disc AUC {row['disc_auc_detector']:.3f} / "
              f"{row['disc_auc_combined']:.3f} / {row['disc_auc_mean']:.3f}", flush=True)
    result: dict[str, Any] = {
        "detectors": str(args.detectors), "readers": str(args.readers),
        "folds_scored": folds_ready, "rules": {"combined": "sqrt(s * p)", "mean": "(s + p) / 2",
                                                "detector": "s"},
        "folds": folds,
        "mean": {f"{m}_{r}": fold_stat([f[f"{m}_{r}"] for f in folds]).__dict__
                 for m in METRICS for r in RULES},
        "slips": slip_summary(slips),
        "disc_level": ({r: nested_points(fold_discs[r]) for r in RULES} if len(folds) > 1
                       else "needs two or more folds (cuts chosen on the other folds)"),
        "paired_vs_detector": {}, "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"cpu": cpu_name()}}
    for metric in METRICS:
        for rule in ("combined", "mean"):
            diffs = [f[f"{metric}_{rule}"] - f[f"{metric}_detector"] for f in folds]
            result["paired_vs_detector"][f"{metric}_{rule}"] = {
                **fold_stat(diffs).__dict__, "wins": sum(d > 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs)}
    if args.slip_rows is not None:
        atomic_write_text(args.slip_rows, json.dumps(slips, indent=1))
    atomic_write_text(args.out, json.dumps(result, indent=1, default=lambda v: None
                                           if isinstance(v, float) and math.isnan(v) else v))
    for key, p in result["paired_vs_detector"].items():
        print(f"{key} minus detector: {p['mean']:+.3f} [{p['wins']}:{p['losses']}]")
    if isinstance(result["disc_level"], dict):
        for rule, pts in result["disc_level"].items():
            print(f"disc level, {rule}: " + "; ".join(
                f"{key} sens {100 * v['sensitivity']:.1f}% spec {100 * v['specificity']:.1f}%"
                for key, v in pts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
