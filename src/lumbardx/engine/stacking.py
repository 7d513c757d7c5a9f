"""Stacked disc calls: the detector's scores and the segment reader's probabilities of one disc,
combined by a logistic regression per finding.

Per disc the features are the logits (probabilities clipped to ``[1e-4, 1 - 1e-4]``) of

* the detector's best score of each class of :data:`STACK_DETECTOR` among the boxes grouped into
  the disc (0 for a class without a box there; *every* box counted, not only those above the
  decision thresholds, or a disc the regression should raise could not be raised), and
* the reader's raw logits of :data:`STACK_READER` (before the release's Platt scaling, so that
  the regression does not depend on a calibration fitted after it), clipped to the same range,

``[8]`` in that order (:func:`stack_features`). For each finding of :data:`STACK_FINDINGS` a
logistic regression (L2 ridge on the weights, intercept free; :func:`fit_logistic`) gives the
probability that the disc has it; a finding is called at its threshold: F1 on the discs the
regression was fitted on (:func:`fit_stacked`, as the release chooses every other threshold),
or the lowest cut that keeps a given specificity on a set of discs
(:meth:`StackedCalls.at_specificity`: the detector's own, so that the calls keep today's
false-call rate).

Evidence (``docs/segments.md``, "Learned combiners"): fitted on the other folds' out-of-fold
discs, the rule raised the disc-level AUC on five folds of five and the sensitivity at
specificity 0.93 on four; :func:`fit_stacked` fits the release's regression on the out-of-fold
discs of every fold (``bench/segment_combined.py --stack-release``). Cut at the detector's
specificity, the calls did not win on enough folds to replace the detector's (``docs/segments.md``,
"Release operating point"): they are a research option, not the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from lumbardx.clinical.thresholds import choose_threshold

#: Detector classes whose best score on the disc is a feature.
STACK_DETECTOR: tuple[str, ...] = ("normal", "herniation", "spondylolisthesis")
#: Segment-reader probabilities that are features.
STACK_READER: tuple[str, ...] = ("normal", "herniation", "spondylolisthesis", "stenosis",
                                 "degeneration")
#: Findings the stacked regressions call.
STACK_FINDINGS: tuple[str, ...] = ("herniation", "spondylolisthesis")
#: The ridge of :func:`fit_logistic` the evidence was measured with.
RIDGE = 1.0
_CLIP = 1e-4


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[1e-4, 1 - 1e-4]``."""
    x = np.clip(np.asarray(p, np.float64), _CLIP, 1 - _CLIP)
    return np.log(x / (1 - x))


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Weights ``[F + 1]`` (last: intercept) of the logistic regression of ``y [N]`` (bool) on
    ``x [N, F]`` maximising the likelihood minus ``ridge * |w|^2`` (intercept free); zero
    weights and the log-odds of the base rate without both classes."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, bool).astype(np.float64)
    n, f = x.shape
    if n == 0 or y.min() == y.max():
        rate = float(np.clip(y.mean() if n else 0.5, _CLIP, 1 - _CLIP))
        return np.r_[np.zeros(f), np.log(rate / (1 - rate))]
    xa = np.c_[x, np.ones(n)]
    mask = np.r_[np.ones(f), 0.0]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        t = xa @ w
        q = 1.0 / (1.0 + np.exp(-t))
        nll = float(np.sum(np.logaddexp(0.0, t) - y * t)) + ridge * float((mask * w) @ w)
        return nll, xa.T @ (q - y) + 2 * ridge * mask * w

    return minimize(loss, np.zeros(f + 1), jac=True, method="L-BFGS-B").x


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Probabilities ``[N]`` of :func:`fit_logistic`'s weights ``w`` for ``x [N, F]``."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ np.asarray(w)[:-1]
                                 + np.asarray(w)[-1])))


def stack_features(detector: Mapping[str, float], reader_logits: Mapping[str, float]
                   ) -> np.ndarray:
    """The features ``float64 [8]`` of one disc: logits of the detector's best score per class
    of :data:`STACK_DETECTOR` (0 when absent) and the reader's raw logits of
    :data:`STACK_READER`, clipped as :func:`logit` clips (``logit(sigmoid(z))`` for ``z``)."""
    bound = float(logit(np.array(1.0)))
    return np.r_[logit(np.array([float(detector.get(c, 0.0)) for c in STACK_DETECTOR])),
                 np.clip([float(reader_logits[c]) for c in STACK_READER], -bound, bound)]


def cut_at_specificity(score: np.ndarray, y: np.ndarray, specificity: float) -> float:
    """The lowest cut (``score >= cut`` is a call) whose specificity on ``score [N]`` with
    truth ``y [N]`` (bool) is at least ``specificity``: just above the negatives' score below
    which that fraction of them lies (the lowest negative score, with no negative)."""
    score = np.asarray(score, np.float64)
    neg = np.sort(score[~np.asarray(y, bool)])
    if not len(neg):
        return float(score.min()) if len(score) else 0.0
    allowed = int(np.floor((1.0 - specificity) * len(neg) + 1e-9))  # false calls allowed
    k = len(neg) - allowed  # every negative up to the k-th smallest stays below the cut
    if k <= 0:
        return float(neg[0])
    return float(np.nextafter(neg[k - 1], np.inf))


@dataclass
class StackedCalls:
    """The fitted regressions and their thresholds.

    Attributes:
        weights: finding -> ``[9]`` weights of :func:`predict_logistic` on
            :func:`stack_features`.
        thresholds: finding -> the probability at which it is called.
        fitted_on: what the regressions were fitted on (discs, positives per finding, source).
    """

    weights: dict[str, list[float]]
    thresholds: dict[str, float]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Finding -> probability ``[N]`` for features ``x [N, 8]``."""
        x = np.asarray(x, np.float64).reshape(-1, len(STACK_DETECTOR) + len(STACK_READER))
        return {name: predict_logistic(np.asarray(w), x) for name, w in self.weights.items()}

    def at_specificity(self, x: np.ndarray, truths: Sequence[frozenset[str] | set[str]],
                       specificity: Mapping[str, float], source: str = "") -> StackedCalls:
        """The same regressions, each finding's threshold moved to the lowest cut whose
        specificity on the discs ``x [N, 8]`` (true findings ``truths``) is at least
        ``specificity[finding]`` (:func:`cut_at_specificity`): the release's operating point,
        the detector's own per-finding specificity on the same discs.

        Raises:
            ValueError: a finding without a target or without a negative disc.
        """
        p = self.probabilities(x)
        thresholds = {}
        for name in self.weights:
            if name not in specificity:
                raise ValueError(f"stacked calls: no target specificity for {name}")
            y = np.array([name in t for t in truths], bool)
            if y.all():
                raise ValueError(f"stacked calls: no negative disc of {name} to cut on")
            thresholds[name] = cut_at_specificity(p[name], y, float(specificity[name]))
        fitted = {**self.fitted_on, "operating_point": {
            "rule": "the detector's specificity per finding", "discs": int(len(p[name])),
            "specificity": {k: float(v) for k, v in specificity.items()}, "source": source}}
        return StackedCalls(dict(self.weights), thresholds, fitted)

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for a checkpoint (``torch.save``, ``weights_only`` loading) or JSON."""
        return {"features": {"detector": list(STACK_DETECTOR), "reader": list(STACK_READER)},
                **asdict(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StackedCalls:
        """Back from :meth:`to_dict`.

        Raises:
            ValueError: features other than this version's, findings other than
                :data:`STACK_FINDINGS`, or weights of the wrong length.
        """
        feats = raw.get("features", {})
        if (tuple(feats.get("detector", ())) != STACK_DETECTOR
                or tuple(feats.get("reader", ())) != STACK_READER):
            raise ValueError(f"stacked calls read features {feats}, not this version's "
                             f"{STACK_DETECTOR} + {STACK_READER}")
        weights = {str(k): [float(v) for v in w] for k, w in dict(raw["weights"]).items()}
        thresholds = {str(k): float(v) for k, v in dict(raw["thresholds"]).items()}
        if set(weights) != set(STACK_FINDINGS) or set(thresholds) != set(STACK_FINDINGS):
            raise ValueError(f"stacked calls need weights and a threshold for each of "
                             f"{', '.join(STACK_FINDINGS)}")
        n = len(STACK_DETECTOR) + len(STACK_READER) + 1
        if any(len(w) != n for w in weights.values()):
            raise ValueError(f"stacked calls: every finding needs {n} weights")
        return cls(weights, thresholds, dict(raw.get("fitted_on", {})))


def fit_stacked(x: np.ndarray, truths: Sequence[frozenset[str] | set[str]],
                source: str = "", ridge: float = RIDGE) -> StackedCalls:
    """Fit one regression per finding of :data:`STACK_FINDINGS` on discs ``x [N, 8]`` with
    their true findings, and choose each threshold by F1 on the same discs.

    Raises:
        ValueError: a finding has no positive or no negative disc.
    """
    x = np.asarray(x, np.float64)
    weights, thresholds, counts = {}, {}, {}
    for name in STACK_FINDINGS:
        y = np.array([name in t for t in truths], bool)
        if y.all() or not y.any():
            raise ValueError(f"stacked calls: no {'negative' if y.all() else 'positive'} "
                             f"disc of {name} to fit on")
        w = fit_logistic(x, y, ridge)
        weights[name] = [float(v) for v in w]
        thresholds[name] = float(choose_threshold(predict_logistic(w, x), y, name,
                                                  "f1").threshold)
        counts[name] = int(y.sum())
    return StackedCalls(weights, thresholds, {"discs": int(len(x)), "positives": counts,
                                              "ridge": ridge, "source": source})
