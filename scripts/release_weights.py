"""Turn a training checkpoint into the weights lumbardx ships, with thresholds and evidence.

Two ways to give the evidence:

**Cross-validation** (``--crossval DIR``, the release protocol). ``DIR`` is a finished
``lumbardx crossval`` folder of the same model and recipe (``folds.csv``,
``<model>/fold<k>/result.json`` with the weights each fold scored). ``CHECKPOINT`` is the same
recipe trained on all the data.

1. Each fold's weights predict its held-out fold: out-of-fold predictions for every image,
   each from a model that never saw that patient.
2. Per-class AP@0.5, mAP@0.5 and mAP@0.5:0.95 per fold (pycocotools, COCO 101-point), mean,
   SD and 95% t-interval over folds (:func:`lumbardx.engine.table1.fold_stat`).
3. Disc-level sensitivity / specificity (a disc is positive when it is not normal) at
   thresholds chosen without the fold that measures them: for each fold, thresholds are chosen
   on the other folds' out-of-fold discs and applied to this fold, its boxes at those
   thresholds grouped into discs as diagnosis groups them
   (:func:`lumbardx.clinical.thresholds.diagnosis_calls`); counts are pooled over folds, with a
   95% percentile interval from a patient-level bootstrap (discs of one patient are resampled
   together). The figure with every box grouped (the records of step 4) is kept as
   ``disc_level_every_box``: it understates diagnosis (``bench/disc_level.py``).
4. The shipped thresholds are chosen on all out-of-fold discs
   (:func:`lumbardx.clinical.thresholds.choose_thresholds`, Youden's J or F1).

A model trained on T1/T2 pairs (recipe ``sequence_pairs``) reads a study's co-registered T1
and T2 slices together at diagnosis, and a single slice (an image file, a study with one
sequence) alone: its folds are measured on the pairs (``lumbardx.data.pairs.SequencePairs``;
images without a partner are their own pair), which choose the thresholds, and again one slice
at a time (``single_slice`` in the evidence: AP per fold, and the disc-level operating point
at the same thresholds).

**One validation fold** (``--fold K --folds-csv CSV``): ``CHECKPOINT`` was trained on the other
folds; it predicts fold ``K``, whose discs both choose and measure the thresholds (optimistic).

Then ``OUT`` (default ``src/lumbardx/weights/default.pt``) is written atomically: float16
weights, model name, classes, recipe, thresholds with their evidence, what it was trained on,
lumbardx version and the evidence (a second stage such as the spondylolisthesis verifier of
``lumbardx verifier train`` travels with it: ``rescorer``, ``rescorer_training``, and ``+<kind>``
in the tag; with ``--crossval`` the folds must have the same second stage, and its rescoring
power is the folds'); and ``--metrics`` JSON (provenance beside the weights, read
by :func:`lumbardx.models.pretrained.model_card`); with ``--card-md`` also the validation section
of MODEL_CARD.md as Markdown, rendered from the same evidence so the card's numbers are the
JSON's.

Usage::

    python scripts/release_weights.py runs/yolov5n-all/last.pt ../shared/data/yolospine-dev \
        --crossval runs/cv-yolov5n --criterion f1 --metrics src/lumbardx/weights/default.json \
        --card-md runs/cv-yolov5n/model_card_validation.md
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch

from lumbardx import __version__
from lumbardx.clinical.stats import case_weights, percentile_ci, proportion
from lumbardx.clinical.thresholds import (
    abnormal_calls,
    abnormal_discs,
    calls_of_discs,
    choose_thresholds,
    diagnosis_calls,
    diagnosis_discs,
    disc_scores,
    finding_calls,
    thresholds_dict,
)
from lumbardx.data.boxes import Box
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.folds import read_folds_csv, split
from lumbardx.data.pairs import SequencePairs
from lumbardx.engine.checkpoint import LoadedDetector, load_checkpoint, rebuild_detector
from lumbardx.engine.evaluate import predict
from lumbardx.engine.metrics import GroundTruth, coco_evaluate
from lumbardx.engine.table1 import fold_stat
from lumbardx.io import atomic_write_bytes, atomic_write_text
from lumbardx.models.slip_verifier import RESCORER_KEY, build_rescorer

BOOTSTRAP_RESAMPLES = 2000
DISC_LEVEL_NOTE = ("a disc is positive when not normal; each fold called at thresholds chosen "
                   "on the other folds' out-of-fold discs, its boxes at those thresholds "
                   "grouped into discs as diagnosis groups them")
#: ``call_evidence.basis``, as the reports print it after "on".
CALL_BASIS_CROSSVAL = ("held-out patients of a patient-grouped cross-validation of this model's "
                       "recipe, each disc called as diagnosis calls it")
CALL_BASIS_FOLD = ("the patients of one validation fold, each disc called as diagnosis calls "
                   "it at thresholds chosen on that fold")
EVERY_BOX_NOTE = ("the same thresholds, every box down to the evaluation floor grouped into "
                  "discs (the records thresholds are chosen on): low-score boxes make discs "
                  "that take ground-truth discs' matches, so this understates diagnosis")


def _boxes(xyxy: np.ndarray, labels: np.ndarray, names: list[str],
           scores: np.ndarray | None = None) -> list[Box]:
    out = []
    for i, (b, c) in enumerate(zip(xyxy.tolist(), labels.tolist())):
        out.append(Box(names[int(c)], *b, score=None if scores is None else float(scores[i])))
    return out


def disc_operating_point(discs: list[tuple[frozenset[str], frozenset[str]]]
                         ) -> dict[str, float | int]:
    """Disc-level sensitivity / specificity of ``(true classes, called classes)`` per disc,
    called as diagnosis calls them (:func:`diagnosis_discs`): positive = not normal."""
    truth, call = abnormal_discs(discs)
    tp, fn = int((truth & call).sum()), int((truth & ~call).sum())
    tn, fp = int((~truth & ~call).sum()), int((~truth & call).sum())
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1)}


def held_out(loaded: LoadedDetector, ds: LumbarDataset, idx: list[int], pairs: bool = False
             ) -> tuple[dict, list[list]]:
    """Predict images ``idx`` of ``ds`` with the detector ``loaded``, each with its T1/T2
    partner when ``pairs`` (:class:`~lumbardx.data.pairs.SequencePairs` of those images).

    Returns the COCO metrics (:func:`coco_evaluate`) and, per image, its disc records
    (:func:`disc_scores`, every predicted box counted) with the image's ``(truth boxes,
    predicted boxes, (W, H))`` (for :func:`diagnosis_calls`).
    """
    names = loaded.class_names
    view = SequencePairs(ds.subset(idx)) if pairs else ds.subset(idx)
    samples = [view[k] for k in range(len(idx))]
    # one image at a time, as the cross-validation scored its folds (eval batch 1): batched
    # convolutions round differently, which reorders near-tied scores
    preds = predict(loaded.model, [s.image for s in samples], loaded.image_size,
                    batch_size=1, pad_value=loaded.pad_value)
    gts = [GroundTruth(s.image_id, s.image.shape[-1], s.image.shape[-2], s.boxes, s.labels)
           for s in samples]
    m = coco_evaluate(gts, preds, names)
    images = [(_boxes(s.boxes, s.labels, names), _boxes(pr.boxes, pr.labels, names, pr.scores),
               (s.image.shape[-1], s.image.shape[-2])) for s, pr in zip(samples, preds)]
    return m, [(disc_scores([image]), image) for image in images]


def _load(checkpoint: Path, ds: LumbarDataset, ckpt: dict | None = None) -> LoadedDetector:
    """The detector of ``checkpoint`` (``ckpt`` when already read); its classes must be the
    dataset's."""
    loaded = rebuild_detector(ckpt if ckpt is not None else load_checkpoint(checkpoint),
                              checkpoint)
    if ds.class_names != loaded.class_names:
        raise SystemExit(f"{checkpoint}: classes {loaded.class_names} differ from the "
                         f"dataset's {ds.class_names}")
    return loaded


def _metrics_dict(m, names: list[str]) -> dict:
    return {"ap50": {n: float(v) for n, v in zip(names, m.ap50)}, "map50": float(m.map50),
            "map50_95": float(m.map50_95)}


def matching_rescorer(own: dict | None, cv_dir: Path, model_name: str, checkpoint: Path
                      ) -> dict | None:
    """The second-stage configuration to ship: ``own`` (the checkpoint's) with the settings
    that are not trained (the verifier's rescoring ``power``) taken from the cross-validation's
    fold 0, so the shipped model scores as the evidence was scored.

    Raises:
        SystemExit: one has a second stage and the other not, or they differ in more than
            ``power``.
    """
    fold0 = load_checkpoint(cv_dir / model_name / "fold0" / "last.pt").get(RESCORER_KEY)
    if (own is None) != (fold0 is None):
        raise SystemExit(f"{checkpoint} {'has' if own else 'has no'} second stage but the "
                         f"folds of {cv_dir} {'have' if fold0 else 'have none'}: the evidence "
                         "would not be the shipped model's")
    if own is None:
        return None
    def trained(raw: dict) -> dict:  # defaults filled in, as a checkpoint is rebuilt
        try:
            return {k: v for k, v in build_rescorer(raw).config().items() if k != "power"}
        except ValueError:
            return {k: v for k, v in raw.items() if k != "power"}

    if trained(own) != trained(fold0):
        raise SystemExit(f"{checkpoint}: second stage {own} differs from the folds' {fold0}")
    return {**own, "power": fold0.get("power", 1.0)}


def crossval_evidence(ds: LumbarDataset, cv_dir: Path, model_name: str, criterion: str,
                      seed: int = 0) -> tuple[dict, dict]:
    """Evidence from a finished cross-validation (steps 1-4 of the module docstring).

    Returns ``(evidence, choices)``: the JSON-ready evidence and the shipped threshold choices.
    """
    assign = read_folds_csv(cv_dir / "folds.csv")
    names = list(ds.class_names)
    folds, fold_images = [], []
    single_folds, single_images = [], []  # pair models read one slice at a time
    pairs = False
    for k in range(assign.k):
        result_file = cv_dir / model_name / f"fold{k}" / "result.json"
        if not result_file.is_file():
            raise SystemExit(f"{result_file}: fold {k} has not finished")
        result = json.loads(result_file.read_text())
        _, val_idx = split(ds, k, assign)
        # the weights the fold scored, found next to its result (the folder may have moved)
        loaded = _load(result_file.parent / Path(result["weights"]).name, ds)
        pairs = loaded.sequence_pairs
        m, per_image = held_out(loaded, ds, val_idx, pairs)
        folds.append({"fold": k, "weights": Path(result["weights"]).name,
                      "val_images": len(val_idx),
                      "val_patients": len({ds.records[i].patient for i in val_idx}),
                      "epochs": result.get("epochs"), **_metrics_dict(m, names),
                      "selected_on_fold": result.get("selected_on_fold")})
        fold_images.append([(ds.records[i].patient, *held)
                            for i, held in zip(val_idx, per_image)])
        print(f"fold {k}: mAP@0.5 {m.map50:.3f}", flush=True)
        if pairs:
            m1, per_image1 = held_out(loaded, ds, val_idx, False)
            single_folds.append({"fold": k, **_metrics_dict(m1, names)})
            single_images.append([(ds.records[i].patient, *held)
                                  for i, held in zip(val_idx, per_image1)])
            print(f"fold {k}, one slice at a time: mAP@0.5 {m1.map50:.3f}", flush=True)

    def stat(key, rows=folds) -> dict:
        s = fold_stat([key(f) for f in rows])
        return {"mean": s.mean, "sd": s.sd, "ci95": [s.ci_low, s.ci_high], "n": s.n}

    # disc level: each fold measured at thresholds chosen on the other folds
    fold_thresholds = []
    for k in range(len(fold_images)):
        others = [r for j, imgs in enumerate(fold_images) if j != k for _, recs, _ in imgs
                  for r in recs]
        fold_thresholds.append(thresholds_dict(choose_thresholds(others, names, criterion)))
    disc_level, fold_points = disc_level_evidence(fold_images, fold_thresholds, seed)
    every_box, every_box_points = disc_level_evidence(fold_images, fold_thresholds, seed,
                                                      grouping="every_box")
    all_records = [r for imgs in fold_images for _, recs, _ in imgs for r in recs]
    choices = choose_thresholds(all_records, names, criterion)
    calls = finding_calls([image for imgs in fold_images for _, _, image in imgs],
                          thresholds_dict(choices))
    evidence = {
        "protocol": f"{assign.k}-fold patient-grouped cross-validation ({cv_dir.name}); "
                    "each fold's final weights scored on its held-out patients",
        "folds": folds,
        "ap50": {n: stat(lambda f, n=n: f["ap50"][n]) for n in names},
        "map50": stat(lambda f: f["map50"]), "map50_95": stat(lambda f: f["map50_95"]),
        "ap_interpolation": "COCO 101-point (pycocotools)",
        "images": sum(f["val_images"] for f in folds),
        "patients": sum(f["val_patients"] for f in folds),
        "discs": len(all_records), "disc_level": disc_level, "disc_level_folds": fold_points,
        "disc_level_note": DISC_LEVEL_NOTE,
        "disc_level_every_box": {**every_box, "folds": every_box_points,
                                 "note": EVERY_BOX_NOTE},
        "threshold_source": "all out-of-fold discs",
        "call_evidence": {"calls": calls, "basis": CALL_BASIS_CROSSVAL},
        "inputs": "T1+T2" if pairs else "slice",
    }
    if pairs:
        evidence["protocol"] += ("; each image read with its T1/T2 partner (an image without "
                                 "one is its own pair)")
        single_level, single_points = disc_level_evidence(single_images, fold_thresholds, seed)
        evidence["single_slice"] = {
            "note": "the same weights reading each image alone, as image files and studies "
                    "with one sequence are read, called at the thresholds of the pairs",
            "folds": single_folds,
            "ap50": {n: stat(lambda f, n=n: f["ap50"][n], single_folds) for n in names},
            "map50": stat(lambda f: f["map50"], single_folds),
            "map50_95": stat(lambda f: f["map50_95"], single_folds),
            "disc_level": single_level, "disc_level_folds": single_points}
    return evidence, choices


def disc_level_evidence(fold_images: list, fold_thresholds: list[dict[str, float]],
                        seed: int = 0, grouping: str = "diagnosis") -> tuple[dict, list[dict]]:
    """Disc-level sensitivity / specificity pooled over folds, each fold's discs called at its
    own thresholds: ``({"sensitivity": ..., "specificity": ...}, per-fold points)``; intervals
    by a patient-level bootstrap (discs of one patient resampled together) and Wilson over
    discs.

    Args:
        fold_images: per fold, ``(patient, disc records, (truth boxes, predicted boxes,
            (W, H)))`` per image (:func:`held_out`).
        fold_thresholds: per fold, class name -> threshold.
        grouping: ``"diagnosis"``: the boxes at the thresholds grouped as diagnosis groups
            them (:func:`diagnosis_calls`); ``"every_box"``: the records, every box grouped
            (:func:`abnormal_calls`).
    """
    per_patient: dict[str, np.ndarray] = {}  # patient -> [tp, positives, tn, negatives]
    fold_points = []
    for k, (images, thr) in enumerate(zip(fold_images, fold_thresholds)):
        counts = np.zeros(4, np.int64)
        for patient, recs, image in images:
            truth, call = (diagnosis_calls(*image, thr) if grouping == "diagnosis"
                           else abnormal_calls(recs, thr))
            c = np.array([(truth & call).sum(), truth.sum(), (~truth & ~call).sum(),
                          (~truth).sum()], np.int64)
            per_patient[patient] = per_patient.get(patient, np.zeros(4, np.int64)) + c
            counts += c
        fold_points.append({"fold": k, "thresholds": thr,
                            "sensitivity": float(counts[0] / max(counts[1], 1)),
                            "specificity": float(counts[2] / max(counts[3], 1))})
    table = np.stack(list(per_patient.values()))
    total = table.sum(0)
    w = case_weights(len(table), BOOTSTRAP_RESAMPLES, np.random.default_rng(seed))
    disc_level = {}
    for name, num, den in (("sensitivity", 0, 1), ("specificity", 2, 3)):
        reps = (w @ table[:, num]) / np.maximum(w @ table[:, den], 1)
        low, high, _ = percentile_ci(reps.astype(np.float64))
        wilson = proportion(int(total[num]), int(total[den]))
        disc_level[name] = {"value": float(total[num] / max(total[den], 1)),
                            "count": [int(total[num]), int(total[den])],
                            "ci95_patient_bootstrap": [low, high],
                            "ci95_wilson_discs": [wilson.ci_low, wilson.ci_high]}
    return disc_level, fold_points


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"


def evidence_markdown(evidence: dict, thresholds: dict[str, float]) -> str:
    """The validation section of MODEL_CARD.md for cross-validated ``evidence``
    (:func:`crossval_evidence`): per-class AP@0.5 per fold and over folds (mean, SD, 95%
    t-interval), disc-level sensitivity / specificity with both intervals, shipped thresholds.
    Percentages with one decimal."""
    names = list(evidence["ap50"])
    folds = evidence["folds"]
    head = "| | " + " | ".join(names) + " | mAP@0.5 | mAP@0.5:0.95 |"
    lines = [(f"Protocol: {evidence['protocol']} ({evidence['images']} images of "
              f"{evidence['patients']} patients, each scored once by a model that never saw "
              f"the patient). AP: {evidence['ap_interpolation']}."), "",
             head, "|" + "---|" * (len(names) + 3)]
    for f in folds:
        lines.append(f"| fold {f['fold']} | " + " | ".join(_pct(f["ap50"][n]) for n in names)
                     + f" | {_pct(f['map50'])} | {_pct(f['map50_95'])} |")

    def cell(stat: dict, spread: bool) -> str:
        if not spread:
            return f"{_pct(stat['mean'])} ± {_pct(stat['sd'])}"
        low, high = stat["ci95"]
        return f"{_pct(low)}-{_pct(high)}"

    stats = [evidence["ap50"][n] for n in names] + [evidence["map50"], evidence["map50_95"]]
    lines.append("| **mean ± SD** | " + " | ".join(f"**{cell(s, False)}**" for s in stats)
                 + " |")
    lines.append("| 95% CI (t, over folds) | " + " | ".join(cell(s, True) for s in stats)
                 + " |")
    sens, spec = evidence["disc_level"]["sensitivity"], evidence["disc_level"]["specificity"]

    def point(p: dict) -> str:
        b, w = p["ci95_patient_bootstrap"], p["ci95_wilson_discs"]
        return (f"{_pct(p['value'])}% ({p['count'][0]}/{p['count'][1]}; 95% CI "
                f"{_pct(b[0])}-{_pct(b[1])} by patient bootstrap, {_pct(w[0])}-{_pct(w[1])} "
                "Wilson over discs)")

    lines += ["", (f"**Disc level** ({evidence['discs']} discs; "
                   f"{evidence['disc_level_note']}): sensitivity {point(sens)}, "
                   f"specificity {point(spec)}."), "",
              "Decision thresholds shipped (chosen on all out-of-fold discs): "
              + ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items()) + "."]
    calls = evidence.get("call_evidence", {}).get("calls", {})
    abnormal = [(k, c) for k, c in calls.items() if k != "normal" and c["positives"]]
    if abnormal:
        lines += ["", ("At these thresholds, of the out-of-fold discs with each finding, "
                       "diagnosis calls (the figure the reports state): "
                       + ", ".join(f"{k} {_pct(c['called'] / c['positives'])}% "
                                   f"({c['called']}/{c['positives']}; "
                                   f"{c['false_calls']} false calls of {c['negatives']})"
                                   for k, c in abnormal) + ".")]
    single = evidence.get("single_slice")
    if single:
        s_stats = [single["ap50"][n] for n in names] + [single["map50"], single["map50_95"]]
        s_sens = single["disc_level"]["sensitivity"]
        s_spec = single["disc_level"]["specificity"]
        lines += ["", (f"**One slice at a time**: {single['note']}. AP@0.5 "
                       + ", ".join(f"{n} {cell(st, False)}" for n, st in
                                   zip([*names, "mAP@0.5", "mAP@0.5:0.95"], s_stats))
                       + f"; disc level: sensitivity {point(s_sens)}, specificity "
                       f"{point(s_spec)}.")]
    return "\n".join(lines) + "\n"


def fold_evidence(ds: LumbarDataset, loaded: LoadedDetector, fold: int, folds_csv: Path,
                  criterion: str) -> tuple[dict, dict]:
    """Evidence from one validation fold (thresholds chosen and measured on it)."""
    train_idx, val_idx = split(ds, fold, folds_csv)
    m, per_image = held_out(loaded, ds, val_idx, loaded.sequence_pairs)
    records = [r for recs, _ in per_image for r in recs]
    choices = choose_thresholds(records, ds.class_names, criterion)
    thresholds = thresholds_dict(choices)
    discs = [d for _, image in per_image for d in diagnosis_discs(*image, thresholds)]
    point, calls = disc_operating_point(discs), calls_of_discs(discs, thresholds)
    evidence = {
        "fold": fold, "train_images": len(train_idx), "val_images": len(val_idx),
        "val_patients": len({ds.records[i].patient for i in val_idx}),
        **_metrics_dict(m, list(ds.class_names)),
        "ap_interpolation": "COCO 101-point (pycocotools)",
        "discs": len(records), "disc_level": point,
        "disc_level_note": "thresholds chosen and measured on the same validation fold, "
                           "boxes at the thresholds grouped into discs as diagnosis groups "
                           "them",
        "call_evidence": {"calls": calls, "basis": CALL_BASIS_FOLD},
    }
    return evidence, choices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--crossval", type=Path, default=None,
                   help="finished `lumbardx crossval` folder of this model and recipe")
    p.add_argument("--fold", type=int, default=None)
    p.add_argument("--folds-csv", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("src/lumbardx/weights/default.pt"))
    p.add_argument("--metrics", type=Path, default=None)
    p.add_argument("--card-md", type=Path, default=None,
                   help="write MODEL_CARD.md's validation section (with --crossval)")
    p.add_argument("--criterion", choices=("youden", "f1"), default="youden",
                   help="threshold criterion per class (lumbardx.clinical.thresholds)")
    p.add_argument("--training-data", default=None,
                   help="what the checkpoint was trained on (default: said from the mode)")
    args = p.parse_args()
    if (args.crossval is None) == (args.fold is None):
        p.error("give --crossval DIR or --fold K (with --folds-csv)")
    if args.fold is not None and args.folds_csv is None:
        p.error("--fold needs --folds-csv")
    if args.card_md is not None and args.crossval is None:
        p.error("--card-md needs --crossval")

    ckpt = load_checkpoint(args.checkpoint)
    ds = LumbarDataset(args.data, classes="study")
    loaded = _load(args.checkpoint, ds, ckpt)
    names = loaded.class_names
    source = ("yolospine-dev (Lumbar Spine MRI Dataset, Sudirman et al., CC BY 4.0; YOLOspine "
              "boxes, MIT): ")
    stem = loaded.model_name + ("-t1t2" if loaded.sequence_pairs else "")
    if args.crossval is not None:
        validation, choices = crossval_evidence(ds, args.crossval, loaded.model_name,
                                                args.criterion)
        training = args.training_data or source + "all images"
        tag = f"{stem}-all-epoch{int(ckpt.get('epoch', -1)) + 1}"
    else:
        validation, choices = fold_evidence(ds, loaded, args.fold, args.folds_csv,
                                            args.criterion)
        training = args.training_data or source + ("folds other than the validation fold, "
                                                   "patient-grouped")
        tag = f"{stem}-fold{args.fold}-epoch{int(ckpt.get('epoch', -1)) + 1}"
    thresholds = thresholds_dict(choices)
    sd = {k: (v.half() if v.is_floating_point() else v)
          for k, v in loaded.model.state_dict().items()}
    shipped = {
        "model": sd, "weights_dtype": "float16", "model_name": loaded.model_name,
        "class_names": names, "num_classes": len(names), "recipe": ckpt.get("recipe"),
        "epoch": ckpt.get("epoch"), "thresholds": thresholds,
        "threshold_evidence": {k: vars(v) for k, v in choices.items()},
        "call_evidence": validation["call_evidence"],
        "training_data": training, "lumbardx_version": __version__, "tag": tag,
        "validation": validation,
    }
    if args.crossval is not None:  # the shipped second stage is the one the folds scored
        shipped_rescorer = matching_rescorer(ckpt.get(RESCORER_KEY), args.crossval,
                                             loaded.model_name, args.checkpoint)
        if shipped_rescorer is not None:
            ckpt[RESCORER_KEY] = shipped_rescorer
    if ckpt.get(RESCORER_KEY) is not None:  # a second stage travels with the detector
        shipped[RESCORER_KEY] = ckpt[RESCORER_KEY]
        shipped["rescorer_training"] = ckpt.get("rescorer_training")
        shipped["tag"] = tag = f"{tag}+{ckpt[RESCORER_KEY].get('kind', 'rescorer')}"
    buf = io.BytesIO()
    torch.save(shipped, buf)
    atomic_write_bytes(args.out, buf.getvalue(), mode=0o644)
    print(json.dumps({"out": str(args.out), "bytes": len(buf.getvalue()),
                      "thresholds": thresholds, **validation}, indent=1))
    if args.metrics:
        atomic_write_text(args.metrics, json.dumps(
            {"weights": args.out.name, "tag": tag, "epoch": shipped["epoch"],
             "model_name": loaded.model_name, "training_data": training,
             "lumbardx_version": __version__,
             "thresholds": thresholds, "threshold_evidence": shipped["threshold_evidence"],
             **validation}, indent=1) + "\n")
    if args.card_md:
        atomic_write_text(args.card_md, evidence_markdown(validation, thresholds))


if __name__ == "__main__":
    main()
