"""Degeneration-only discs as discs (``--rule ddd``: fold detectors trained with ``--classes
study+ddd``) or as regions the loss ignores (``--rule ddd-ignore``: ``--classes
study+ddd-ignore``), scored fold by fold against the replicate cross-validation of the shipped
recipe, by the rule fixed before they were scored (``docs/training.md``, "Degeneration-only
discs as discs" and "... as ignored regions"; :data:`RULES`).

What each fold is scored on, all on its held-out images (T1 and T2 read together where the
image has a partner, the verifier applied as in diagnosis):

* COCO AP@0.5 per class (pycocotools, 101-point) and the slip image-level AUC, boxes down to
  :data:`~lumbardx.models.pretrained.EVAL_CONF`, against the study classes' ground truth
  (as ``bench/scale_tta.py``'s ``single`` rule scores the replicate); normal AP also against
  the ``study+ddd`` ground truth, which holds the 423 degeneration-only discs;
* the degenerated and stenosed discs found (``found_*`` of ``bench/extra_findings.py``): the
  share of ground-truth discs with the finding that a disc diagnosis groups matches, the
  detector at the shipped default's thresholds;
* the disc level as diagnosis calls it (:func:`lumbardx.clinical.thresholds.
  pooled_diagnosis_calls`), each fold at the F1 thresholds chosen on the other folds'
  every-box disc records (nested), pooled over the folds (needs all of them).

The replicate's figures are the committed results of its fold detectors
(``runs/cv-yolov5n-pairs-verifier``): ``bench/results/scale_tta.json`` (rule ``single``) and
``bench/results/extra_findings.json``.

A five-fold training of the detector takes longer than one sitting on a two-core machine, so
the folds are scored as they finish: each run scores the folds whose ``fold<k>/last.pt`` is on
disk and not yet in ``--state`` (gzip JSON: per fold its figures and, per held-out image, its
every-box disc scores and its boxes at or above :data:`STATE_FLOOR`, which with the dataset's
own ground truth is all the nested disc level needs; no label of the dataset is stored), adds
them to it and writes the comparison of the folds scored so far; with every fold in the state
it pools the disc level and decides the rule. A counted part that can no longer reach its
count (slip AP higher or equal on 3 of 5 folds, degenerated discs found more on 4 of 5) decides
the rule before the last folds are scored.

Usage::

    python bench/ddd_discs.py ../shared/data/yolospine-dev \\
        --detectors runs/cv-yolov5n-pairs-ddd-verifier/yolov5n \\
        --state bench/results/ddd_discs_folds.json.gz --out bench/results/ddd_discs.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disc_level import counts, point_of, read_fold, study_boxes
from extra_findings import FINDINGS, detect_and_match, held_out
from machine_info import cpu_name
from scale_tta import box_scores
from segment_end_to_end import FOLDS, dataset_with_folds, fold_thresholds

from lumbardx.clinical.findings import build_findings
from lumbardx.clinical.thresholds import (
    DiscScore,
    choose_thresholds,
    disc_scores,
    pooled_diagnosis_calls,
    thresholds_dict,
)
from lumbardx.data.boxes import Box
from lumbardx.data.dataset import LumbarDataset
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_bytes, atomic_write_text
from lumbardx.models.pretrained import load_detector

RESULTS = Path(__file__).resolve().parent / "results"
#: Boxes kept in the state for the nested disc level: diagnosis groups only boxes at or above
#: their class's threshold, so any threshold at or above this floor is served exactly.
STATE_FLOOR = 0.05
CLASSES = ("normal", "herniation", "spondylolisthesis")
#: Per-fold figures compared with the replicate's (``found_*``: extra_findings.json; the rest:
#: scale_tta.json, rule ``single``).
COMPARED = ("ap50_herniation", "ap50_spondylolisthesis", "ap50_normal", "map50",
            "slip_image_auc", "found_degeneration", "found_stenosis")

#: Rounding slack of the rule's bounds (a difference of exactly -0.5 points holds).
EPS = 1e-9
#: Folds (of five) on which slip AP must be higher or equal.
SLIP_FOLDS = 3


@dataclass(frozen=True)
class Rule:
    """The parts of a rule that differ between the variants: on how many folds (of five) the
    degenerated discs found must be more (``found_strict``) or more or equal, and where the
    rule is written."""

    found_folds: int
    found_strict: bool
    section: str

    @property
    def found_words(self) -> str:
        """How the degenerated-discs part reads."""
        return "more" if self.found_strict else "more or equal"

    @property
    def found_key(self) -> str:
        """The result key counting the folds on which that part held."""
        return ("degenerated_found_folds_higher" if self.found_strict
                else "degenerated_found_folds_higher_or_equal")


#: The variants' rules: degeneration-only discs as discs must find more of them on four folds;
#: as ignored regions, which aim at the slip class, they must not lose them on three.
RULES = {
    "ddd": Rule(4, True, "docs/training.md, 'Degeneration-only discs as discs'"),
    "ddd-ignore": Rule(3, False, "docs/training.md, 'Degeneration-only discs as ignored "
                                 "regions'"),
}

Image = tuple[list[Box], list[Box], tuple[int, int]]  # truth, predicted boxes, (W, H)


def replicate_folds(scale_tta: Path, extra_findings: Path) -> dict[int, dict[str, float]]:
    """The replicate's per-fold figures of :data:`COMPARED` and its pooled nested disc
    level (``"disc_level"``, under key ``-1``)."""
    tta = json.loads(scale_tta.read_text(encoding="utf-8"))["rules"]["single"]
    extra = {f["fold"]: f for f in
             json.loads(extra_findings.read_text(encoding="utf-8"))["folds"]}
    out: dict[int, dict[str, Any]] = {}
    for f in tta["folds"]:
        k = int(f["fold"])
        out[k] = {m: float(f[m]) for m in COMPARED if m in f}
        out[k].update({f"found_{n}": float(extra[k][f"found_{n}"]) for n in FINDINGS})
    out[-1] = {"disc_level": tta["disc_level_pooled"]}
    return out


def normal_ap_with_ddd(images: list[Image], ddd_truth: list[np.ndarray]) -> float:
    """Normal AP@0.5 against the ``study+ddd`` ground truth (``ddd_truth``: per image its
    normal boxes ``float32 [N, 4]`` under that mapping), scored as :func:`box_scores` scores
    (COCO evaluates each class on its own boxes)."""
    return box_scores([([Box("normal", *map(float, b)) for b in normal], pred, wh)
                       for (_, pred, wh), normal in zip(images, ddd_truth, strict=True)]
                      )["ap50_normal"]


def found_share(matched: list[Any]) -> dict[str, Any]:
    """``found_<finding>`` (share of the ground-truth discs with the finding that a found disc
    matched) and ``n_<finding>`` of :data:`FINDINGS`, over one fold's images."""
    truth = np.concatenate([m.truth for m in matched]).reshape(-1, len(FINDINGS))
    found = np.concatenate([np.array([j is not None for j in m.match], bool) for m in matched])
    out: dict[str, Any] = {}
    for c, name in enumerate(FINDINGS):
        y = truth[:, c]
        out[f"n_{name}"] = int(y.sum())
        out[f"found_{name}"] = float(found[y].mean()) if y.any() else math.nan
    return out


def box_rows(boxes: list[Box], floor: float) -> list[list[Any]]:
    """``[label, x1, y1, x2, y2, score]`` rows of the boxes scoring at or above ``floor``
    (coordinates to 0.01 px, scores to 6 decimals)."""
    return [[b.label, *(round(v, 2) for v in (b.x1, b.y1, b.x2, b.y2)), round(b.score, 6)]
            for b in boxes if b.score is not None and b.score >= floor]


def disc_truth(ds: Any) -> dict[str, tuple[list[Box], tuple[int, int]]]:
    """Every image's study-class ground-truth boxes and ``(W, H)``, by image id."""
    out = {}
    for i, rec in enumerate(ds.records):
        sample = ds[i]
        h, w = sample.image.shape
        out[rec.image_id] = (study_boxes(ds, sample), (w, h))
    return out


def score_fold(k: int, ds: Any, ds_ddd: dict[str, np.ndarray], pairs: Any,
               fold_of: dict[str, int], detectors: Path, shipped: dict[str, float]
               ) -> dict[str, Any]:
    """Fold ``k``'s figures, disc records and stored images (module docstring)."""
    images = read_fold(k, ds, pairs, fold_of, detectors)
    m = load_detector(detectors / f"fold{k}" / "last.pt", "cpu", backend="torch")
    m.set_thresholds(shipped)
    matched, ddd_truth, ids = [], [], []
    for i, rec, sample, named in held_out(ds, fold_of, k):  # in read_fold's order
        matched.append(detect_and_match(m, pairs[i].image, sample.image, named, rec.image_id))
        ddd_truth.append(ds_ddd[rec.image_id])
        ids.append(rec.image_id)
    stored = []
    for image_id, image in zip(ids, images, strict=True):
        stored.append({"image": image_id,
                       "scores": [{c: round(v, 6) for c, v in r.scores.items()}
                                  for r in disc_scores([image])],
                       "boxes": box_rows(image[1], STATE_FLOOR)})
    return {"fold": k, "images": len(images), **box_scores(images),
            "ap50_normal_ddd_truth": normal_ap_with_ddd(images, ddd_truth),
            **found_share(matched), "stored": stored}


def fold_records(stored: list[dict[str, Any]],
                 truth: dict[str, tuple[list[Box], tuple[int, int]]]
                 ) -> tuple[list[DiscScore], list[Image]]:
    """One fold of the state back as every-box disc records (the stored scores with the
    dataset's truth of each ground-truth disc) and images ``(truth boxes, boxes at or above
    :data:`STATE_FLOOR`, (W, H))``."""
    records, images = [], []
    for im in stored:
        boxes, size = truth[im["image"]]
        discs = build_findings(boxes, size).discs
        if len(discs) != len(im["scores"]):
            raise SystemExit(f"{im['image']}: {len(im['scores'])} discs stored, "
                             f"{len(discs)} in the ground truth (another dataset?)")
        records += [DiscScore(frozenset(f.label for f in d.findings), dict(s))
                    for d, s in zip(discs, im["scores"], strict=True)]
        images.append((boxes, [Box(r[0], *r[1:5], score=r[5]) for r in im["boxes"]], size))
    return records, images


def disc_level(state: dict[int, dict[str, Any]],
               truth: dict[str, tuple[list[Box], tuple[int, int]]]) -> dict[str, Any]:
    """The nested disc level as diagnosis calls it, pooled over every fold of ``state``."""
    both = {k: fold_records(f["stored"], truth) for k, f in state.items()}
    records = {k: r for k, (r, _) in both.items()}
    per_fold, cuts = [], {}
    for k in state:
        th = thresholds_dict(choose_thresholds(
            [r for j in state if j != k for r in records[j]], list(CLASSES), "f1"))
        low = {c: v for c, v in th.items() if v < STATE_FLOOR}
        if low:
            raise SystemExit(f"fold {k}: thresholds {low} below the stored floor {STATE_FLOOR}")
        cuts[k] = th
        per_fold.append(counts(*pooled_diagnosis_calls(both[k][1], th)))
    return {**point_of(np.sum(per_fold, axis=0)), "thresholds": {str(k): v for k, v in
                                                                  cuts.items()},
            "per_fold": [[float(c[0] / max(c[1], 1)), float(c[2] / max(c[3], 1))]
                         for c in per_fold]}


def decide(folds: list[dict[str, Any]], base: dict[int, dict[str, Any]],
           pooled: dict[str, Any] | None, k_all: int, rule: Rule = RULES["ddd"]
           ) -> dict[str, Any]:
    """``rule`` (:data:`RULES`) on the folds scored: ``pending`` until all ``k_all`` are,
    unless a counted part (slip AP, degenerated discs found) can no longer hold."""
    diff = {m: [f[m] - base[f["fold"]][m] for f in folds] for m in COMPARED}
    herniation = float(np.mean(diff["ap50_herniation"])) if folds else math.nan
    slip_ge = sum(d >= 0 for d in diff["ap50_spondylolisthesis"])
    found = sum((d > 0) if rule.found_strict else (d >= 0) for d in diff["found_degeneration"])
    parts: dict[str, Any] = {
        "herniation_ap_mean_difference": herniation,
        "herniation_ap_holds": bool(herniation >= -0.005 - EPS),
        "slip_ap_folds_higher_or_equal": int(slip_ge),
        "slip_ap_holds": bool(slip_ge >= SLIP_FOLDS),
        rule.found_key: int(found),
        "degenerated_found_holds": bool(found >= rule.found_folds),
    }
    if pooled is not None:
        ref = base[-1]["disc_level"]
        ds = pooled["sensitivity"] - ref["sensitivity"]
        dp = pooled["specificity"] - ref["specificity"]
        parts.update({"disc_sensitivity_difference": ds, "disc_specificity_difference": dp,
                      "disc_level_holds": bool(ds >= -EPS and dp >= -0.005 - EPS)})
    left = k_all - len(folds)
    # A counted part that cannot reach its count even if every fold left goes its way has
    # failed already: the rule's outcome is then known before the last folds are scored.
    lost = [f"{name} on {have} of {len(folds)} folds scored, {need} of {k_all} needed"
            for name, have, need in (("slip AP higher or equal", slip_ge, SLIP_FOLDS),
                                     (f"degenerated discs found {rule.found_words}", found,
                                      rule.found_folds))
            if have + left < need]
    if left and lost:
        parts["decision"] = "keep the shipped (decided early: " + "; ".join(lost) + ")"
    elif left:
        parts["decision"] = f"pending: {len(folds)} of {k_all} folds scored"
    else:
        keys = ("herniation_ap_holds", "slip_ap_holds", "degenerated_found_holds",
                "disc_level_holds")
        parts["decision"] = "adopt" if all(parts[key] for key in keys) else "keep the shipped"
    return parts


def read_state(path: Path) -> dict[int, dict[str, Any]]:
    """The folds scored by earlier runs (empty when ``path`` does not exist)."""
    if not path.is_file():
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return {int(f["fold"]): f for f in json.load(fh)["folds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--detectors", type=Path, required=True,
                    help="<verifier crossval>/<model>: fold<k>/last.pt per fold")
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--state", type=Path, required=True,
                    help="gzip JSON of the folds scored so far (read, extended, written)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rule", choices=sorted(RULES), default="ddd",
                    help="the variant's rule (module docstring)")
    ap.add_argument("--replicate-scale-tta", type=Path, default=RESULTS / "scale_tta.json")
    ap.add_argument("--replicate-extra-findings", type=Path,
                    default=RESULTS / "extra_findings.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = replicate_folds(args.replicate_scale_tta, args.replicate_extra_findings)
    state = read_state(args.state)
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    k_all = len(set(fold_of.values()))
    todo = [k for k in sorted(set(fold_of.values()))
            if k not in state and (args.detectors / f"fold{k}" / "last.pt").is_file()]
    if todo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ddd = LumbarDataset(args.data, classes="study+ddd", cache=True)
        normal = ddd.class_names.index("normal")
        ds_ddd = {rec.image_id: ddd[i].boxes[ddd[i].labels == normal].astype(np.float32)
                  for i, rec in enumerate(ddd.records)}
        shipped = fold_thresholds("shipped")
        assert shipped is not None
        for k in todo:
            state[k] = score_fold(k, ds, ds_ddd, pairs, fold_of, args.detectors, shipped)
            state[k]["detectors"] = str(args.detectors)
            payload = json.dumps({"folds": [state[j] for j in sorted(state)]})
            atomic_write_bytes(args.state, gzip.compress(payload.encode("utf-8"), mtime=0))
            print(f"fold {k}: scored ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not state:
        print("no fold detector to score and no state", file=sys.stderr)
        return 2
    folds = [{m: v for m, v in state[k].items() if m != "stored"} for k in sorted(state)]
    pooled = disc_level(state, disc_truth(ds)) if len(state) == k_all else None
    result = {
        "rule": RULES[args.rule].section,
        "replicate": {"scale_tta": args.replicate_scale_tta.name,
                      "extra_findings": args.replicate_extra_findings.name},
        "folds_scored": sorted(state), "folds": folds,
        "replicate_folds": [{"fold": f["fold"], **base[f["fold"]]} for f in folds],
        "mean": {m: fold_stat([f[m] for f in folds]).__dict__
                 for m in (*COMPARED, "ap50_normal_ddd_truth")},
        "paired_vs_replicate": {m: fold_differences([f[m] - base[f["fold"]][m] for f in folds])
                                for m in COMPARED},
        "disc_level_pooled_nested": pooled if pooled is not None
        else f"needs all {k_all} folds",
        "replicate_disc_level_pooled_nested": base[-1]["disc_level"],
        "rule_outcome": decide(folds, base, pooled, k_all, RULES[args.rule]),
        "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1, default=lambda v: None
                                           if isinstance(v, float) and math.isnan(v) else v)
                      + "\n")
    for f, b in zip(folds, result["replicate_folds"], strict=True):
        print(f"fold {f['fold']}: " + ", ".join(
            f"{m} {f[m]:.3f} ({f[m] - b[m]:+.3f})" for m in COMPARED))
    print(json.dumps(result["rule_outcome"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
