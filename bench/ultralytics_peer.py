"""Peer baseline: Ultralytics YOLO11n trained from scratch on lumbardx's folds.

The peer sees exactly what lumbardx's detectors see: the same dataset and class mapping
(``study`` by default), the same patient-grouped folds (``lumbardx.data.folds``), the same image
size and training budget (epochs, or wall-clock time on the same machine with ``--time-hours``,
which is the fair budget on a CPU where the two frameworks run at different speeds), no
pretrained weights (``yolo11n.yaml``, ``pretrained=False``). Its
predictions on each validation fold are scored with lumbardx's own evaluator
(``lumbardx.engine.metrics.coco_evaluate``: pycocotools, 101-point AP), so the two are compared
like for like.

Ultralytics is an optional benchmark dependency (``pip install -e ".[bench]"``), never needed by
the package. Plots are switched off (they would fetch a font) and AMP's self-check is off (it
would fetch weights), so the run works offline.

Usage::

    python bench/ultralytics_peer.py DATA --folds 0,1,2,3,4 --epochs 30 --imgsz 384 \
        --out bench/results/peer_yolo11n
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.folds import make_folds, read_folds_csv, split
from lumbardx.data.pairs import SequencePairs
from lumbardx.engine.metrics import GroundTruth, Prediction, coco_evaluate


def write_fold_view(ds: LumbarDataset, train_idx: list[int], val_idx: list[int], root: Path,
                    pairs: SequencePairs | None = None) -> Path:
    """Ultralytics layout for one fold: symlinked images, labels in the mapped classes; with
    ``pairs``, each image is written as an RGB PNG of its T1/T2 pair (T1, T2, mean: the input
    lumbardx's ``sequence_pairs`` recipe gives its detectors).

    Returns the path of the ``data.yaml`` that names the train/val image lists.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for split_name, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            rec = ds.records[i]
            stem = f"{i:05d}"
            link = view_image(ds, i, root, pairs is not None)
            if pairs is not None:
                if not link.exists():
                    pair = pairs[i].image.astype(np.float32)
                    rgb = np.stack([pair[0], pair[1], pair.mean(0)], -1)
                    Image.fromarray(np.rint(rgb).astype(np.uint8)).save(link)
            elif not link.exists():
                os.symlink(rec.image_path.resolve(), link)
            lines = []
            for (x1, y1, x2, y2), c in zip(rec.boxes.tolist(), rec.labels.tolist()):
                cx, cy = (x1 + x2) / 2 / rec.width, (y1 + y2) / 2 / rec.height
                w, h = (x2 - x1) / rec.width, (y2 - y1) / rec.height
                lines.append(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            lists[split_name].append(str(link))
    for split_name, paths in lists.items():
        (root / f"{split_name}.txt").write_text("\n".join(paths) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(ds.class_names))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: train.txt\nval: val.txt\nnames:\n{names}\n")
    return yaml_path


def view_image(ds: LumbarDataset, i: int, root: Path, pairs: bool) -> Path:
    """Where :func:`write_fold_view` puts image ``i`` (an RGB pair PNG with ``pairs``)."""
    suffix = ".png" if pairs else ds.records[i].image_path.suffix.lower()
    return root / "images" / f"{i:05d}{suffix}"


def score(weights: Path, ds: LumbarDataset, val_idx: list[int], args: argparse.Namespace,
          view: Path | None = None) -> dict:
    """Score Ultralytics ``weights`` on the images ``val_idx`` with lumbardx's evaluator; with
    ``--sequence-pairs`` it reads the pair images of the fold view ``view``."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    gts, preds, times = [], [], []
    for i in val_idx:
        rec = ds.records[i]
        source = view_image(ds, i, view, True) if args.sequence_pairs and view else rec.image_path
        t = time.perf_counter()
        r = model.predict(str(source), imgsz=args.imgsz, conf=0.001, iou=0.6,
                          max_det=100, device=args.device, verbose=False)[0]
        times.append(time.perf_counter() - t)
        b = r.boxes
        preds.append(Prediction(boxes=b.xyxy.cpu().numpy().astype(np.float32),
                                scores=b.conf.cpu().numpy().astype(np.float32),
                                labels=b.cls.cpu().numpy().astype(np.int64)))
        gts.append(GroundTruth(rec.image_id, rec.width, rec.height, rec.boxes, rec.labels))
    m = coco_evaluate(gts, preds, ds.class_names)
    return {"ap50": {n: float(v) for n, v in zip(ds.class_names, m.ap50)},
            "map50": float(m.map50), "map50_95": float(m.map50_95),
            "ms_per_image": 1000 * float(np.median(times[5:] or times))}


def run_fold(ds: LumbarDataset, fold: int, assign, args: argparse.Namespace) -> dict:
    """Train YOLO11n on the other folds and score it on ``fold``.

    As in ``lumbardx crossval``, the held-out fold chooses nothing: the final weights
    (``last.pt``) are scored; Ultralytics' ``best.pt`` (the epoch with the best fitness on this
    same fold) is scored apart under ``selected_on_fold``, as the optimistic figure.
    ``--score-only`` re-scores a finished training without training again; a run interrupted
    before its ``--epochs`` continues from its ``last.pt`` when the command is repeated.
    """
    from ultralytics import YOLO

    train_idx, val_idx = split(ds, fold, assign)
    work = Path(args.out).resolve() / f"fold{fold}"  # absolute: Ultralytics would nest it
    weights = work / "train" / "weights"
    view = work / "data"
    pairs = SequencePairs(ds) if args.sequence_pairs else None
    if pairs is not None:  # the pair images are read for scoring too (written once)
        write_fold_view(ds, train_idx, val_idx, view, pairs)
    done = _epochs_trained(work / "train") or 0
    if (weights / "last.pt").is_file() and not args.score_only and args.time_hours is None \
            and 0 < done < args.epochs:  # an interrupted run: Ultralytics resumes it exactly
        YOLO(str(weights / "last.pt")).train(resume=True)
    elif not (args.score_only and (weights / "last.pt").is_file()):
        data_yaml = write_fold_view(ds, train_idx, val_idx, view, pairs)
        model = YOLO("yolo11n.yaml")
        # hue / saturation jitter would mix a pair's channels (no effect on gray images)
        colour = {"hsv_h": 0.0, "hsv_s": 0.0} if pairs is not None else {}
        model.train(
            data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
            pretrained=False, amp=False, plots=False, device=args.device,
            workers=args.workers, seed=args.seed, deterministic=False, project=str(work),
            name="train", exist_ok=True, verbose=False, fliplr=0.0, time=args.time_hours,
            **colour,
        )
    result = {"fold": fold, "train_images": len(train_idx), "val_images": len(val_idx),
              **score(weights / "last.pt", ds, val_idx, args, view),
              "train_seconds": _train_seconds(work / "train"),
              "epochs_trained": _epochs_trained(work / "train"), "select": "last",
              "budget": ({"time_hours": args.time_hours} if args.time_hours is not None
                         else {"epochs": args.epochs})}
    if (weights / "best.pt").is_file():
        best = score(weights / "best.pt", ds, val_idx, args, view)
        result["selected_on_fold"] = {
            "ap50": best["ap50"], "map50": best["map50"], "map50_95": best["map50_95"],
            "note": "Ultralytics best.pt, chosen by fitness on this fold: optimistic"}
    return result


def _results_rows(run_dir: Path) -> list[dict[str, str]]:
    """Rows of Ultralytics' ``results.csv`` in ``run_dir`` (one per finished epoch)."""
    csv_path = run_dir / "results.csv"
    if not csv_path.exists():
        return []
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def _train_seconds(run_dir: Path) -> float | None:
    """Training wall time from Ultralytics' ``results.csv`` (its cumulative ``time`` column)."""
    rows = _results_rows(run_dir)
    return float(rows[-1]["time"]) if rows and "time" in rows[-1] else None


def _epochs_trained(run_dir: Path) -> int | None:
    """Number of epochs Ultralytics completed (rows of its ``results.csv``), None if absent."""
    return len(_results_rows(run_dir)) if (run_dir / "results.csv").exists() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--folds", default="0,1,2,3,4", help="validation folds to run")
    p.add_argument("--folds-csv", type=Path, default=None, help="folds from `lumbardx data folds`")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default="study")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--time-hours", type=float, default=None,
                   help="wall-clock training budget in hours; overrides --epochs (Ultralytics "
                        "fits its schedule to the time)")
    p.add_argument("--imgsz", type=int, default=384)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("bench/results/peer_yolo11n"))
    p.add_argument("--sequence-pairs", action="store_true",
                   help="train and score on RGB images of each patient's T1/T2 pair (T1, T2, "
                        "mean), the input of lumbardx's sequence_pairs recipe")
    p.add_argument("--score-only", action="store_true",
                   help="re-score folds already trained in --out instead of training them")
    args = p.parse_args()
    ds = LumbarDataset(args.data, classes=args.classes)
    assign = read_folds_csv(args.folds_csv) if args.folds_csv else make_folds(ds, args.k, args.seed)
    results_path = args.out / "results.json"
    done = {}
    if results_path.is_file():  # folds scored by earlier calls are kept
        done = {f["fold"]: f for f in json.loads(results_path.read_text()).get("folds", [])}
    for fold in [int(f) for f in args.folds.split(",")]:
        done[fold] = run_fold(ds, fold, assign, args)
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(
            {"model": "ultralytics yolo11n (from scratch" + (", T1/T2 pairs)" if
                                                              args.sequence_pairs else ")"),
             "epochs": args.epochs if args.time_hours is None else None,
             "time_hours": args.time_hours, "imgsz": args.imgsz, "device": args.device,
             "ultralytics_version": _ultralytics_version(),
             "folds": [done[k] for k in sorted(done)]}, indent=2))
        tmp.replace(results_path)
        print(json.dumps(done[fold]))


def _ultralytics_version() -> str:
    import ultralytics

    return str(ultralytics.__version__)


if __name__ == "__main__":
    main()
