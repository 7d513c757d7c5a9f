"""Per-class decision thresholds, chosen on validation data at disc level.

A detector scores boxes; a clinical call needs a yes/no per disc and class. The threshold of a
class is chosen on a validation set (never on the test set) by :func:`choose_thresholds`:

1. Ground-truth discs of each validation image are built with
   :func:`lumbardx.clinical.findings.build_findings` (levels, one disc per level).
2. Predictions are grouped into discs with every box counted (no threshold) and matched to the
   ground-truth discs (:func:`lumbardx.clinical.findings.match_discs`). A disc's score for a
   class is the best score of that class among its matched boxes, 0 when none.
3. Per class, a disc is positive when its ground truth has that class. Every distinct score
   is a candidate cut (``score >= cut`` is a call); the cut maximising the criterion is kept:
   Youden's J (sensitivity + specificity - 1, the default) or F1. Ties go to the highest cut
   (fewest false calls). The threshold returned is the midpoint between that cut and the next
   lower distinct score (or the cut itself when none is lower), so that it is not tied to one
   validation score.

Until thresholds are chosen, :data:`DEFAULT_THRESHOLDS` apply: 0.25 for every class, the
confidence threshold of YOLOv5's ``detect.py`` (``conf_thres=0.25``, ultralytics/yolov5).
Thresholds are stored as JSON ``{"class": threshold, ...}`` plus the choice's evidence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lumbardx.clinical.findings import build_findings, match_discs
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError

DEFAULT_THRESHOLDS: dict[str, float] = {"normal": 0.25, "herniation": 0.25,
                                        "spondylolisthesis": 0.25}  # yolov5 detect.py
CRITERIA = ("youden", "f1")


@dataclass
class DiscScore:
    """One ground-truth disc of the validation set: its true classes and best predicted
    score per class (classes without a matched box are absent = score 0)."""

    truth: frozenset[str]
    scores: dict[str, float]


@dataclass
class ThresholdChoice:
    """The threshold chosen for one class and the evidence.

    Attributes:
        label: class name.
        threshold: the chosen score threshold.
        criterion: ``"youden"`` or ``"f1"``; ``value`` its value at the threshold.
        sensitivity, specificity, precision: at the threshold, on the validation discs.
        n_positive, n_negative: validation discs with / without the class.
    """

    label: str
    threshold: float
    criterion: str
    value: float
    sensitivity: float
    specificity: float
    precision: float
    n_positive: int
    n_negative: int


def choose_threshold(scores: Sequence[float], positive: Sequence[bool], label: str = "",
                     criterion: str = "youden") -> ThresholdChoice:
    """Best threshold for one class from disc scores and truth (rule 3 of the module).

    Args:
        scores: ``[N]`` disc scores in [0, 1] (0 for discs without a box of the class).
        positive: ``[N]`` whether each disc truly has the class.
        label: class name (for the record).
        criterion: ``"youden"`` or ``"f1"``.

    Raises:
        ValueError: unknown criterion, lengths differ, or no positive or no negative disc
            (then no threshold can be chosen from the data).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; use one of {CRITERIA}")
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape:
        raise ValueError("scores and positive differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"class {label!r}: the validation discs need both positives and "
                         f"negatives (have {n_pos} and {n_neg})")
    cuts = np.unique(s[s > 0])[::-1]  # high to low; a cut at 0 would call every disc
    if len(cuts) == 0:
        cuts = np.array([1.0])
    best = None
    for cut in cuts:
        call = s >= cut
        tp, fp = int((call & y).sum()), int((call & ~y).sum())
        sens, spec = tp / n_pos, 1 - fp / n_neg
        prec = tp / (tp + fp) if tp + fp else 0.0
        value = sens + spec - 1 if criterion == "youden" else \
            (2 * prec * sens / (prec + sens) if prec + sens else 0.0)
        if best is None or value > best[0] + 1e-12:
            best = (value, float(cut), sens, spec, prec)
    assert best is not None
    value, cut, sens, spec, prec = best
    lower = s[s < cut]
    thr = (cut + float(lower.max())) / 2 if len(lower) else cut
    return ThresholdChoice(label, thr, criterion, float(value), sens, spec, prec, n_pos, n_neg)


def disc_scores(pairs: Iterable[tuple[Sequence[Box], Sequence[Box], tuple[int, int]]],
                floor: float = 0.0) -> list[DiscScore]:
    """Disc-level validation records from ``(truth boxes, predicted boxes, (W, H))`` per image
    (steps 1-2 of the module docstring). Box labels must already be class names. Predicted
    boxes scoring below ``floor`` are left out before grouping (0: every box)."""
    out: list[DiscScore] = []
    for truth_boxes, pred_boxes, size in pairs:
        gt = build_findings(truth_boxes, size)
        pred = build_findings(pred_boxes, size, thresholds=None, default_threshold=floor)
        match = match_discs(gt, pred)
        for disc, j in zip(gt.discs, match):
            truth = frozenset(f.label for f in disc.findings)
            out.append(DiscScore(truth, dict(pred.discs[j].scores) if j is not None else {}))
    return out


def choose_thresholds(records: Sequence[DiscScore], classes: Sequence[str],
                      criterion: str = "youden") -> dict[str, ThresholdChoice]:
    """A threshold per class in ``classes`` from disc-level validation records.

    Classes whose validation discs lack positives or negatives are left out (the caller keeps
    the default for them and should say so).
    """
    out: dict[str, ThresholdChoice] = {}
    for label in classes:
        scores = [r.scores.get(label, 0.0) for r in records]
        pos = [label in r.truth for r in records]
        if all(pos) or not any(pos):
            continue
        out[label] = choose_threshold(scores, pos, label, criterion)
    return out


def abnormal_calls(records: Sequence[DiscScore], thresholds: Mapping[str, float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per disc of ``records``: truly abnormal (its truth has a class other than ``normal``)
    and called abnormal (a non-normal class scores at least its threshold; a class without
    one needs 1.0). Two ``bool [N]`` arrays: the disc level of ``MODEL_CARD.md``."""
    truth = np.array([bool(r.truth - {"normal"}) for r in records], bool)
    call = np.array([any(s >= thresholds.get(k, 1.0) for k, s in r.scores.items()
                         if k != "normal") for r in records], bool)
    return truth, call


def diagnosis_discs(truth_boxes: Sequence[Box], pred_boxes: Sequence[Box],
                    size: tuple[int, int], thresholds: Mapping[str, float]
                    ) -> list[tuple[frozenset[str], frozenset[str]]]:
    """Per ground-truth disc of one image, top to bottom: its true classes and the classes
    **diagnosis calls** there. Only the predicted boxes at or above their class's threshold
    are grouped into discs (:func:`build_findings` with ``thresholds``, as
    :func:`lumbardx.stages.findings.find` does); a ground-truth disc no predicted disc matches
    gets no call (an empty set)."""
    gt = build_findings(truth_boxes, size)
    pred = build_findings(pred_boxes, size, thresholds)
    out = []
    for disc, j in zip(gt.discs, match_discs(gt, pred)):
        called = frozenset(f.label for f in pred.discs[j].findings) if j is not None else \
            frozenset()
        out.append((frozenset(f.label for f in disc.findings), called))
    return out


def diagnosis_calls(truth_boxes: Sequence[Box], pred_boxes: Sequence[Box],
                    size: tuple[int, int], thresholds: Mapping[str, float]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per ground-truth disc of one image: truly abnormal (a class other than ``normal``) and
    called abnormal **as diagnosis calls it** (:func:`diagnosis_discs`: a matched disc is
    called when it holds a finding other than ``normal``). Two ``bool [N]`` arrays, ``N`` =
    the ground-truth discs of the image.

    :func:`abnormal_calls` on :func:`disc_scores` records groups *every* box instead (the
    records thresholds are chosen on); at evaluation's low confidence floor the low-score
    boxes bend the spine curve fitted to them (real boxes are then set aside as off the spine)
    and make discs of their own that can take a ground-truth disc's match from the disc
    diagnosis would call there, so that figure understates diagnosis (``bench/disc_level.py``
    measures both).
    """
    return abnormal_discs(diagnosis_discs(truth_boxes, pred_boxes, size, thresholds))


def abnormal_discs(discs: Sequence[tuple[frozenset[str], frozenset[str]]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Of ``(true classes, called classes)`` per disc (:func:`diagnosis_discs`): truly abnormal
    and called abnormal (a class other than ``normal``), two ``bool [N]`` arrays."""
    return (np.array([bool(t - {"normal"}) for t, _ in discs], bool),
            np.array([bool(c - {"normal"}) for _, c in discs], bool))


def pooled_diagnosis_calls(images: Iterable[tuple[Sequence[Box], Sequence[Box],
                                                  tuple[int, int]]],
                           thresholds: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`diagnosis_calls` of every ``(truth boxes, predicted boxes, (W, H))`` of
    ``images``, concatenated: two ``bool [N]`` arrays over all their ground-truth discs."""
    calls = [diagnosis_calls(*image, thresholds) for image in images]
    if not calls:
        return np.zeros(0, bool), np.zeros(0, bool)
    return np.concatenate([c[0] for c in calls]), np.concatenate([c[1] for c in calls])


def finding_calls(images: Iterable[tuple[Sequence[Box], Sequence[Box], tuple[int, int]]],
                  thresholds: Mapping[str, float]) -> dict[str, dict[str, float | int]]:
    """Per class of ``thresholds``, pooled over the ground-truth discs of ``images`` called as
    diagnosis calls them (:func:`diagnosis_discs`): ``called`` (discs with the finding that
    diagnosis calls it at), ``positives``, ``false_calls`` (discs without it where it is
    called), ``negatives``, and the ``threshold``. A model's call rate per finding, as its
    reports state it (:attr:`lumbardx.study.ModelInfo.sensitivity_evidence`)."""
    return calls_of_discs([d for image in images for d in diagnosis_discs(*image, thresholds)],
                          thresholds)


def calls_of_discs(discs: Sequence[tuple[frozenset[str], frozenset[str]]],
                   thresholds: Mapping[str, float]) -> dict[str, dict[str, float | int]]:
    """:func:`finding_calls` of discs already called at ``thresholds`` (``(true classes,
    called classes)`` per disc, :func:`diagnosis_discs`)."""
    return {label: {**finding_counts(discs, label), "threshold": float(threshold)}
            for label, threshold in thresholds.items()}


def finding_counts(discs: Sequence[tuple[frozenset[str], frozenset[str]]], label: str
                   ) -> dict[str, int]:
    """Of ``(true classes, called classes)`` per disc (:func:`diagnosis_discs`), for
    ``label``: ``called`` (discs with it where it is called), ``positives``, ``false_calls``
    (discs without it where it is called) and ``negatives``."""
    truth = np.array([label in t for t, _ in discs], bool)
    call = np.array([label in c for _, c in discs], bool)
    return {"called": int((truth & call).sum()), "positives": int(truth.sum()),
            "false_calls": int((~truth & call).sum()), "negatives": int((~truth).sum())}


def thresholds_dict(choices: Mapping[str, ThresholdChoice],
                    defaults: Mapping[str, float] = DEFAULT_THRESHOLDS) -> dict[str, float]:
    """Class -> threshold: the chosen ones, the defaults for the rest."""
    return {**dict(defaults), **{k: v.threshold for k, v in choices.items()}}


def save_thresholds(path: str | Path, choices: Mapping[str, ThresholdChoice]) -> None:
    """Write ``{"thresholds": {class: value}, "evidence": {class: ThresholdChoice}}`` JSON."""
    data = {"thresholds": thresholds_dict(choices),
            "evidence": {k: asdict(v) for k, v in choices.items()}}
    Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")


def load_thresholds(path: str | Path) -> dict[str, float]:
    """Read thresholds written by :func:`save_thresholds` (or a plain ``{class: value}``).

    Raises:
        InputError: unreadable file, not JSON, or a value outside [0, 1].
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read thresholds JSON: {err}") from err
    table = data.get("thresholds", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise InputError(path, "thresholds JSON must be an object {class: threshold}")
    out: dict[str, float] = {}
    for k, v in table.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise InputError(path, f"threshold of {k!r} must be a number in [0, 1], got {v!r}")
        out[str(k)] = float(v)
    return out
