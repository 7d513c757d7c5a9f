"""The segment reader's spondylolisthesis calls on the discs a detector finds, fold by fold.

``bench/segment_crossval.py`` scores each fold's reader on the ground-truth discs of its
held-out patients. Here each held-out image is read as diagnosis reads it: the shipped detector
finds the discs (T1 and T2 together where the image has a partner, else the shipped
single-slice model), :func:`lumbardx.stages.findings.find` groups them, and the fold's reader
(trained without these patients) reads every disc found; one slip box per disc (the fold's
slip-box template) is scored by the reader's probability. Reported per fold: AP@0.5 of those
boxes against the ground-truth slip boxes (COCO 101-point, pycocotools) and the image-level AUC
(an image's score is its highest disc probability, 0 without a disc), paired with the
cross-validated detector + verifier's spondylolisthesis AP on the same folds
(``bench/results/crossval_yolov5n_pairs_verifier_cpu.json``).

Caveat, stated with the results: the shipped detector was trained on all 832 images, so the
discs are found here more reliably than on unseen patients (its slip boxes are not used). The
reader's part is out of fold.

Usage::

    python bench/segment_end_to_end.py ../shared/data/yolospine-dev --cv runs/segcv-v2a \
        --out bench/results/segment_end_to_end_v2a.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name

from lumbardx.clinical.findings import SLIP, study_class
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.images import MedicalImage
from lumbardx.data.pairs import SequencePairs
from lumbardx.diagnosis import Diagnoser
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.segment_crossval import auc
from lumbardx.engine.segment_training import SegmentItem, predict_items
from lumbardx.engine.segments import frame_tensor, segment_frames, template_boxes
from lumbardx.engine.table1 import fold_differences, fold_stat
from lumbardx.io import atomic_write_text
from lumbardx.models.segment_reader import LABELS, load_segment_reader
from lumbardx.stages import detect as detect_stage
from lumbardx.stages.findings import find

FOLDS = Path(__file__).resolve().parent / "folds" / "yolospine-dev-k5-seed0.csv"
DETECTOR_CV = Path(__file__).resolve().parent / "results" / \
    "crossval_yolov5n_pairs_verifier_cpu.json"


def dataset_with_folds(data: Path, folds_csv: Path
                       ) -> tuple[LumbarDataset, SequencePairs, dict[str, int]]:
    """The dataset (all classes, cached), its T1/T2 pairs and ``{image id: fold}`` of
    ``folds_csv``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(data, classes="all", cache=True)
    with folds_csv.open(newline="") as fh:
        fold_of = {r["image"]: int(r["fold"]) for r in csv.DictReader(fh)}
    return ds, SequencePairs(ds), fold_of


def add_fold_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments of a bench reading each fold's detector and segment reader: ``data``,
    ``--detectors``, ``--readers``, ``--folds-csv``."""
    ap.add_argument("data", type=Path)
    ap.add_argument("--detectors", type=Path, required=True,
                    help="<verifier crossval>/<model>: fold<k>/last.pt")
    ap.add_argument("--readers", type=Path, required=True,
                    help="segment-reader cross-validation: fold<k>/segment_reader.pt")
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--detector-thresholds", choices=("shipped", "default"), default="shipped",
                    help="the fold detectors' decision thresholds: the shipped default model's "
                         "(chosen on a cross-validation's out-of-fold discs of the same recipe; "
                         "diagnosis calls at these) or YOLOv5's 0.25 for every class (the fold "
                         "checkpoints hold none)")


def fold_thresholds(choice: str) -> dict[str, float] | None:
    """``--detector-thresholds``: the shipped default model's decision thresholds, or ``None``
    (the fold checkpoints' own: 0.25 for every class)."""
    if choice == "default":
        return None
    from lumbardx.models.pretrained import load_detector, shipped_weights

    return dict(load_detector(shipped_weights("default"), "cpu", backend="torch").thresholds)


def folds_with_models(fold_of: dict[str, int], detectors: Path, readers: Path) -> list[int]:
    """The folds that have both a detector (``detectors/fold<k>/last.pt``) and a segment
    reader (``readers/fold<k>/segment_reader.pt``), in order."""
    return [k for k in sorted(set(fold_of.values()))
            if (detectors / f"fold{k}" / "last.pt").is_file()
            and (readers / f"fold{k}" / "segment_reader.pt").is_file()]


def load_fold_models(k: int, detectors: Path, readers: Path,
                     thresholds: dict[str, float] | None = None) -> tuple[Any, Any]:
    """Fold ``k``'s detector (PyTorch, CPU; called at ``thresholds`` when given, which also
    sets its candidate floor as diagnosis does) and segment reader
    (:func:`folds_with_models`)."""
    from lumbardx.models.pretrained import load_detector

    m = load_detector(detectors / f"fold{k}" / "last.pt", "cpu", backend="torch")
    if thresholds is not None:
        m.set_thresholds(thresholds)
    reader = load_segment_reader(torch.load(readers / f"fold{k}" / "segment_reader.pt",
                                            weights_only=True))
    return m, reader


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--cv", type=Path, required=True, help="bench/segment_crossval.py --out")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds, pairs, fold_of = dataset_with_folds(args.data, args.folds_csv)
    readers, templates = {}, {}
    for k in sorted(set(fold_of.values())):
        readers[k] = load_segment_reader(torch.load(args.cv / f"fold{k}" / "segment_reader.pt",
                                                    weights_only=True))
        templates[k] = json.loads((args.cv / f"fold{k}" / "predictions.json").read_text()
                                  )["template"]
    dx = Diagnoser(backend="torch", segments=False)
    k_slip = LABELS.index("spondylolisthesis")
    per_fold: dict[int, dict[str, list]] = {k: {"gts": [], "dts": [], "score": [], "pos": []}
                                            for k in readers}
    t0 = time.perf_counter()
    for i, rec in enumerate(ds.records):
        k = fold_of.get(rec.image_id)
        if k is None:
            continue
        sample = pairs[i]
        planes = sample.image  # uint8 [2, H, W]: T1, T2 (an image without partner twice)
        paired = pairs.partners[i] is not None
        m = dx.loaded if paired or dx.single_slice is None else dx.single_slice
        own = ds[i].image
        with torch.inference_mode():
            x, geo = detect_stage.preprocess(m, own, (planes[0], planes[1]) if paired else None)
            boxes = detect_stage.detect(m, x, geo)
        h, w = own.shape
        image = MedicalImage(own.astype(np.float32), own, None, rec.image_path, "png")
        spine, _ = find(boxes, image, m)
        frames = frame_tensor(segment_frames(spine, True))
        slips = np.asarray([b for b, lab in zip(sample.boxes, sample.labels, strict=True)
                            if study_class(ds.class_names[int(lab)]) == SLIP],
                           np.float32).reshape(-1, 4)
        boxes_out, scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        if frames.shape[0]:
            item = SegmentItem(rec.image_id, rec.patient, planes, spine, frames,
                               torch.zeros(frames.shape[0], len(LABELS)),
                               np.zeros((0, 4), np.float32))
            logits, _ = predict_items(readers[k], [item])[0]
            scores = torch.sigmoid(logits[:, k_slip]).numpy().astype(np.float32)
            boxes_out = template_boxes(frames, templates[k], (w, h)).astype(np.float32)
        d = per_fold[k]
        d["gts"].append(GroundTruth(rec.image_id, w, h, slips, np.zeros(len(slips), np.int64)))
        d["dts"].append(Prediction(boxes_out, scores, np.zeros(len(scores), np.int64)))
        d["score"].append(float(scores.max()) if len(scores) else 0.0)
        d["pos"].append(len(slips) > 0)
    det = json.loads(DETECTOR_CV.read_text())["models"][0]["folds"]
    det_ap = {int(f["fold"]): float(f["ap50"]["spondylolisthesis"]) for f in det}
    folds = []
    for k, d in sorted(per_fold.items()):
        ap50 = float(coco_evaluate(d["gts"], d["dts"], ["spondylolisthesis"]).ap50[0])
        folds.append({"fold": k, "images": len(d["gts"]), "images_with_slip": int(sum(d["pos"])),
                      "ap50_spondylolisthesis": ap50,
                      "image_auc_spondylolisthesis": auc(np.array(d["score"]),
                                                         np.array(d["pos"])),
                      "detector_verifier_ap50": det_ap.get(k, math.nan)})
    diffs = [f["ap50_spondylolisthesis"] - f["detector_verifier_ap50"] for f in folds]
    result: dict[str, Any] = {
        "cv": str(args.cv), "detector": dx.info.version,
        "single_slice": None if dx.single_slice is None else dx.single_slice.info.version,
        "caveat": "the shipped detector was trained on these images: discs are found more "
                  "reliably than on unseen patients; the reader is out of fold",
        "folds": folds,
        "mean": {key: fold_stat([f[key] for f in folds]).__dict__
                 for key in ("ap50_spondylolisthesis", "image_auc_spondylolisthesis",
                             "detector_verifier_ap50")},
        "paired_reader_minus_detector_verifier_ap50": fold_differences(diffs),
        "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    for f in folds:
        print(f"fold {f['fold']}: reader AP {100 * f['ap50_spondylolisthesis']:.1f} (detector + "
              f"verifier {100 * f['detector_verifier_ap50']:.1f}), image AUC "
              f"{f['image_auc_spondylolisthesis']:.3f}")
    p = result["paired_reader_minus_detector_verifier_ap50"]
    print(f"paired AP difference {100 * p['mean']:+.1f} ({100 * p['ci_low']:+.1f} to "
          f"{100 * p['ci_high']:+.1f}) [{p['wins']}:{p['losses']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
