"""At which input size should a detector trained at 384 px run? Leave-one-fold-out choice.

A detector trained with mosaic and scale jitter at 384 px need not score best at 384 px. This
benchmark runs the final weights of every finished fold (``lumbardx crossval`` folders:
``fold<k>/last.pt`` beside ``fold<k>/result.json``, held-out images named by
``fold<k>/eval/predictions.json``; the Ultralytics peer:
``fold<k>/train/weights/last.pt`` of ``bench/ultralytics_peer.py``, held-out images from the
same folds CSV) on its held-out fold at each input size of a grid (multiples of 32), scored
with lumbardx's evaluator (pycocotools, COCO 101-point AP).

The size is a model choice, so the held-out fold must not make it: for each fold ``k`` the
size with the highest mean mAP@0.5 over the *other* folds is applied to fold ``k`` (the
nested estimate); the size with the best mean over all folds is what a release ships
(optimistic). Every model, the peer included, is offered the same grid and the same rule,
and the nested rows are paired by fold (95% paired t-interval, folds won). With several
lumbardx models (e.g. a detector alone and with a second stage), the same rule also chooses
among every (model, size) cell at once: the row ``every lumbardx model and size`` is the
estimate that counts every choice that was tried. A pair model read one slice at a time
(``--single-slices``) is a measurement of a degraded input, not a choice: it stays out of that
row.

Scores are cached in ``--out`` (model -> size -> fold), so a repeated call adds sizes or
models without re-running the others.

Usage::

    python bench/inference_size.py ../shared/data/yolospine-dev \
        --lumbardx runs/cv-yolov5n-v2/yolov5n --peer runs/peer_yolo11n \
        --folds-csv bench/folds/yolospine-dev-k5-seed0.csv \
        --sizes 320,352,384,416,448,480,512 --out bench/results/inference_size_yolov5n.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_fusion import load_predictions

from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.folds import read_folds_csv, split
from lumbardx.engine.crossval import input_view, load_detector
from lumbardx.engine.evaluate import evaluate
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate
from lumbardx.engine.table1 import ModelFolds, paired_comparison
from lumbardx.io import atomic_write_text

Scores = dict[str, dict]  # fold name -> {"ap50": {class: AP}, "map50", "map50_95", "ms_per_image"}

#: Suffix of the rows of pair models read one slice at a time (``--single-slices``).
SINGLE_SLICES = " (single slices)"


def score_lumbardx(fold_dir: Path, ds: LumbarDataset, size: int,
                   single_slices: bool = False) -> dict:
    """Scores of ``fold_dir/last.pt`` on the images of ``fold_dir/eval/predictions.json`` (the
    fold's held-out images) at input ``size``, read as the model was trained (single slices,
    or T1/T2 pairs for a ``sequence_pairs`` recipe); ``single_slices`` reads a pair model one
    slice at a time, as diagnosis does for an image file when no single-slice model comes
    with the pair model."""
    names = list(ds.class_names)
    held = load_predictions([fold_dir / "eval" / "predictions.json"], names)
    idx = [i for i, r in enumerate(ds.records) if r.image_id in held]
    if len(idx) != len(held):
        raise SystemExit(f"{fold_dir}: {len(held) - len(idx)} held-out images not in the data")
    det = load_detector(fold_dir / "last.pt", "cpu")
    pairs = det.sequence_pairs and not single_slices
    subset = input_view(ds.subset(idx), pairs)
    res = evaluate(det.model, subset, image_size=size, class_names=names,
                   pad_value=det.pad_value)
    return {"ap50": res.ap50, "map50": res.map50, "map50_95": res.map50_95,
            "ms_per_image": res.ms_per_image, "images": res.num_images}


def score_peer(weights: Path, ds: LumbarDataset, val_idx: Sequence[int], size: int) -> dict:
    """Scores of Ultralytics ``weights`` on the images ``val_idx`` at input ``size`` (its own
    letterbox and NMS settings as in ``bench/ultralytics_peer.py``)."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    gts, preds, times = [], [], []
    for i in val_idx:
        rec = ds.records[i]
        t = time.perf_counter()
        r = model.predict(str(rec.image_path), imgsz=size, conf=0.001, iou=0.6, max_det=100,
                          device="cpu", verbose=False)[0]
        times.append(time.perf_counter() - t)
        b = r.boxes
        preds.append(Prediction(b.xyxy.cpu().numpy().astype(np.float32),
                                b.conf.cpu().numpy().astype(np.float32),
                                b.cls.cpu().numpy().astype(np.int64)))
        gts.append(GroundTruth(rec.image_id, rec.width, rec.height, rec.boxes, rec.labels))
    m = coco_evaluate(gts, preds, ds.class_names)
    return {"ap50": dict(zip(ds.class_names, map(float, m.ap50))), "map50": float(m.map50),
            "map50_95": float(m.map50_95), "ms_per_image": 1000 * float(np.median(times)),
            "images": len(gts)}


def nested_choice(by_size: dict[str, Scores]) -> tuple[Scores, dict[str, str], str]:
    """Leave-one-fold-out choice among candidates (sizes, or ``"<model> @ <size>"`` cells):
    ``(nested scores per fold, fold -> candidate chosen without it, candidate chosen on all
    folds)``. Ties go to the first candidate in :func:`_order` (the smaller size)."""
    folds = sorted(set.intersection(*(set(v) for v in by_size.values())))
    candidates = sorted(by_size, key=_order)

    def mean_without(c: str, skip: str | None) -> float:
        return statistics.mean(by_size[c][f]["map50"] for f in folds if f != skip)

    nested, chosen = {}, {}
    for f in folds:
        best = max(candidates, key=lambda c: mean_without(c, f))  # max keeps the first
        nested[f], chosen[f] = by_size[best][f], best
    overall = max(candidates, key=lambda c: mean_without(c, None))
    return nested, chosen, overall


def _order(candidate: str) -> tuple[int, str]:
    """Candidates by size, then name: ``"384"`` or ``"<model> @ 384"``."""
    size = candidate.rsplit("@", 1)[-1].strip()
    return int(size), candidate


def _row(name: str, per_fold: Scores) -> ModelFolds:
    return ModelFolds(name, [{"fold": int(f.removeprefix("fold")), **v}
                             for f, v in sorted(per_fold.items())])


def _fmt(per_fold: Scores, names: Sequence[str]) -> str:
    vals = list(per_fold.values())
    cls = " ".join(f"{n[:5]} {100 * statistics.mean(v['ap50'][n] for v in vals):5.1f}"
                   for n in names)
    return (f"mAP@0.5 {100 * statistics.mean(v['map50'] for v in vals):5.2f} ({cls}) "
            f"mAP@0.5:0.95 {100 * statistics.mean(v['map50_95'] for v in vals):5.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--lumbardx", type=Path, nargs="*", default=[],
                    help="crossval folders of one model (fold*/last.pt, fold*/eval)")
    ap.add_argument("--peer", type=Path, default=None,
                    help="bench/ultralytics_peer.py --out folder (fold*/train/weights/last.pt)")
    ap.add_argument("--single-slices", action="store_true",
                    help="read models trained on T1/T2 pairs one slice at a time (their rows "
                         "are named '<folder> (single slices)')")
    ap.add_argument("--folds-csv", type=Path, required=True)
    ap.add_argument("--sizes", default="320,352,384,416,448,480,512")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s < 32 or s % 32 for s in sizes):
        raise SystemExit(f"--sizes must be multiples of 32, got {args.sizes}")
    ds = LumbarDataset(args.data, classes="study")
    names = list(ds.class_names)
    cache: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    scores: dict[str, dict[str, Scores]] = cache.get("scores", {})
    jobs: list[tuple[str, str, Callable[[int], dict]]] = []
    for d in args.lumbardx:
        for fd in sorted(d.glob("fold*/result.json")):  # finished folds only
            name = f"{d}{SINGLE_SLICES}" if args.single_slices else str(d)
            jobs.append((name, fd.parent.name, lambda s, fd=fd.parent: score_lumbardx(
                fd, ds, s, args.single_slices)))
    if args.peer is not None:
        assign = read_folds_csv(args.folds_csv)
        for w in sorted(args.peer.glob("fold*/train/weights/last.pt")):
            fold = w.parents[2].name
            _, val_idx = split(ds, int(fold.removeprefix("fold")), assign)
            jobs.append(("peer", fold, lambda s, w=w, v=val_idx: score_peer(w, ds, v, s)))
    for model, fold, run in jobs:
        for s in sizes:
            slot = scores.setdefault(model, {}).setdefault(str(s), {})
            if fold in slot:
                continue
            slot[fold] = run(s)
            print(f"{model} {fold} {s}: mAP@0.5 {100 * slot[fold]['map50']:.1f}", flush=True)
            atomic_write_text(args.out, json.dumps({**cache, "scores": scores}, indent=2))

    result: dict = {"data": args.data.name, "folds_csv": str(args.folds_csv),
                    "sizes": sizes, "scores": scores, "models": {}}
    every: dict[str, Scores] = {}  # every lumbardx model at every size, one candidate each
    for model, by_size in scores.items():
        by_size = {s: v for s, v in by_size.items() if int(s) in sizes}
        nested, chosen, overall = nested_choice(by_size)
        result["models"][model] = {"nested": nested, "chosen_without_fold": chosen,
                                   "chosen_on_all_folds": int(overall)}
        if model != "peer" and not model.endswith(SINGLE_SLICES):  # readings, not choices
            for s, per_fold in by_size.items():
                every[f"{model} @ {s}"] = per_fold
        for s in sorted(by_size, key=int):
            print(f"{model:40s} {s:>4s}  {_fmt(by_size[s], names)}")
        print(f"{model:40s} nested ({', '.join(f'{f} {s}' for f, s in chosen.items())})  "
              f"{_fmt(nested, names)}; chosen on all folds: {overall}")
    if len(every) > len(sizes):  # several lumbardx models: the choice among all of them
        nested, chosen, overall = nested_choice(every)
        result["models"]["every lumbardx model and size"] = {
            "nested": nested, "chosen_without_fold": chosen, "chosen_on_all_folds": overall}
        print(f"every lumbardx model and size: nested {_fmt(nested, names)}; chosen on all "
              f"folds: {overall}")
    if "peer" in result["models"]:
        peer = result["models"]["peer"]
        peer_train = scores["peer"].get("384")
        result["paired"] = {}
        for model, m in result["models"].items():
            if model == "peer":
                continue
            pairs = {"nested - peer nested": (m["nested"], peer["nested"])}
            if peer_train is not None:
                pairs["nested - peer at 384"] = (m["nested"], peer_train)
            for label, (a, b) in pairs.items():
                stats = paired_comparison(_row(model, a), _row("peer", b), names)
                result["paired"].setdefault(model, {})[label] = {
                    k: v.to_dict() for k, v in stats.items()}
                d = stats["map50"]
                print(f"{model} {label}: mAP@0.5 {100 * d.diff.mean:+.2f} (95% t "
                      f"{100 * d.diff.ci_low:+.2f} to {100 * d.diff.ci_high:+.2f}), folds won "
                      f"{d.wins_a}:{d.wins_b}")
    atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
