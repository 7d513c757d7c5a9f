"""Stenosis and disc degeneration as the product calls them, end to end and out of fold.

``lumbardx diagnose --classes all`` calls **stenosis** and **degeneration** per disc when the
segment reader's calibrated probability reaches the release threshold (``segments.pt``:
Platt scaling and F1 thresholds chosen on the cross-validation's out-of-fold discs). The
reader's own figures (``bench/segment_crossval.py``) are on the *ground-truth* discs; here both
models are out of fold and read as diagnosis reads: for every fold ``k``, the fold's detector
(with its slip verifier, trained without fold ``k``) reads each held-out image (T1 and T2
together where the image has a partner), :func:`lumbardx.stages.findings.find` groups its boxes
into discs with the release thresholds, and the fold's reader ensemble (trained without fold
``k``) reads those discs; its logits are calibrated with the shipped release's Platt scaling.

Truth per ground-truth disc (:func:`lumbardx.engine.segment_training.truth_spine`): stenosis
when a ``Spinal Stenosis`` box (drawn on the canal) is nearest that disc, degeneration when a
``Degenerative Disc Disease`` box is among its boxes. Each ground-truth disc is matched
(:func:`lumbardx.clinical.findings.match_discs`) to a found disc (probability 0 when the
detector missed it); found discs that match no ground-truth disc are **extra discs**.

Reported per finding, per fold and pooled over folds (Wilson 95% intervals over discs):

* AUC over ground-truth discs, and over those the detector found (``auc_found_*``, with the
  share of positive discs found, ``found_*``): a missed disc scores 0, so the two AUCs separate
  what detection loses from what the reader loses on the crops of found discs;
* **disc-level AP**: average precision of the ranking of every found disc (ground-truth discs
  and extra discs, an extra disc never positive; a missed positive disc lowers the recall
  ceiling). Box AP@0.5 does not apply to stenosis, whose boxes mark the canal, not the disc
  box the finding is drawn on; for degeneration (disc boxes) box AP@0.5 (pycocotools, the
  finding's box = the disc's box) is reported too;
* sensitivity / specificity at the shipped thresholds (chosen by F1 on the same out-of-fold
  discs' ground-truth readings: mildly optimistic) and, nested, at an F1 cut chosen on the
  other folds' found discs; extra discs called are counted apart;
* disc-level F1 per fold at the shipped threshold and at the nested cut, paired, and the F1
  cut of every fold's found discs (``f1_shipped_vs_nested``): the evidence for choosing the
  release's thresholds on the discs diagnosis reads.

``--probe-above`` and ``--probe-gaps`` also read presumed discs where the detector found none
(above the highest disc found; in gaps level naming presumes undetected), and ``--compare``
pairs this run's per-fold metrics with an earlier run's (``docs/segments.md``).

Usage::

    python bench/extra_findings.py ../shared/data/yolospine-dev \
        --detectors runs/cv-yolov5n-pairs-verifier/yolov5n --readers runs/segcv-ensemble4 \
        --out bench/results/extra_findings.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name
from segment_combined import reader_logits
from segment_end_to_end import (
    add_fold_model_arguments,
    dataset_with_folds,
    fold_thresholds,
    folds_with_models,
    load_fold_models,
)

from lumbardx.clinical.findings import DiscFindings, SpineFindings, match_discs
from lumbardx.clinical.levels import GAP_FACTOR, local_spacing
from lumbardx.clinical.stats import proportion
from lumbardx.clinical.thresholds import DiscScore, choose_thresholds
from lumbardx.data.boxes import Box
from lumbardx.data.images import MedicalImage
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.segment_crossval import auc
from lumbardx.engine.segment_training import segment_label, truth_spine
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.segment_reader import LABELS
from lumbardx.stages import detect as detect_stage
from lumbardx.stages.findings import find
from lumbardx.stages.segments import SegmentStage, shipped_segment_reader

FINDINGS = ("stenosis", "degeneration")


@dataclass
class ImageRead:
    """One held-out image: per ground-truth disc its truth (``[G, 2]`` bool, :data:`FINDINGS`),
    whether a found disc matched it (``[G]``) and that disc's probabilities (``[G, 2]``, 0
    unmatched); the extra
    discs' probabilities (``[E, 2]``); for degeneration's box AP the ground-truth boxes and the
    found discs' boxes with their probability."""

    truth: np.ndarray
    found: np.ndarray
    prob: np.ndarray
    extra: np.ndarray
    ddd_truth: np.ndarray
    disc_boxes: np.ndarray
    disc_ddd: np.ndarray
    size: tuple[int, int]


def average_precision(scores: np.ndarray, positive: np.ndarray, n_positive: int) -> float:
    """Average precision (no interpolation, ties as one cut: the definition of scikit-learn's
    ``average_precision_score``) of ``scores [N]`` against ``positive [N]`` with recall taken
    over ``n_positive`` positives in all (those never scored lower the ceiling); NaN without
    one."""
    if n_positive <= 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, y = np.asarray(scores, np.float64)[order], np.asarray(positive, bool)[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the end of each tie group
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / n_positive
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


#: A presumed disc lies at least this many spacings inside the view (``--probe-above``).
PROBE_MARGIN = 0.25


def with_probe_above(spine: SpineFindings) -> SpineFindings:
    """``spine`` with a presumed disc one local spacing above its highest disc, along the
    fitted curve, when its centre lies at least :data:`PROBE_MARGIN` spacings below the top of
    the image (``--probe-above``; the detector misses degenerated discs above the run it
    finds). The presumed disc has the highest disc's box moved there and no finding; the
    segment reader reads it with the others."""
    if not spine.discs or spine.curve is None:
        return spine
    top = spine.discs[0]
    sp = top.spacing if np.isfinite(top.spacing) and top.spacing > 0 else 2.0 * top.box.height
    y = float(spine.curve.point_at(top.s - sp)[1])
    if y < PROBE_MARGIN * sp:
        return spine
    return replace(spine, discs=[presumed_disc(top, spine, top.s - sp), *spine.discs])


def presumed_disc(like: DiscFindings, spine: SpineFindings, s: float) -> DiscFindings:
    """A disc presumed at arc length ``s`` of ``spine``'s curve: ``like``'s box moved there,
    no finding, its level flagged."""
    assert spine.curve is not None
    x, y = (float(v) for v in spine.curve.point_at(s))
    dx, dy = x - like.centre[0], y - like.centre[1]
    b = like.box
    box = Box(b.label, b.x1 + dx, b.y1 + dy, b.x2 + dx, b.y2 + dy, score=0.0)
    return replace(like, level="presumed", level_uncertain=True, status="normal",
                   confidence=0.0, box=box, findings=[], scores={}, boxes=[box],
                   centre=(x, y), s=float(s))


def with_probe_gaps(spine: SpineFindings) -> SpineFindings:
    """``spine`` with the discs level naming presumes undetected in its gaps (a gap longer than
    :data:`~lumbardx.clinical.levels.GAP_FACTOR` median local spacings hides
    ``round(gap / spacing) - 1`` discs, :func:`~lumbardx.clinical.levels.name_levels`) placed
    evenly along the curve (``--probe-gaps``)."""
    if len(spine.discs) < 2 or spine.curve is None:
        return spine
    s = np.array([d.s for d in spine.discs])
    sp = local_spacing(s)
    ref = float(np.nanmedian(sp)) if np.isfinite(sp).any() else math.nan
    if not np.isfinite(ref) or ref <= 0:
        return spine
    out = [spine.discs[0]]
    for above, below in zip(spine.discs, spine.discs[1:]):
        gap = below.s - above.s
        skipped = int(round(gap / ref)) - 1 if gap > GAP_FACTOR * ref else 0
        out += [presumed_disc(above, spine, above.s + j * gap / (skipped + 1))
                for j in range(1, skipped + 1)]
        out.append(below)
    return spine if len(out) == len(spine.discs) else replace(spine, discs=out)


@dataclass
class Matched:
    """One image detected and grouped as diagnosis does, matched to its ground truth: the
    found spine, per ground-truth disc its truth (``[G, 2]`` bool, :data:`FINDINGS`) and the
    index of the found disc that matched it (``None``: missed)."""

    spine: SpineFindings
    truth: np.ndarray
    match: list[int | None]


def detect_and_match(m: Any, planes: np.ndarray, own: np.ndarray, named: list[Box],
                     image_id: str, probe_above: bool = False, probe_gaps: bool = False
                     ) -> Matched:
    """Detect (``m`` at its decision thresholds, T1 and T2 in ``planes``) and group one image
    as diagnosis does, with presumed discs when asked (:func:`with_probe_above`,
    :func:`with_probe_gaps`), and match the found discs to the ground-truth discs of
    ``named`` (boxes of every class of the dataset)."""
    with torch.inference_mode():
        x, geo = detect_stage.preprocess(m, own, (planes[0], planes[1]))
        boxes = detect_stage.detect(m, x, geo)
    h, w = own.shape
    image = MedicalImage(own.astype(np.float32), own, None, Path(image_id), "png")
    spine, _ = find(boxes, image, m)
    if probe_gaps:
        spine = with_probe_gaps(spine)
    if probe_above:
        spine = with_probe_above(spine)
    gt, labels = truth_spine(named, (w, h))
    truth = np.array([[f in lab for f in FINDINGS] for lab in labels], bool).reshape(-1, 2)
    match = match_discs(gt, spine) if spine.discs else [None] * len(gt.discs)
    return Matched(spine, truth, match)


def read_image(m: Any, reader: Any, release: Any, planes: np.ndarray, own: np.ndarray,
               named: list[Box], image_id: str, patient: str, probe_above: bool = False,
               probe_gaps: bool = False) -> ImageRead:
    """Detect, group and match one image (:func:`detect_and_match`) and read its found discs
    as diagnosis does (``reader``: the fold's, its logits calibrated by ``release``, a reader
    holding the release's Platt scaling)."""
    seen = detect_and_match(m, planes, own, named, image_id, probe_above, probe_gaps)
    spine, truth, match = seen.spine, seen.truth, seen.match
    h, w = own.shape
    cols = [LABELS.index(f) for f in FINDINGS]
    logits = reader_logits(spine, reader, planes, image_id, patient)
    probs = release.calibrated(logits).double().numpy()[:, cols]
    prob = np.array([probs[j] if j is not None else np.zeros(len(FINDINGS)) for j in match],
                    np.float64).reshape(-1, 2)
    used = {j for j in match if j is not None}
    extra = np.array([probs[j] for j in range(len(spine.discs)) if j not in used],
                     np.float64).reshape(-1, 2)
    ddd = np.array([[b.x1, b.y1, b.x2, b.y2] for b in named
                    if segment_label(b.label) == "degeneration"],
                   np.float32).reshape(-1, 4)
    disc_boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in spine.discs],
                          np.float32).reshape(-1, 4)
    found = np.array([j is not None for j in match], bool)
    return ImageRead(truth, found, prob, extra, ddd, disc_boxes,
                     probs[:, 1].astype(np.float32) if len(probs) else np.zeros(0, np.float32),
                     (w, h))


def held_out(ds: Any, fold_of: dict[str, int], k: int) -> Iterator[tuple[int, Any, Any, list[Box]]]:
    """Fold ``k``'s images of ``ds``: index, record, sample and its boxes named by class."""
    for i, rec in enumerate(ds.records):
        if fold_of.get(rec.image_id) == k:
            sample = ds[i]
            yield i, rec, sample, [Box(ds.class_names[int(lab)], *map(float, b))
                                   for b, lab in zip(sample.boxes, sample.labels, strict=True)]


def records(reads: list[ImageRead]) -> list[DiscScore]:
    """Found discs (ground-truth discs matched or not, and extra discs) as threshold
    records: an extra disc's truth is empty."""
    out = [DiscScore(frozenset(f for f, t in zip(FINDINGS, tr) if t),
                     dict(zip(FINDINGS, map(float, pr))))
           for r in reads for tr, pr in zip(r.truth, r.prob)]
    out += [DiscScore(frozenset(), dict(zip(FINDINGS, map(float, pr))))
            for r in reads for pr in r.extra]
    return out


def point(reads: list[ImageRead], c: int, cut: float) -> np.ndarray:
    """``[tp, positives, tn, negatives, extra called]`` over ground-truth discs at ``cut``."""
    y = np.concatenate([r.truth[:, c] for r in reads])
    p = np.concatenate([r.prob[:, c] for r in reads])
    extra = np.concatenate([r.extra[:, c] for r in reads]) if reads else np.zeros(0)
    call = p >= cut
    return np.array([(call & y).sum(), y.sum(), (~call & ~y).sum(), (~y).sum(),
                     (extra >= cut).sum()], np.int64)


def f1_of(pt: np.ndarray) -> float:
    """Disc-level F1 of a :func:`point` (``[tp, positives, tn, negatives, extra called]``):
    a called extra disc is a false call; 0 when nothing is called right."""
    tp, pos, tn, neg, extra = (int(v) for v in pt)
    false = (neg - tn) + extra
    return 2.0 * tp / (2 * tp + (pos - tp) + false) if tp else 0.0


def threshold_comparison(reads: dict[int, list[ImageRead]], cuts: dict[int, dict[str, float]],
                         thresholds: dict[str, float]) -> dict[str, Any]:
    """Per finding: each fold's F1 at the shipped threshold and at its nested cut, their
    paired difference (95% t-interval, folds won:lost), and ``release_f1``, the F1 cut of the
    found discs of every fold (``docs/segments.md``, "Thresholds on the discs diagnosis
    reads")."""
    every = records([r for rs in reads.values() for r in rs])
    release = {n: ch.threshold for n, ch in choose_thresholds(every, FINDINGS, "f1").items()}
    out: dict[str, Any] = {}
    for c, name in enumerate(FINDINGS):
        shipped = [f1_of(point(rs, c, thresholds[name])) for rs in reads.values()]
        nested = [f1_of(point(rs, c, cuts[k][name])) for k, rs in reads.items()]
        diff = [b - a for a, b in zip(shipped, nested)]
        out[name] = {"f1_shipped": shipped, "f1_nested": nested,
                     "paired": fold_differences(diff),
                     "shipped_threshold": thresholds[name], "release_f1": release[name]}
    return out


def missed_where(reads: list[ImageRead], c: int) -> dict[str, int]:
    """Where the positive ground-truth discs of finding ``c`` that no found disc matched lie:
    ``lowest`` (the image's lowest ground-truth disc), ``between`` (found discs above and
    below it: a gap along the spine), ``above`` (found discs only below it: above the run of
    found discs), ``below`` (found discs only above it, not the lowest) or ``none`` (nothing
    found in the image)."""
    out = {"lowest": 0, "between": 0, "above": 0, "below": 0, "none": 0}
    for r in reads:
        for g in np.flatnonzero(r.truth[:, c] & ~r.found):
            up, down = r.found[:g].any(), r.found[g + 1:].any()
            if g == len(r.found) - 1:
                out["lowest"] += 1
            elif up and down:
                out["between"] += 1
            elif down:
                out["above"] += 1
            elif up:
                out["below"] += 1
            else:
                out["none"] += 1
    return out


def fold_metrics(reads: list[ImageRead], thresholds: dict[str, float]) -> dict[str, Any]:
    """AUC, disc-level AP and the point at the shipped thresholds, per finding."""
    row: dict[str, Any] = {"images": len(reads), "discs": int(sum(len(r.truth) for r in reads)),
                           "extra_discs": int(sum(len(r.extra) for r in reads))}
    for c, name in enumerate(FINDINGS):
        y = np.concatenate([r.truth[:, c] for r in reads])
        p = np.concatenate([r.prob[:, c] for r in reads])
        e = np.concatenate([r.extra[:, c] for r in reads])
        found = np.concatenate([r.found for r in reads])
        row[f"n_{name}"] = int(y.sum())
        row[f"auc_{name}"] = auc(p, y)
        # the same AUC over the ground-truth discs the detector found, and the share of
        # positives found: what the crops of found discs lose, apart from missed discs
        row[f"auc_found_{name}"] = auc(p[found], y[found])
        row[f"found_{name}"] = float(found[y].mean()) if y.any() else math.nan
        row[f"missed_{name}"] = missed_where(reads, c)
        # AP over every found disc; a positive the detector missed is never retrieved
        row[f"ap_{name}"] = average_precision(np.r_[p[found], e],
                                              np.r_[y[found], np.zeros(len(e), bool)],
                                              int(y.sum()))
        tp, pos, tn, neg, ex = point(reads, c, thresholds[name])
        row[f"sens_{name}"], row[f"spec_{name}"] = tp / max(pos, 1), tn / max(neg, 1)
        row[f"extra_called_{name}"] = int(ex)
    gts = [GroundTruth(str(i), *r.size, r.ddd_truth, np.zeros(len(r.ddd_truth), np.int64))
           for i, r in enumerate(reads)]
    dts = [Prediction(r.disc_boxes, r.disc_ddd, np.zeros(len(r.disc_ddd), np.int64))
           for r in reads]
    row["box_ap50_degeneration"] = float(coco_evaluate(gts, dts, ["degeneration"]).ap50[0])
    return row


def pooled(reads: dict[int, list[ImageRead]], cuts: dict[int, dict[str, float]] | None,
           thresholds: dict[str, float]) -> dict[str, Any]:
    """Sensitivity / specificity pooled over folds (Wilson 95%): at the shipped thresholds
    (``cuts`` None) or each fold at its own nested cut."""
    out: dict[str, Any] = {}
    for c, name in enumerate(FINDINGS):
        tot = sum((point(rs, c, thresholds[name] if cuts is None else cuts[k][name])
                   for k, rs in reads.items()), np.zeros(5, np.int64))
        sens, spec = proportion(int(tot[0]), int(tot[1])), proportion(int(tot[2]), int(tot[3]))
        out[name] = {"sensitivity": sens.estimate, "sensitivity_ci95": [sens.ci_low, sens.ci_high],
                     "specificity": spec.estimate, "specificity_ci95": [spec.ci_low, spec.ci_high],
                     "extra_discs_called": int(tot[4]), "counts": [int(v) for v in tot[:4]]}
        if cuts is not None:
            out[name]["cuts"] = {str(k): round(cuts[k][name], 4) for k in sorted(cuts)}
    return out


PAIRED_METRICS = tuple(f"{m}_{n}" for n in FINDINGS
                       for m in ("auc", "ap", "found", "auc_found", "sens", "spec")) + (
    "extra_discs",)


def paired_vs(folds: list[dict[str, Any]], other: Path) -> dict[str, Any]:
    """This run's per-fold metrics minus those of an earlier run's results (``--compare``),
    paired by fold (95% t-interval, folds won:lost); the folds must be the same."""
    theirs = {f["fold"]: f for f in json.loads(other.read_text(encoding="utf-8"))["folds"]}
    if sorted(theirs) != [f["fold"] for f in folds]:
        raise SystemExit(f"{other}: other folds ({sorted(theirs)}) than this run's")
    return {"file": other.name,
            **{m: fold_differences([f[m] - theirs[f["fold"]][m] for f in folds])
               for m in PAIRED_METRICS}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fold_model_arguments(ap)
    ap.add_argument("--segments-weights", type=Path, default=None,
                    help="the release whose calibration and thresholds are measured "
                         "(default: the shipped segments.pt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--probe-above", action="store_true",
                    help="also read a presumed disc one spacing above the highest disc found")
    ap.add_argument("--probe-gaps", action="store_true",
                    help="also read the discs level naming presumes undetected in gaps")
    ap.add_argument("--compare", type=Path, default=None,
                    help="an earlier run's results: differences paired by fold")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    release_path = args.segments_weights or shipped_segment_reader()
    if release_path is None:
        print("no segment reader release to measure", file=sys.stderr)
        return 2
    release = SegmentStage.load(release_path)
    thresholds = {f: float(release.thresholds[f]) for f in FINDINGS}
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    det_thresholds = fold_thresholds(args.detector_thresholds)
    ready = folds_with_models(fold_of, args.detectors, args.readers)
    if not ready:
        print("no fold has both a detector and a reader", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    reads: dict[int, list[ImageRead]] = {}
    for k in ready:
        m, reader = load_fold_models(k, args.detectors, args.readers, det_thresholds)
        reads[k] = []
        for i, rec, sample, named in held_out(ds, fold_of, k):
            reads[k].append(read_image(m, reader, release.reader, pairs[i].image, sample.image,
                                       named, rec.image_id, rec.patient, args.probe_above,
                                       args.probe_gaps))
        print(f"fold {k}: read ({time.perf_counter() - t0:.0f} s)", flush=True)
    folds = [{"fold": k, **fold_metrics(rs, thresholds)} for k, rs in reads.items()]
    cuts = {k: {n: ch.threshold for n, ch in choose_thresholds(
        records([r for j, rs in reads.items() if j != k for r in rs]), FINDINGS, "f1").items()}
        for k in reads} if len(reads) > 1 else None
    keys = [k for k in folds[0] if k not in ("fold",)]
    result: dict[str, Any] = {
        "detectors": str(args.detectors), "readers": str(args.readers),
        "probe_above": bool(args.probe_above), "probe_gaps": bool(args.probe_gaps),
        "detector_thresholds": det_thresholds or "0.25 every class (fold checkpoints)",
        "release": {"file": release_path.name, "version": release.summary["version"],
                    "thresholds": thresholds},
        "folds_scored": ready, "folds": folds,
        "mean": {key: fold_stat([f[key] for f in folds]).__dict__ for key in keys
                 if not key.startswith(("n_", "images", "discs", "extra", "missed_"))},
        "missed_positive_discs": {
            name: {where: sum(f[f"missed_{name}"][where] for f in folds)
                   for where in ("lowest", "between", "above", "below", "none")}
            for name in FINDINGS},
        "pooled_at_release_thresholds": pooled(reads, None, thresholds),
        "pooled_nested_f1": (pooled(reads, cuts, thresholds) if cuts is not None
                             else "needs two or more folds"),
        "f1_shipped_vs_nested": (threshold_comparison(reads, cuts, thresholds)
                                 if cuts is not None else "needs two or more folds"),
        "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    if args.compare is not None:
        result["paired_vs"] = paired_vs(folds, args.compare)
    atomic_write_text(args.out, json.dumps(result, indent=1, default=lambda v: None
                                           if isinstance(v, float) and math.isnan(v) else v))
    for f in folds:
        print(f"fold {f['fold']}: " + "; ".join(
            f"{n} AUC {f[f'auc_{n}']:.3f} AP {100 * f[f'ap_{n}']:.1f} sens "
            f"{100 * f[f'sens_{n}']:.1f}% spec {100 * f[f'spec_{n}']:.1f}%" for n in FINDINGS)
            + f"; degeneration box AP@0.5 {100 * f['box_ap50_degeneration']:.1f}")
    if isinstance(result["f1_shipped_vs_nested"], dict):
        for n, v in result["f1_shipped_vs_nested"].items():
            d = v["paired"]
            print(f"{n}: F1 nested minus shipped {d['mean']:+.3f} ({d['ci_low']:+.3f} to "
                  f"{d['ci_high']:+.3f}; {d['wins']}:{d['losses']}); F1 cut of every fold's "
                  f"found discs {v['release_f1']:.3f} (shipped {v['shipped_threshold']:.3f})")
    for key in ("pooled_at_release_thresholds", "pooled_nested_f1"):
        if isinstance(result[key], dict):
            print(key + ": " + "; ".join(
                f"{n} sens {100 * v['sensitivity']:.1f}% spec {100 * v['specificity']:.1f}% "
                f"(extra discs called {v['extra_discs_called']})"
                for n, v in result[key].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
