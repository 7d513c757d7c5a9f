"""Calibration, decision thresholds and the level-check cut of a segment reader, from the
out-of-fold predictions of its cross-validation (never from the images it is scored on).

* **Calibration** (:func:`fit_platt`): per label, ``p = sigmoid(a * logit + b)`` fitted by
  maximum likelihood on the pooled out-of-fold logits (Platt scaling; monotone, so AUC and AP
  do not change).
* **Thresholds** (:func:`release_settings`): per called label (spondylolisthesis, stenosis,
  degeneration), the F1-maximising cut on the calibrated out-of-fold probabilities
  (:func:`lumbardx.clinical.thresholds.choose_threshold`), as the detector's thresholds are
  chosen; a label without positives in the data gets none and is never called.
* **Level cut**: the ``lumbosacral`` probability below which the lowest disc is flagged: the
  smallest cut that leaves at most ``max_unflagged`` (1%) of the out-of-fold simulated
  miscounts (a lowest disc removed, or a false disc added below) unflagged. Flagging every one
  would let a single outlier flag most right counts; the share of right counts flagged is
  reported with the cut.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from lumbardx.clinical.thresholds import choose_threshold
from lumbardx.models.segment_reader import LABELS

CALLED: tuple[str, ...] = ("spondylolisthesis", "stenosis", "degeneration")


def fit_platt(logits: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` maximising the likelihood of ``positive`` under ``sigmoid(a * z + b)``
    (a tiny ridge keeps separable data finite); ``(1, 0)`` without both classes."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(positive, bool).astype(np.float64)
    if y.min() == y.max():
        return 1.0, 0.0

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        t = w[0] * z + w[1]
        nll = float(np.sum(np.logaddexp(0.0, t) - y * t)) + 1e-3 * float(w @ w)
        p = 1.0 / (1.0 + np.exp(-t))
        g = np.array([np.sum((p - y) * z), np.sum(p - y)]) + 2e-3 * w
        return nll, g

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def load_out_of_fold(cv_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list]:
    """Pooled prediction rows, level-check rows and slip-box templates of ``cv_dir/fold*``."""
    rows, checks, templates = [], [], []
    for f in sorted(Path(cv_dir).glob("fold*/predictions.json")):
        raw = json.loads(f.read_text())
        rows += raw["rows"]
        checks += raw.get("level_check", [])
        templates.append(raw["template"])
    if not rows:
        raise FileNotFoundError(f"{cv_dir}: no fold*/predictions.json")
    return rows, checks, templates


MAX_UNFLAGGED = 0.01


def release_settings(rows: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]],
                     labels: Sequence[str] = LABELS, max_unflagged: float = MAX_UNFLAGGED
                     ) -> dict[str, Any]:
    """Calibration, thresholds and level cut (module docstring) with their evidence."""
    k = len(rows[0]["logits"])
    z = np.array([r["logits"] for r in rows], np.float64).reshape(-1, k)
    t = np.array([r["targets"] for r in rows], np.float64).reshape(-1, k) > 0
    calibration: dict[str, tuple[float, float]] = {}
    for j, lab in enumerate(labels[:k]):
        calibration[lab] = fit_platt(z[:, j], t[:, j])
    thresholds, evidence = {}, {}
    for lab in CALLED:
        if lab not in labels[:k]:
            continue
        j = list(labels).index(lab)
        if t[:, j].all() or not t[:, j].any():
            evidence[lab] = {"note": "not called: the out-of-fold discs lack positives or "
                                     "negatives", "n_positive": int(t[:, j].sum())}
            continue
        a, b = calibration[lab]
        p = _sigmoid(a * z[:, j] + b)
        choice = choose_threshold(p.tolist(), t[:, j].tolist(), lab, criterion="f1")
        thresholds[lab] = float(choice.threshold)
        evidence[lab] = {"sensitivity": choice.sensitivity, "specificity": choice.specificity,
                         "precision": choice.precision, "f1": choice.value,
                         "n_positive": choice.n_positive, "n_negative": choice.n_negative}
    out: dict[str, Any] = {"calibration": calibration, "thresholds": thresholds,
                           "threshold_evidence": evidence, "level_cut": 0.5}
    if checks and "lumbosacral" in labels[:k]:
        a, b = calibration["lumbosacral"]
        right = _sigmoid(a * np.array([c["right"] for c in checks]) + b)
        wrong = _sigmoid(a * np.array([c["missed"] for c in checks]
                                      + [c["extra"] for c in checks]) + b)
        ordered = np.sort(wrong)[::-1]  # highest first
        allowed = int(math.floor(max_unflagged * len(wrong)))  # miscounts left unflagged
        cut = float(np.nextafter(ordered[allowed], math.inf)) if allowed < len(ordered) \
            else float(ordered[-1])
        out["level_cut"] = cut
        out["level_evidence"] = {"max_unflagged": max_unflagged,
                                 "right_counts": len(right), "miscounts": len(wrong),
                                 "right_flagged": float((right < cut).mean()),
                                 "miscounts_unflagged": float((wrong >= cut).mean())}
    return out
