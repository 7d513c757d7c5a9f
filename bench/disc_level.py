"""The disc-level operating point of a detector's folds, as the release measures it and as
diagnosis calls it.

Two ways of turning a slice's boxes into per-disc calls are in use, and they gave two disc-level
figures for the same recipe:

* **every box** (``scripts/release_weights.py``, the figure of ``MODEL_CARD.md``): all boxes
  the detector keeps in evaluation (down to :data:`~lumbardx.models.pretrained.EVAL_CONF`) are
  grouped into discs (:func:`lumbardx.clinical.thresholds.disc_scores`); a disc's score per
  class is its best box's, and it is called abnormal when a non-normal score reaches its
  threshold (:func:`~lumbardx.clinical.thresholds.abnormal_calls`);
* **as diagnosis** (:func:`lumbardx.stages.findings.find`): only the boxes at or above their
  class's decision threshold are grouped (:func:`~lumbardx.clinical.findings.build_findings`
  with the thresholds), and a disc is abnormal when it holds a herniation or a
  spondylolisthesis.

Both are scored on the same held-out boxes of each fold's detector (T1 and T2 together where
the image has a partner), a ground-truth disc (study classes grouped, as the release groups
them) counting as positive when it is not normal and as not called when no predicted disc
matches it (:func:`~lumbardx.clinical.findings.match_discs`). Each grouping is scored at two
sets of thresholds: those chosen by F1 on the other folds' every-box discs (nested, as the
release's disc-level figure) and the shipped default model's; at the shipped thresholds also
each finding's calls (:func:`~lumbardx.clinical.thresholds.finding_calls`, the shipped
default's ``call_evidence``). Pooled sensitivity /
specificity with Wilson 95% intervals and per fold, and the paired per-fold differences of the
diagnosis grouping against every box.

Usage::

    python bench/disc_level.py ../shared/data/yolospine-dev \
        --detectors runs/cv-yolov5n-pairs-verifier/yolov5n --out bench/results/disc_level.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name
from segment_end_to_end import FOLDS, dataset_with_folds, fold_thresholds

from lumbardx.clinical.findings import SLIP, study_class
from lumbardx.clinical.stats import proportion
from lumbardx.clinical.thresholds import (
    DiscScore,
    abnormal_calls,
    choose_thresholds,
    disc_scores,
    finding_calls,
    pooled_diagnosis_calls,
    thresholds_dict,
)
from lumbardx.data.boxes import Box
from lumbardx.engine.table1 import fold_differences
from lumbardx.io import atomic_write_text
from lumbardx.models.pretrained import EVAL_CONF, load_detector, set_candidate_floor
from lumbardx.stages import detect as detect_stage

ABNORMAL = ("herniation", SLIP)
GROUPINGS = ("every_box", "diagnosis")


def read_fold(k: int, ds: Any, pairs: Any, fold_of: dict[str, int], detectors: Path
              ) -> list[tuple[list[Box], list[Box], tuple[int, int]]]:
    """Fold ``k``'s held-out images as ``(truth boxes, predicted boxes, (W, H))``: study-class
    names, the predictions down to :data:`EVAL_CONF`, T1 and T2 read together."""
    m = load_detector(detectors / f"fold{k}" / "last.pt", "cpu", backend="torch")
    set_candidate_floor(m.model, EVAL_CONF, m.backend)
    out = []
    for i, rec in enumerate(ds.records):
        if fold_of.get(rec.image_id) != k:
            continue
        planes = pairs[i].image  # uint8 [2, H, W]: T1, T2 (the slice twice without partner)
        sample = ds[i]
        with torch.inference_mode():
            x, geo = detect_stage.preprocess(m, sample.image, (planes[0], planes[1]))
            boxes = detect_stage.detect(m, x, geo)
        h, w = sample.image.shape
        out.append((study_boxes(ds, sample), [b for b in boxes if study_class(b.label)],
                    (w, h)))
    return out


def study_boxes(ds: Any, sample: Any) -> list[Box]:
    """The study-class ground-truth boxes of one ``ds[i]`` sample (other classes left out)."""
    return [Box(study_class(ds.class_names[int(c)]), *map(float, b))
            for b, c in zip(sample.boxes, sample.labels, strict=True)
            if study_class(ds.class_names[int(c)])]


def counts(truth: np.ndarray, call: np.ndarray) -> np.ndarray:
    """``[true positives, positives, true negatives, negatives]``."""
    return np.array([(truth & call).sum(), truth.sum(), (~truth & ~call).sum(), (~truth).sum()],
                    np.int64)


def point_of(c: np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity with Wilson 95% intervals of counts ``[tp, positives, tn,
    negatives]`` (:func:`counts`)."""
    sens, spec = proportion(int(c[0]), int(c[1])), proportion(int(c[2]), int(c[3]))
    return {"sensitivity": sens.estimate, "sensitivity_ci95": [sens.ci_low, sens.ci_high],
            "specificity": spec.estimate, "specificity_ci95": [spec.ci_low, spec.ci_high],
            "counts": [int(v) for v in c]}


def score(images: dict[int, list], records: dict[int, list[DiscScore]],
          thresholds: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Both groupings with fold ``k`` called at ``thresholds[k]``: pooled and per fold."""
    out: dict[str, Any] = {}
    for grouping in GROUPINGS:
        per_fold = []
        for k in images:
            if grouping == "every_box":
                per_fold.append(counts(*abnormal_calls(records[k], thresholds[k])))
            else:
                per_fold.append(counts(*pooled_diagnosis_calls(images[k], thresholds[k])))
        out[grouping] = {**point_of(np.sum(per_fold, axis=0)),
                         "per_fold": [[float(c[0] / max(c[1], 1)), float(c[2] / max(c[3], 1))]
                                      for c in per_fold]}
    diff = np.array(out["diagnosis"]["per_fold"]) - np.array(out["every_box"]["per_fold"])
    out["diagnosis_minus_every_box"] = {
        name: fold_differences(list(diff[:, i]))
        for i, name in enumerate(("sensitivity", "specificity"))}
    return out


def add_detector_arguments(ap: argparse.ArgumentParser) -> None:
    """``DATA --detectors DIR [--folds-csv CSV] --out JSON``, as :func:`read_detector_folds`
    reads them."""
    ap.add_argument("data", type=Path)
    ap.add_argument("--detectors", type=Path, required=True,
                    help="a crossval's model folder: fold<k>/last.pt per fold")
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--out", type=Path, required=True)


def detector_folds(args: argparse.Namespace) -> tuple[Any, Any, dict[str, int], list[int]]:
    """The dataset, its T1/T2 pairs, each image's fold and the folds that have a detector
    (``fold<k>/last.pt``), with one thread for PyTorch; exits with status 2 when fewer than two
    folds have one (nothing to compare by fold)."""
    torch.set_num_threads(1)
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    folds = [k for k in sorted(set(fold_of.values()))
             if (args.detectors / f"fold{k}" / "last.pt").is_file()]
    if len(folds) < 2:
        print("needs the detectors of two or more folds", file=sys.stderr)
        raise SystemExit(2)
    return ds, pairs, fold_of, folds


def read_detector_folds(args: argparse.Namespace
                        ) -> dict[int, list[tuple[list[Box], list[Box], tuple[int, int]]]]:
    """Every fold that has a detector (:func:`detector_folds`), read (:func:`read_fold`)."""
    ds, pairs, fold_of, folds = detector_folds(args)
    return {k: read_fold(k, ds, pairs, fold_of, args.detectors) for k in folds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_arguments(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    images = read_detector_folds(args)
    folds = list(images)
    print(f"read {len(folds)} folds ({time.perf_counter() - t0:.0f} s)", flush=True)
    records = {k: disc_scores(imgs) for k, imgs in images.items()}
    names = ["normal", *ABNORMAL]
    nested = {k: thresholds_dict(choose_thresholds(
        [r for j in folds if j != k for r in records[j]], names, "f1")) for k in folds}
    shipped = fold_thresholds("shipped")
    assert shipped is not None
    result = {
        "detectors": str(args.detectors), "folds": folds,
        "discs": int(sum(len(r) for r in records.values())),
        "candidates": f"every box down to {EVAL_CONF}",
        "nested_f1": {"thresholds": {str(k): v for k, v in nested.items()},
                      **score(images, records, nested)},
        "shipped": {"thresholds": shipped, **score(images, records, {k: shipped for k in folds}),
                    "finding_calls": finding_calls(
                        [im for k in folds for im in images[k]], shipped)},
        "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for key in ("nested_f1", "shipped"):
        for g in GROUPINGS:
            r = result[key][g]
            print(f"{key:9s} {g:9s} sensitivity {100 * r['sensitivity']:.1f}% "
                  f"specificity {100 * r['specificity']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
