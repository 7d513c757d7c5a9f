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
* ``mean`` (secondary): ``(s + p) / 2``;
* ``learned`` (issue item 2: slip as geometry; rule fixed before it was scored, needs two or
  more folds): a logistic regression (ridge 1 on the weights) fitted, for each fold, on the
  slip boxes of the *other* scored folds (target: IoU >= 0.5 with an annotated slip of the
  image) with features ``logit(s)``, ``logit(p')``, ``|slip %| / 25`` and ``refused`` (1 when
  the vertebral-corner estimate, :func:`lumbardx.clinical.severity.estimate_slip`, refuses the
  disc, its ``|slip %|`` then 0), where ``p'`` and the estimate are those of the disc the box
  is grouped into with *every* box counted (a box below the detector's threshold keeps its
  disc here, or re-scoring could not raise it); off the spine ``p' = 0``, refused;
* ``learned_sp`` (its ablation): the same without the two geometry features;
* ``stacked`` (disc level only; defined after ``learned`` was scored on folds 0 and 1, where
  the joint regression raised the disc AUC, so confirmatory on the folds scored after them):
  per class, a logistic regression on every found disc with the logits of the detector's
  normal, herniation and spondylolisthesis scores there and of the reader's normal,
  herniation, spondylolisthesis, stenosis and degeneration probabilities.

Reported per fold and as mean with paired differences against ``detector`` on the same folds:
slip AP@0.5 (COCO 101-point, pycocotools) on the same boxes, and image-level AUC (an image's
score is its highest slip-box score, 0 without one). Nothing is fitted for ``combined`` and
``mean``: they have no parameter. The learned rules are fitted on the other folds only.

**Disc level** (a disc is positive when it is not normal, as ``MODEL_CARD.md`` counts it; the
rules fixed with the slip rules). The ground-truth discs of every held-out image (study
classes) are matched (:func:`lumbardx.clinical.findings.match_discs`) to the discs of *every*
predicted box (no threshold, as the release's disc records), the reader reads those predicted
discs, and each rule gives a disc its herniation and spondylolisthesis scores from the
detector's best box of the class on the disc (``s``, 0 without one) and the reader's
probability of that class (``p``; a disc the detector did not find has ``s = p = 0``); the
learned rules fit one regression per class on the other folds' found discs (target: the class
in the disc's truth; herniation from ``logit(s)``, ``logit(p)``; spondylolisthesis with the
box features above, the estimate on the predicted disc), a disc without a box of the class
scoring 0 as under every rule. Per fold:
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

``--candidates all`` keeps the detector's boxes down to YOLOv5's evaluation floor (0.001)
instead of the floor diagnosis uses (the lowest decision threshold, or the lowest score the
verifier could lift to it): whether re-scoring rescues slips the floor drops.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disc_level import counts as disc_counts
from disc_level import point_of
from machine_info import cpu_name
from segment_end_to_end import (
    add_fold_model_arguments,
    dataset_with_folds,
    fold_thresholds,
    folds_with_models,
    load_fold_models,
)

from lumbardx.clinical.findings import SLIP, SpineFindings, build_findings, match_discs, study_class
from lumbardx.clinical.severity import estimate_slip
from lumbardx.clinical.thresholds import DiscScore, abnormal_calls, choose_thresholds
from lumbardx.data.boxes import Box
from lumbardx.data.images import MedicalImage
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.segment_crossval import auc, sensitivity_at_specificity
from lumbardx.engine.segment_training import SegmentItem, predict_items
from lumbardx.engine.segments import frame_tensor, segment_frames
from lumbardx.engine.stacking import (
    RIDGE,
    STACK_DETECTOR,
    STACK_READER,
    cut_at_specificity,
    fit_logistic,
    fit_stacked,
    logit,
    predict_logistic,
)
from lumbardx.engine.stacking import stack_features as engine_stack_features
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.pretrained import EVAL_CONF, set_candidate_floor
from lumbardx.models.segment_reader import LABELS
from lumbardx.stages import detect as detect_stage
from lumbardx.stages.findings import find
from lumbardx.stages.stacked import best_scores, disc_detector_boxes

FIXED = ("detector", "combined", "mean")
LEARNED = ("learned_sp", "learned", "stacked")
RULES = FIXED + LEARNED
BOX_RULES = RULES[:-1]  # ``stacked`` reads discs only
METRICS = ("ap50", "image_auc", "disc_auc", "disc_sens_at_spec93")
SLIP_SCALE = 25.0  # |slip %| per feature unit: one Meyerding grade


def combine(s: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """The scores of each fixed rule for detector scores ``s [N]`` and reader probabilities
    ``p [N]`` (both in [0, 1])."""
    return {"detector": s, "combined": np.sqrt(s * p), "mean": (s + p) / 2}


def slip_features(s: np.ndarray, p: np.ndarray, pct: np.ndarray, geometry: bool = True
                  ) -> np.ndarray:
    """Features ``float64 [N, 4]`` of the ``learned`` rule (``[N, 2]`` without ``geometry``,
    ``learned_sp``): ``logit(s)``, ``logit(p)``, ``|pct| / 25`` (0 when refused) and
    ``refused`` (``pct`` NaN: the corner estimate was not made)."""
    cols = [logit(s), logit(p)]
    if geometry:
        pct = np.asarray(pct, np.float64)
        refused = np.isnan(pct)
        cols += [np.where(refused, 0.0, np.abs(pct) / SLIP_SCALE), refused.astype(np.float64)]
    return np.stack(cols, axis=1).reshape(-1, len(cols))


def reader_logits(spine: SpineFindings, reader: Any, planes: np.ndarray, image_id: str,
                  patient: str) -> torch.Tensor:
    """The reader's raw logits ``[L, K]`` (:data:`LABELS`) for the discs of ``spine`` read on
    ``planes`` (``uint8 [2, H, W]``); ``[0, K]`` without discs or curve."""
    frames = frame_tensor(segment_frames(spine, True))
    if not frames.shape[0]:
        return torch.zeros((0, len(LABELS)))
    item = SegmentItem(image_id, patient, planes, spine, frames,
                       torch.zeros(frames.shape[0], len(LABELS)), np.zeros((0, 4), np.float32))
    with torch.inference_mode():
        logits, _ = predict_items(reader, [item])[0]
    return logits


def reader_probs(spine: SpineFindings, reader: Any, planes: np.ndarray, image_id: str,
                 patient: str) -> np.ndarray:
    """The reader's probabilities ``float64 [L, K]`` (:data:`LABELS`, uncalibrated: the
    sigmoid of :func:`reader_logits`)."""
    return torch.sigmoid(reader_logits(spine, reader, planes, image_id, patient)).double().numpy()


@dataclass
class EveryBox:
    """The predicted discs of one image with *every* box counted (no threshold, as the
    release's disc records): ``spine``, the reader's probabilities ``probs [L, K]``
    (:data:`LABELS`) and, measured once per disc on demand, the vertebral-corner slip
    estimate on ``pixels [H, W]`` (:meth:`pct`). Read by both the slip boxes and the disc
    records."""

    spine: SpineFindings
    probs: np.ndarray
    pixels: np.ndarray
    _pct: dict[int, float] = field(default_factory=dict)

    def pct(self, index: int) -> float:
        """The corner slip estimate (percent, signed) at disc ``index``; NaN when refused."""
        if index not in self._pct:
            est = estimate_slip(self.pixels, self.spine, index, True)
            self._pct[index] = math.nan if est is None else float(est.percent)
        return self._pct[index]


def read_every(boxes: list[Box], pixels: np.ndarray, classes: list[str], reader: Any,
               planes: np.ndarray, image_id: str, patient: str) -> EveryBox:
    """:class:`EveryBox` of ``boxes`` on the image ``pixels [H, W]``."""
    spine = build_findings(boxes, (pixels.shape[1], pixels.shape[0]), thresholds=None,
                           classes=classes)
    return EveryBox(spine, reader_probs(spine, reader, planes, image_id, patient), pixels)


@dataclass
class SlipBoxes:
    """The detector's slip boxes on one image and what each rule reads of them.

    Attributes:
        xyxy: ``float32 [N, 4]`` boxes, pixels.
        s: ``[N]`` detector scores.
        p: ``[N]`` reader slip probability of the disc the box is grouped into as diagnosis
            groups (thresholds applied; 0 off the spine or below threshold).
        p_all: ``[N]`` the same with every box counted (the learned rules).
        pct: ``[N]`` corner slip estimate (percent) of that disc; NaN refused or off the spine.
    """

    xyxy: np.ndarray
    s: np.ndarray
    p: np.ndarray
    p_all: np.ndarray
    pct: np.ndarray


def _owned(slips: list[Box], spine: SpineFindings, probs: np.ndarray
           ) -> tuple[np.ndarray, list[int | None]]:
    """Per slip box: the slip probability of its disc in ``spine`` (0 without one) and the
    disc's index."""
    owner = {id(b): j for j, d in enumerate(spine.discs) for b in d.boxes}
    idx = [owner.get(id(b)) for b in slips]
    col = LABELS.index("spondylolisthesis")
    p = np.array([probs[j, col] if j is not None and len(probs) else 0.0 for j in idx],
                 np.float64)
    return p, idx


def slip_boxes_with_p(boxes: list[Box], image: MedicalImage, m: Any, reader: Any,
                      planes: np.ndarray, image_id: str, patient: str, every: EveryBox
                      ) -> SlipBoxes:
    """The detector's slip boxes, their scores and the reader's and the corner estimate's
    reading of their discs (:class:`SlipBoxes`); ``every``: :func:`read_every` of ``boxes``."""
    slips = [b for b in boxes if study_class(b.label) == SLIP]
    spine, _ = find(boxes, image, m)
    p, _ = _owned(slips, spine, reader_probs(spine, reader, planes, image_id, patient))
    p_all, idx = _owned(slips, every.spine, every.probs)
    pct = np.array([every.pct(j) if j is not None else math.nan for j in idx], np.float64)
    xyxy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in slips], np.float32).reshape(-1, 4)
    s = np.array([float(b.score or 0.0) for b in slips], np.float64)
    return SlipBoxes(xyxy, s, p, p_all, pct)


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


def box_hits(truth: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """``bool [N]``: box ``xyxy[i]`` overlaps an annotated slip ``truth [G, 4]`` at IoU >=
    0.5 (the learned rules' target)."""
    if not len(truth) or not len(xyxy):
        return np.zeros(len(xyxy), bool)
    iou = box_iou(torch.from_numpy(xyxy).double(), torch.from_numpy(truth).double())
    return (iou.max(dim=1).values >= 0.5).numpy()


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


@dataclass
class DiscRaw:
    """One ground-truth disc: its true classes, whether a predicted disc matched it, and per
    class of :data:`ABNORMAL` the detector's best score ``s [2]`` and the reader's probability
    ``p [2]`` there (0 unmatched), with the corner slip estimate ``pct`` (NaN: refused, not
    measured or unmatched) and what ``stacked`` reads: the detector's normal score
    ``s_normal`` and the reader's probabilities ``reader [5]`` (:data:`STACK_READER`)."""

    truth: frozenset[str]
    found: bool
    s: np.ndarray
    p: np.ndarray
    pct: float
    s_normal: float = 0.0
    reader: np.ndarray = field(default_factory=lambda: np.zeros(len(STACK_READER)))


def disc_raw(every: EveryBox, truth: list[Box]) -> list[DiscRaw]:
    """One :class:`DiscRaw` per ground-truth disc (study-class ``truth`` boxes) of the image
    ``every`` reads; the corner estimate is measured on matched discs with a slip box."""
    pred, probs = every.spine, every.probs
    gt = build_findings(truth, (every.pixels.shape[1], every.pixels.shape[0]))
    out = []
    for disc, j in zip(gt.discs, match_discs(gt, pred)):
        label = frozenset(f.label for f in disc.findings)
        if j is None:
            out.append(DiscRaw(label, False, np.zeros(2), np.zeros(2), math.nan))
            continue
        det = dict(pred.discs[j].scores)
        s = np.array([det.get(c, 0.0) for c in ABNORMAL])
        pct = every.pct(j) if s[1] > 0 else math.nan
        out.append(DiscRaw(label, True, s, probs[j, [LABELS.index(c) for c in ABNORMAL]], pct,
                           float(det.get("normal", 0.0)),
                           probs[j, [LABELS.index(c) for c in STACK_READER]]))
    return out


def stack_features(raws: list[DiscRaw]) -> np.ndarray:
    """``stacked``'s features per disc (``[N, 8]``, logits): the detector's normal,
    herniation and spondylolisthesis scores, the reader's :data:`STACK_READER`."""
    return np.array([[*logit(np.r_[r.s_normal, r.s]), *logit(r.reader)] for r in raws],
                    np.float64).reshape(-1, 3 + len(STACK_READER))


def disc_features(raws: list[DiscRaw], c: int, geometry: bool) -> np.ndarray:
    """The learned rule's features of class ``ABNORMAL[c]`` per disc (``[N, F]``)."""
    s = np.array([r.s[c] for r in raws])
    p = np.array([r.p[c] for r in raws])
    if ABNORMAL[c] == "spondylolisthesis":
        return slip_features(s, p, np.array([r.pct for r in raws]), geometry)
    return slip_features(s, p, np.zeros(len(raws)), geometry=False)


def fit_disc_rule(raws: list[DiscRaw], rule: str) -> list[np.ndarray]:
    """One regression per class of :data:`ABNORMAL` (target: the class in the truth) on the
    discs with a box of the class (``learned``, ``learned_sp``) or every found disc
    (``stacked``)."""
    if rule == "stacked":
        found = [r for r in raws if r.found]
        return [fit_logistic(stack_features(found), np.array([n in r.truth for r in found]))
                for n in ABNORMAL]
    geometry = rule == "learned"
    out = []
    for c, name in enumerate(ABNORMAL):
        use = [r for r in raws if r.found and r.s[c] > 0]
        out.append(fit_logistic(disc_features(use, c, geometry),
                                np.array([name in r.truth for r in use], bool)))
    return out


def disc_scores(raws: list[DiscRaw], rule: str, weights: list[np.ndarray] | None = None
                ) -> list[DiscScore]:
    """Per disc, the rule's herniation and spondylolisthesis scores; ``weights`` from
    :func:`fit_disc_rule` for the learned rules (a disc without a box of a class, or for
    ``stacked`` a disc not found: 0)."""
    if rule in FIXED:
        return [DiscScore(r.truth, dict(zip(ABNORMAL, map(float, combine(r.s, r.p)[rule]))))
                for r in raws]
    assert weights is not None
    if rule == "stacked":
        found = np.array([r.found for r in raws], bool)
        x = stack_features([r for r in raws if r.found])
        cols = [np.zeros(len(raws)) for _ in ABNORMAL]
        for c, w in enumerate(weights):
            cols[c][found] = predict_logistic(w, x) if len(x) else 0.0
        return [DiscScore(r.truth, {n: float(cols[c][i]) for c, n in enumerate(ABNORMAL)})
                for i, r in enumerate(raws)]
    cols = []
    for c in range(len(ABNORMAL)):
        has = np.array([r.s[c] > 0 for r in raws], bool)
        v = np.zeros(len(raws))
        if has.any():
            v[has] = predict_logistic(weights[c], disc_features(
                [r for r, h in zip(raws, has) if h], c, rule == "learned"))
        cols.append(v)
    return [DiscScore(r.truth, {n: float(cols[c][i]) for c, n in enumerate(ABNORMAL)})
            for i, r in enumerate(raws)]


def _abnormal(records: list[DiscScore]) -> tuple[np.ndarray, np.ndarray]:
    """Truth (not normal) and score (the larger abnormal score) per disc."""
    y = np.array([bool(r.truth - {"normal"}) for r in records], bool)
    score = np.array([max(r.scores.values(), default=0.0) for r in records], np.float64)
    return y, score


def spec_cut(score: np.ndarray, y: np.ndarray, spec: float = SPEC_TARGET) -> float:
    """The lowest cut (``score >= cut`` is a call) whose specificity on ``(score, y)`` is at
    least ``spec`` (:func:`lumbardx.engine.stacking.cut_at_specificity`)."""
    return cut_at_specificity(score, y, spec)


def nested_points(fold_records: dict[int, list[DiscScore]],
                  cut_records: dict[int, list[DiscScore]] | None = None) -> dict[str, Any]:
    """Pooled sensitivity / specificity, each fold at cuts chosen on the other folds: at
    specificity >= :data:`SPEC_TARGET` of the abnormal score, and at the release's per-class
    F1 thresholds. ``cut_records[k]``: the other folds' discs as fold ``k``'s rule scores them
    (a learned rule's regression for fold ``k``); default: the other folds' own records."""
    counts = {"spec_target": np.zeros(4, np.int64), "f1": np.zeros(4, np.int64)}
    for k, recs in fold_records.items():
        others = cut_records[k] if cut_records is not None else \
            [r for j, rs in fold_records.items() if j != k for r in rs]
        y_o, s_o = _abnormal(others)
        y, s = _abnormal(recs)
        call_t = s >= spec_cut(s_o, y_o)
        thr = {c: ch.threshold for c, ch in choose_thresholds(others, ABNORMAL, "f1").items()}
        _, call_f = abnormal_calls(recs, thr)
        for key, call in (("spec_target", call_t), ("f1", call_f)):
            counts[key] += disc_counts(y, call)
    return {key: point_of(c) for key, c in counts.items()}


@dataclass
class ProductDisc:
    """One ground-truth disc as diagnosis reads it (boxes grouped with the decision
    thresholds): its true classes, whether a diagnosis disc matched it, the detector's calls
    there (``called``: class -> bool, :data:`ABNORMAL`) and the stacked features of that disc
    as the product computes them (:mod:`lumbardx.stages.stacked`; zeros when unmatched)."""

    truth: frozenset[str]
    found: bool
    called: dict[str, bool]
    x: np.ndarray


def product_discs(boxes: list[Box], image: MedicalImage, m: Any, reader: Any,
                  planes: np.ndarray, rec: Any, truth: list[Box]) -> list[ProductDisc]:
    """:class:`ProductDisc` per ground-truth disc (study-class ``truth`` boxes) of one image."""
    spine, _ = find(boxes, image, m)
    gt = build_findings(truth, (image.width, image.height))
    n_feat = len(STACK_DETECTOR) + len(STACK_READER)
    feats = np.zeros((len(spine.discs), n_feat))
    logits = reader_logits(spine, reader, planes, rec.image_id, rec.patient)
    if len(logits):
        z = [{k: float(logits[i, j]) for j, k in enumerate(LABELS)} for i in range(len(logits))]
        disc_boxes = disc_detector_boxes(spine, boxes, list(m.class_names))
        feats = np.stack([engine_stack_features(best_scores(b), zi)
                          for b, zi in zip(disc_boxes, z)])
    out = []
    for disc, j in zip(gt.discs, match_discs(gt, spine)):
        label = frozenset(f.label for f in disc.findings)
        if j is None:
            out.append(ProductDisc(label, False, {c: False for c in ABNORMAL}, np.zeros(n_feat)))
            continue
        out.append(ProductDisc(label, True, {c: spine.discs[j].has(c) for c in ABNORMAL},
                               feats[j]))
    return out


def detector_specificity(recs: list[ProductDisc]) -> dict[str, float]:
    """Per class of :data:`ABNORMAL`, the detector's specificity on the found discs of
    ``recs`` (the discs a stacked regression reads); 1 without a negative."""
    out = {}
    for c in ABNORMAL:
        neg = [not r.called[c] for r in recs if r.found and c not in r.truth]
        out[c] = float(np.mean(neg)) if neg else 1.0
    return out


def release_cut(calls: Any, recs: list[ProductDisc]) -> Any:
    """``calls`` with each finding's threshold at the detector's own specificity on the found
    diagnosis discs of ``recs`` (the release's operating point, ``docs/segments.md``)."""
    found = [r for r in recs if r.found]
    return calls.at_specificity(np.stack([r.x for r in found]), [r.truth for r in found],
                                detector_specificity(found))


def product_points(data: dict[int, FoldData], calls: dict[int, Any]) -> dict[str, Any]:
    """Pooled sensitivity / specificity (Wilson 95%) of the diagnosis discs, not normal =
    herniation or spondylolisthesis called: by the detector as diagnosis calls today, by each
    fold's stacked calls ``calls[k]`` (fitted with their thresholds on the other folds) and by
    the same regressions cut at the detector's per-class specificity on the other folds'
    diagnosis discs (``stacked_release``, :func:`release_cut`); per class too; and per fold,
    with paired differences against the detector's calls."""
    counts: dict[str, np.ndarray] = {}
    per_fold: dict[str, list[np.ndarray]] = {}

    def add(key: str, y: np.ndarray, call: np.ndarray) -> None:
        c = disc_counts(y, call)
        counts[key] = counts.get(key, np.zeros(4, np.int64)) + c
        per_fold.setdefault(key, []).append(c)

    def stacked_calls(recs: list[ProductDisc], fitted: Any
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per disc of ``recs``: found by diagnosis, ``fitted``'s probabilities and its calls
        per class (a disc diagnosis did not find is never called)."""
        found = np.array([r.found for r in recs], bool)
        p = fitted.probabilities(np.stack([r.x for r in recs]))
        return found, p, {c: found & (p[c] >= fitted.thresholds[c]) for c in ABNORMAL}

    def read(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray],
                              dict[str, np.ndarray]]:
        """Fold ``k`` per ground-truth disc: truth (not normal), the detector's call, the
        stacked abnormal score (the larger of the two probabilities; 0 for a disc diagnosis
        did not find), and the stacked and the detector's calls per class."""
        recs = data[k].product
        found, p, stacked = stacked_calls(recs, calls[k])
        detector = {c: np.array([r.called[c] for r in recs], bool) for c in ABNORMAL}
        y = np.array([bool(r.truth - {"normal"}) for r in recs], bool)
        score = np.where(found, np.maximum(p[ABNORMAL[0]], p[ABNORMAL[1]]), 0.0)
        return y, detector[ABNORMAL[0]] | detector[ABNORMAL[1]], score, stacked, detector

    for k, d in data.items():
        y, det_call, score, stacked, detector = read(k)
        for c in ABNORMAL:
            yc = np.array([c in r.truth for r in d.product], bool)
            add(f"detector_{c}", yc, detector[c])
            add(f"stacked_{c}", yc, stacked[c])
        add("detector", y, det_call)
        add("stacked", y, stacked[ABNORMAL[0]] | stacked[ABNORMAL[1]])
        cut = release_cut(calls[k], [r for j, o in data.items() if j != k for r in o.product])
        release = stacked_calls(d.product, cut)[2]
        for c in ABNORMAL:
            add(f"stacked_release_{c}", np.array([c in r.truth for r in d.product], bool),
                release[c])
        add("stacked_release", y, release[ABNORMAL[0]] | release[ABNORMAL[1]])
        # at the detector's own specificity (or sensitivity) on the other folds: the same
        # operating point as today's calls, the cut of the stacked score chosen there
        others = [read(j) for j in data if j != k]
        y_o = np.concatenate([o[0] for o in others])
        det_o = np.concatenate([o[1] for o in others])
        s_o = np.concatenate([o[2] for o in others])
        cut_spec = spec_cut(s_o, y_o, float((~det_o[~y_o]).mean()))
        add("stacked_at_detector_specificity", y, score >= cut_spec)
        pos = np.sort(s_o[y_o])[::-1]
        need = int(np.ceil(det_o[y_o].mean() * len(pos) - 1e-9))  # positives to call
        cut_sens = float(pos[max(need - 1, 0)]) if len(pos) else 1.0
        add("stacked_at_detector_sensitivity", y, score >= cut_sens)
    out: dict[str, Any] = {
        key: {**point_of(c), "per_fold": [[float(f[0] / max(f[1], 1)),
                                           float(f[2] / max(f[3], 1))] for f in per_fold[key]]}
        for key, c in counts.items()}
    base = np.array(out["detector"]["per_fold"])
    out["paired_vs_detector"] = {}
    for key in ("stacked", "stacked_release", "stacked_at_detector_specificity",
                "stacked_at_detector_sensitivity"):
        diff = np.array(out[key]["per_fold"]) - base
        out["paired_vs_detector"][key] = {
            name: fold_differences(list(diff[:, i]))
            for i, name in enumerate(("sensitivity", "specificity"))}
    return out


@dataclass
class FoldData:
    """Everything read of one held-out fold: per image its ground truth, slip boxes, which of
    them hit an annotated slip and whether it has one; the ground-truth discs."""

    gts: list[GroundTruth]
    boxes: list[SlipBoxes]
    hits: list[np.ndarray]
    pos: list[bool]
    discs: list[DiscRaw]
    product: list[ProductDisc] = field(default_factory=list)


def read_fold(k: int, ds: Any, pairs: Any, fold_of: dict[str, int], m: Any, reader: Any,
              slips: list[dict[str, Any]]) -> FoldData:
    """Read fold ``k``'s held-out images with its detector ``m`` and reader (module
    docstring); the annotated slips' trace rows are appended to ``slips``."""
    data = FoldData([], [], [], [], [])
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
        every = read_every(boxes, image.pixels, list(m.class_names), reader, planes,
                           rec.image_id, rec.patient)
        sb = slip_boxes_with_p(boxes, image, m, reader, planes, rec.image_id, rec.patient,
                               every)
        named = [Box(ds.class_names[int(lab)], *map(float, b))
                 for b, lab in zip(sample.boxes, sample.labels, strict=True)]
        study = [Box(study_class(b.label), b.x1, b.y1, b.x2, b.y2) for b in named
                 if study_class(b.label)]  # the detector's class names
        data.discs += disc_raw(every, study)
        data.product += product_discs(boxes, image, m, reader, planes, rec, study)
        truth = np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in named
                            if study_class(b.label) == SLIP], np.float32).reshape(-1, 4)
        data.gts.append(GroundTruth(rec.image_id, w, h, truth, np.zeros(len(truth), np.int64)))
        data.boxes.append(sb)
        data.hits.append(box_hits(truth, sb.xyxy))
        data.pos.append(len(truth) > 0)
        slips.extend({"fold": k, "image": rec.image_id, "patient": rec.patient, **t}
                     for t in truth_slips(truth, sb.xyxy, sb.s, sb.p))
    return data


def box_scores(data: FoldData, rule: str, weights: np.ndarray | None = None
               ) -> list[np.ndarray]:
    """Per image, the rule's score of each slip box."""
    if rule in FIXED:
        return [combine(b.s, b.p)[rule] for b in data.boxes]
    assert weights is not None
    return [predict_logistic(weights, slip_features(b.s, b.p_all, b.pct, rule == "learned"))
            for b in data.boxes]


def fit_box_rule(folds: list[FoldData], geometry: bool) -> np.ndarray:
    """The learned rule's regression on the slip boxes of ``folds`` (target: a hit)."""
    x = [slip_features(b.s, b.p_all, b.pct, geometry) for f in folds for b in f.boxes]
    y = [h for f in folds for h in f.hits]
    return fit_logistic(np.concatenate(x), np.concatenate(y))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fold_model_arguments(ap)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--candidates", choices=("diagnosis", "all"), default="diagnosis",
                    help="the detector's boxes down to its candidate floor, as diagnosis keeps "
                         f"them (default), or all down to {EVAL_CONF} (as evaluation)")
    ap.add_argument("--stack-release", type=Path, default=None,
                    help="JSON: the stacked disc calls fitted on the found discs of every fold "
                         "scored (lumbardx.engine.stacking.fit_stacked), for a release")
    ap.add_argument("--slip-rows", type=Path, default=None,
                    help="JSON: one row per annotated slip (image, patient, IoU, s, p); keep it "
                         "outside the repository, it locates the dataset's labels")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    det_thresholds = fold_thresholds(args.detector_thresholds)
    folds_ready = folds_with_models(fold_of, args.detectors, args.readers)
    if not folds_ready:
        print("no fold has both a detector and a reader", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    slips: list[dict[str, Any]] = []
    data: dict[int, FoldData] = {}
    for k in folds_ready:
        m, reader = load_fold_models(k, args.detectors, args.readers, det_thresholds)
        if args.candidates == "all":
            set_candidate_floor(m.model, EVAL_CONF, m.backend)
        data[k] = read_fold(k, ds, pairs, fold_of, m, reader, slips)
        print(f"fold {k}: read ({time.perf_counter() - t0:.0f} s)", flush=True)
    rules = RULES if len(data) > 1 else FIXED
    box_rules = [r for r in rules if r in BOX_RULES]
    folds = []
    fold_discs: dict[str, dict[int, list[DiscScore]]] = {r: {} for r in rules}
    cut_discs: dict[str, dict[int, list[DiscScore]]] = {r: {} for r in LEARNED}
    fitted: dict[str, dict[int, Any]] = {r: {} for r in LEARNED}
    for k, d in data.items():
        others = [o for j, o in data.items() if j != k]
        row: dict[str, Any] = {"fold": k, "images": len(d.gts), "images_with_slip": int(sum(d.pos)),
                               "slip_boxes": int(sum(len(b.s) for b in d.boxes)),
                               "slip_boxes_hit": int(sum(h.sum() for h in d.hits)),
                               "discs": len(d.discs),
                               "discs_abnormal": int(sum(bool(r.truth - {"normal"})
                                                         for r in d.discs))}
        for rule in rules:
            w_box = w_disc = None
            if rule in LEARNED:
                other_discs = [r for o in others for r in o.discs]
                w_disc = fit_disc_rule(other_discs, rule)
                cut_discs[rule][k] = disc_scores(other_discs, rule, w_disc)
                fitted[rule][k] = {"discs": [w.round(4).tolist() for w in w_disc]}
                if rule in BOX_RULES:
                    w_box = fit_box_rule(others, rule == "learned")
                    fitted[rule][k]["boxes"] = w_box.round(4).tolist()
            if rule in BOX_RULES:
                scores = box_scores(d, rule, w_box)
                dts = [Prediction(b.xyxy, sc.astype(np.float32), np.zeros(len(sc), np.int64))
                       for b, sc in zip(d.boxes, scores)]
                ev = coco_evaluate(d.gts, dts, ["spondylolisthesis"])
                row[f"ap50_{rule}"] = float(ev.ap50[0])
                row[f"image_auc_{rule}"] = auc(np.array([float(sc.max()) if len(sc) else 0.0
                                                         for sc in scores]), np.array(d.pos))
            fold_discs[rule][k] = disc_scores(d.discs, rule, w_disc)
            y, score = _abnormal(fold_discs[rule][k])
            row[f"disc_auc_{rule}"] = auc(score, y)
            row[f"disc_sens_at_spec93_{rule}"] = sensitivity_at_specificity(score, y,
                                                                            SPEC_TARGET)
        folds.append(row)
        print(f"fold {k}: slip AP " + ", ".join(f"{r} {100 * row[f'ap50_{r}']:.1f}"
                                                 for r in box_rules)
              + "; image AUC " + " / ".join(f"{row[f'image_auc_{r}']:.3f}" for r in box_rules)
              + "; disc AUC " + " / ".join(f"{row[f'disc_auc_{r}']:.3f}" for r in rules),
              flush=True)
    result: dict[str, Any] = {
        "detectors": str(args.detectors), "readers": str(args.readers),
        "detector_thresholds": det_thresholds or "0.25 every class (fold checkpoints)",
        "folds_scored": folds_ready, "candidates": args.candidates,
        "rules": {"detector": "s", "combined": "sqrt(s * p)", "mean": "(s + p) / 2",
                  "learned_sp": "logistic(logit s, logit p'), fitted on the other folds",
                  "learned": "logistic(logit s, logit p', |corner slip %| / 25, refused), "
                             f"fitted on the other folds; ridge {RIDGE}",
                  "stacked": "per class, logistic(logits of the detector's normal, herniation "
                             "and spondylolisthesis scores and the reader's five "
                             "probabilities), discs only, fitted on the other folds"},
        "folds": folds,
        "mean": {f"{m}_{r}": fold_stat([f[f"{m}_{r}"] for f in folds]).__dict__
                 for m in METRICS for r in rules if f"{m}_{r}" in folds[0]},
        "slips": slip_summary(slips),
        "disc_level": ({r: nested_points(fold_discs[r], cut_discs.get(r)) for r in rules}
                       if len(folds) > 1
                       else "needs two or more folds (cuts chosen on the other folds)"),
        "learned_weights": fitted if len(folds) > 1 else None,
        "paired_vs_detector": {}, "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"cpu": cpu_name()}}
    for metric in METRICS:
        for rule in rules[1:]:
            if f"{metric}_{rule}" not in folds[0]:
                continue
            diffs = [f[f"{metric}_{rule}"] - f[f"{metric}_detector"] for f in folds]
            result["paired_vs_detector"][f"{metric}_{rule}"] = fold_differences(diffs)
    if len(data) > 1:  # the stacked calls as diagnosis would make them, fitted on the others
        calls = {}
        for k in data:
            other = [r for j, o in data.items() if j != k for r in o.discs if r.found]
            calls[k] = fit_stacked(stack_features(other), [r.truth for r in other])
        result["product_disc_level"] = product_points(data, calls)
        for key in ("detector", "stacked", "stacked_release"):
            v = result["product_disc_level"][key]
            print(f"diagnosis discs, {key} calls: sens {100 * v['sensitivity']:.1f}% spec "
                  f"{100 * v['specificity']:.1f}%")
    if args.slip_rows is not None:
        atomic_write_text(args.slip_rows, json.dumps(slips, indent=1))
    if args.stack_release is not None:
        found = [r for d in data.values() for r in d.discs if r.found]
        source = f"{args.detectors} + {args.readers}, folds {folds_ready}"
        calls = fit_stacked(stack_features(found), [r.truth for r in found],
                            source=f"{source}, out-of-fold discs found by the detectors")
        calls = release_cut(calls, [r for d in data.values() for r in d.product])
        calls.fitted_on["operating_point"]["source"] = f"{source}, out-of-fold diagnosis discs"
        atomic_write_text(args.stack_release, json.dumps(calls.to_dict(), indent=1))
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
