"""Cross-validation of the segment reader on patient-grouped folds.

For each fold ``k`` of a folds CSV the reader is trained on the other folds' images and predicts
the held-out images' discs; the out-of-fold predictions (one row per disc: image, patient, disc
index, targets, logits, offset) are written to ``OUT/fold<k>/predictions.json`` and the weights
to ``OUT/fold<k>/segment_reader.pt`` (atomically, so an interrupted run resumes at the first
fold without predictions).

Scores per fold (:func:`fold_metrics`), on the ground-truth discs of the held-out images (the
discs a perfect disc detector would give; :mod:`lumbardx.engine.segment_training`):

* per label, the disc-level ROC AUC;
* spondylolisthesis: image-level AUC (an image's score is its highest disc probability, an
  image is positive when it holds a slip box), the sensitivity at the ROC point with
  specificity >= 0.90, and AP@0.5 (COCO 101-point) of one box per disc, placed by the
  slip-box template of the training folds (:func:`slip_box_template`) and scored by the
  disc's probability;
* disc level as the model card counts it (a disc is positive when herniated or slipped; its
  score the larger of the two probabilities): AUC, and sensitivity/specificity at a threshold
  chosen on the *other* folds' out-of-fold discs (Youden's J), so no fold is scored at a
  threshold fitted to it (:func:`summarise`);
* the slip measurement (:func:`slip_measure_rows`): synthetic slips of known size on the
  held-out real segments, the measured offset's error in percentage points and the grade
  agreement;
* the level check (:func:`level_check_rows`): every held-out image is read three times, as
  annotated, without its lowest disc and with a false disc below it; ``lumbosacral`` of the
  lowest disc should be high only in the first reading. AUC of that separation, and at 0.5 the
  share of right counts flagged and of miscounts not flagged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbardx.clinical.findings import SLIP, study_class
from lumbardx.clinical.thresholds import choose_threshold
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.checkpoint import save_checkpoint
from lumbardx.engine.segments import template_boxes
from lumbardx.engine.segment_training import (SegmentItem, SegmentTraining, predict_items,
                                              train_segment_reader, training_settings,
                                              with_extra_below, without_lowest)
from lumbardx.engine.table1 import fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.segment_reader import LABELS

SPEC_TARGET = 0.90


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties one half); ``nan`` without both classes."""
    s = np.asarray(scores, np.float64)
    pos = np.asarray(positive, bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    from scipy.stats import rankdata

    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def sensitivity_at_specificity(scores: np.ndarray, positive: np.ndarray,
                               specificity: float = SPEC_TARGET) -> float:
    """Highest sensitivity over cuts ``score >= c`` whose specificity is >= ``specificity``."""
    s = np.asarray(scores, np.float64)
    pos = np.asarray(positive, bool)
    if pos.all() or (~pos).all():
        return math.nan
    best = 0.0
    for c in np.unique(s):
        call = s >= c
        if float((~call[~pos]).mean()) >= specificity:
            best = max(best, float(call[pos].mean()))
    return best


def slip_box_template(items: Sequence[SegmentItem]) -> tuple[float, float, float, float]:
    """Median ``(dx, dy, w, h)`` of the ground-truth slip boxes relative to their disc, in
    spacings (image axes: ``dx`` the box centre's offset from the disc centre)."""
    rows = []
    for it in items:
        for d, f in zip(it.spine.discs, it.frames.tolist()):
            for b in d.boxes:
                if study_class(b.label) == SLIP:
                    sp = f[6]
                    rows.append((((b.x1 + b.x2) / 2 - f[0]) / sp, ((b.y1 + b.y2) / 2 - f[1]) / sp,
                                 b.width / sp, b.height / sp))
    if not rows:
        return (0.0, 0.0, 1.8, 1.3)
    return tuple(float(v) for v in np.median(np.array(rows), axis=0))  # type: ignore[return-value]


def rows_for(items: Sequence[SegmentItem], preds: Sequence[tuple[torch.Tensor, torch.Tensor]]
             ) -> list[dict[str, Any]]:
    """One JSON-able row per disc: image, patient, disc index, frame, targets, logits, offset."""
    rows = []
    for it, (logits, offset) in zip(items, preds):
        for i in range(it.frames.shape[0]):
            rows.append({"image": it.image_id, "patient": it.patient, "disc": i,
                         "n_discs": int(it.frames.shape[0]),
                         "frame": [round(v, 3) for v in it.frames[i].tolist()],
                         "targets": it.targets[i].tolist(),
                         "logits": [round(v, 4) for v in logits[i].tolist()],
                         "offset": round(float(offset[i]), 4)})
    return rows


def level_check_rows(model: torch.nn.Module, items: Sequence[SegmentItem]
                     ) -> list[dict[str, Any]]:
    """Per image with at least three discs, the ``lumbosacral`` logit of the lowest disc as
    annotated (``right``), without the lowest disc (``missed``) and with a false disc below
    (``extra``; and the true L5-S1's logit then, ``extra_true``)."""
    k = LABELS.index("lumbosacral")
    use = [it for it in items if it.frames.shape[0] >= 3]
    right = predict_items(model, use)
    missed = predict_items(model, [without_lowest(it) for it in use])
    extra = predict_items(model, [with_extra_below(it) for it in use])
    return [{"image": it.image_id, "right": float(a[0][-1, k]), "missed": float(b[0][-1, k]),
             "extra": float(c[0][-1, k]), "extra_true": float(c[0][-2, k])}
            for it, a, b, c in zip(use, right, missed, extra)]


MEASURE_SHIFTS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.45)  # spacings ~ Meyerding fraction


@torch.no_grad()
def slip_measure_rows(model: torch.nn.Module, items: Sequence[SegmentItem]
                      ) -> list[dict[str, Any]]:
    """Synthetic slips of known size on held-out real segments: in three passes per image,
    every third disc without a slip label gets a shift of :data:`MEASURE_SHIFTS` (cycling);
    one row per shifted disc with the true shift, the measured offset and the slip logit."""
    from lumbardx.engine.segment_training import collate, crops_for

    k_slip = LABELS.index("spondylolisthesis")
    model.eval()
    rows: list[dict[str, Any]] = []
    for it in items:
        n = it.frames.shape[0]
        if n == 0:
            continue
        free = it.targets[:, k_slip] == 0
        for phase in range(3):
            shift = torch.zeros(n)
            for i in range(n):
                if i % 3 == phase and bool(free[i]):
                    shift[i] = MEASURE_SHIFTS[(i + phase) % len(MEASURE_SHIFTS)]
            if not bool((shift > 0).any()):
                continue
            x, mask, feats = collate([crops_for(it, model.config, shift=shift)])
            logits, offset = model(x, mask, feats)
            for i in torch.nonzero(shift > 0).flatten().tolist():
                rows.append({"image": it.image_id, "disc": i, "shift": round(float(shift[i]), 4),
                             "offset": round(float(offset[0, i]), 4),
                             "logit": round(float(logits[0, i, k_slip]), 4)})
    return rows


def slip_measure_metrics(rows: Sequence[dict[str, Any]],
                         others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Error of the measured slip (percentage points of body depth, one spacing per depth) on
    synthetic slips, Meyerding grade agreement, and the AUC of their slip logits against the
    real discs without a slip (``others``: prediction rows)."""
    if not rows:
        return {}
    from lumbardx.clinical.severity import meyerding_grade
    from lumbardx.engine.segments import DEPTH_PER_SPACING

    true = 100 * np.array([r["shift"] for r in rows]) / DEPTH_PER_SPACING
    meas = 100 * np.array([r["offset"] for r in rows]) / DEPTH_PER_SPACING
    neg = [r["logits"][LABELS.index("spondylolisthesis")] for r in others
           if r["targets"][LABELS.index("spondylolisthesis")] == 0]
    z = np.r_[[r["logit"] for r in rows], neg]
    return {"slip_mae_points": float(np.mean(np.abs(meas - true))),
            "slip_bias_points": float(np.mean(meas - true)),
            "slip_grade_agreement": float(np.mean([meyerding_grade(a) == meyerding_grade(b)
                                                   for a, b in zip(true, meas)])),
            "auc_synthetic_slip": auc(z, np.r_[np.ones(len(rows)), np.zeros(len(neg))] > 0)}


def level_check_metrics(rows: Sequence[dict[str, Any]], cut: float = 0.0) -> dict[str, Any]:
    """AUC of right vs miscounted lowest discs, and flag rates at logit ``cut`` (0 = p 0.5)."""
    if not rows:
        return {}
    right = np.array([r["right"] for r in rows])
    wrong = np.array([r["missed"] for r in rows] + [r["extra"] for r in rows])
    return {"auc_level_check": auc(np.concatenate([right, wrong]),
                                   np.r_[np.ones(len(right)), np.zeros(len(wrong))] > 0),
            "right_flagged": float((right < cut).mean()),
            "missed_unflagged": float((np.array([r["missed"] for r in rows]) >= cut).mean()),
            "extra_unflagged": float((np.array([r["extra"] for r in rows]) >= cut).mean())}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _arrays(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and probabilities ``[N, K]`` of prediction rows (``K`` the labels they have:
    the first ``K`` of :data:`LABELS`)."""
    k = len(rows[0]["targets"]) if rows else len(LABELS)
    t = np.array([r["targets"] for r in rows], np.float64).reshape(-1, k)
    return t, _sigmoid(np.array([r["logits"] for r in rows], np.float64).reshape(-1, k))


def fold_metrics(rows: Sequence[dict[str, Any]], slip_boxes: dict[str, np.ndarray],
                 image_sizes: dict[str, tuple[int, int]],
                 template: tuple[float, float, float, float]) -> dict[str, Any]:
    """Metrics of one fold's out-of-fold rows (module docstring); probabilities uncalibrated
    (calibration is monotone per label: AUC and AP do not change)."""
    t, p = _arrays(rows)
    out: dict[str, Any] = {"discs": len(rows)}
    for k, lab in enumerate(LABELS[:t.shape[1]]):
        out[f"auc_{lab}"] = auc(p[:, k], t[:, k] > 0)
        out[f"n_{lab}"] = int((t[:, k] > 0).sum())
    ks = LABELS.index("spondylolisthesis")
    images = sorted({r["image"] for r in rows})
    img_score = {im: 0.0 for im in images}
    for r, pr in zip(rows, p[:, ks]):
        img_score[r["image"]] = max(img_score[r["image"]], float(pr))
    img_pos = np.array([len(slip_boxes.get(im, ())) > 0 for im in images])
    img_s = np.array([img_score[im] for im in images])
    out["image_auc_spondylolisthesis"] = auc(img_s, img_pos)
    out["image_sens_at_spec90_spondylolisthesis"] = sensitivity_at_specificity(img_s, img_pos)
    out["images"] = len(images)
    out["images_with_slip"] = int(img_pos.sum())
    out["disc_sens_at_spec90_spondylolisthesis"] = sensitivity_at_specificity(
        p[:, ks], t[:, ks] > 0)
    # AP@0.5 of template boxes.
    rows_of: dict[str, list[int]] = {im: [] for im in images}
    for i, r in enumerate(rows):
        rows_of[r["image"]].append(i)
    gts, dts = [], []
    for im in images:
        w, h = image_sizes[im]
        gb = np.asarray(slip_boxes.get(im, np.zeros((0, 4))), np.float32).reshape(-1, 4)
        gts.append(GroundTruth(im, w, h, gb, np.zeros(len(gb), np.int64)))
        idx = rows_of[im]
        boxes = template_boxes([rows[i]["frame"] for i in idx], template, (w, h))
        dts.append(Prediction(boxes.astype(np.float32), p[idx, ks].astype(np.float32),
                              np.zeros(len(idx), np.int64)))
    out["ap50_spondylolisthesis"] = float(coco_evaluate(gts, dts, ["spondylolisthesis"]).ap50[0]) \
        if img_pos.any() else math.nan
    kh = LABELS.index("herniation")
    abn = (t[:, kh] > 0) | (t[:, ks] > 0)
    out["auc_abnormal"] = auc(np.maximum(p[:, kh], p[:, ks]), abn)
    # Offsets: synthetic truth is not in these rows; report the real slips' median offset.
    off = np.array([r["offset"] for r in rows])
    out["offset_median_slip"] = float(np.median(off[t[:, ks] > 0])) if (t[:, ks] > 0).any() \
        else math.nan
    out["offset_median_other"] = float(np.median(off[t[:, ks] == 0]))
    return out


def nested_disc_level(fold_rows: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Disc-level sensitivity/specificity (positive: herniated or slipped), each fold called at
    the Youden threshold of the other folds' out-of-fold discs."""
    kh, ks = LABELS.index("herniation"), LABELS.index("spondylolisthesis")

    def arrays(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        t, p = _arrays(rows)
        return np.maximum(p[:, kh], p[:, ks]), (t[:, kh] > 0) | (t[:, ks] > 0)

    per_fold, tp, fn, tn, fp = {}, 0, 0, 0, 0
    for k, rows in sorted(fold_rows.items()):
        others = [r for j, rr in fold_rows.items() if j != k for r in rr]
        if not others:
            continue
        s_o, y_o = arrays(others)
        thr = choose_threshold(s_o, y_o, criterion="youden").threshold
        s, y = arrays(rows)
        call = s >= thr
        a, b = int((call & y).sum()), int((~call & y).sum())
        c, d = int((~call & ~y).sum()), int((call & ~y).sum())
        tp, fn, tn, fp = tp + a, fn + b, tn + c, fp + d
        per_fold[k] = {"threshold": thr, "sensitivity": a / max(a + b, 1),
                       "specificity": c / max(c + d, 1)}
    return {"sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp, "folds": per_fold}


def run_fold(items: Sequence[SegmentItem], folds: dict[str, int], k: int, cfg: SegmentTraining,
             out: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train on folds != ``k``, predict fold ``k``; write weights and predictions under
    ``out/fold<k>`` (reused when already there)."""
    d = out / f"fold{k}"
    pred_path = d / "predictions.json"
    if pred_path.exists():
        return json.loads(pred_path.read_text())["rows"]
    train = [it for it in items if folds.get(it.image_id, -1) not in (k, -1)]
    test = [it for it in items if folds.get(it.image_id, -1) == k]
    log(f"fold {k}: {len(train)} training images, {len(test)} held out")
    model = train_segment_reader(train, cfg, log=lambda m: log(f"fold {k}: {m}"))
    d.mkdir(parents=True, exist_ok=True)
    save_checkpoint({**model.checkpoint(), "training": training_settings(cfg)},
                    d / "segment_reader.pt")
    rows = rows_for(test, predict_items(model, test))
    atomic_write_text(pred_path, json.dumps({"fold": k, "template": slip_box_template(train),
                                             "rows": rows,
                                             "level_check": level_check_rows(model, test),
                                             "slip_measure": slip_measure_rows(model, test)}))
    return rows


def summarise(out: Path, items: Sequence[SegmentItem], folds: dict[str, int]
              ) -> dict[str, Any]:
    """Per-fold metrics, their mean/SD/95% t-interval, and the nested disc-level point."""
    slip_boxes = {it.image_id: it.slip_boxes for it in items}
    sizes = {it.image_id: (int(it.planes.shape[2]), int(it.planes.shape[1])) for it in items}
    fold_rows, per_fold = {}, []
    for d in sorted(out.glob("fold*/predictions.json")):
        raw = json.loads(d.read_text())
        k = int(raw["fold"])
        fold_rows[k] = raw["rows"]
        m = fold_metrics(raw["rows"], slip_boxes, sizes, tuple(raw["template"]))
        m.update(level_check_metrics(raw.get("level_check", [])))
        m.update(slip_measure_metrics(raw.get("slip_measure", []), raw["rows"]))
        per_fold.append({"fold": k, **m})
    keys = [key for key in (per_fold[0] if per_fold else {})
            if key != "fold" and isinstance(per_fold[0][key], float)]
    mean = {key: asdict(fold_stat([f[key] for f in per_fold])) for key in keys}
    return {"folds": per_fold, "mean": mean, "disc_level": nested_disc_level(fold_rows)}
