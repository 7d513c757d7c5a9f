"""Score an ensemble of segment-reader cross-validations run on the same folds.

The out-of-fold logits (and offsets, and level-check logits) of each run in ``--runs`` are
averaged disc by disc, written as a cross-validation folder of their own (``--out``, one
``fold<k>/predictions.json`` each, as :func:`lumbardx.engine.segment_crossval.run_fold` writes
them, with the fold's readers as one :class:`~lumbardx.models.segment_reader.SegmentEnsemble`
in ``fold<k>/segment_reader.pt`` for ``bench/segment_end_to_end.py``) and scored with :func:`lumbardx.engine.segment_crossval.summarise`, paired with
``--compare`` summaries like ``bench/segment_crossval.py`` does. What an ensemble of those
readers would give at diagnosis, measured without training anything.

Usage::

    python bench/segment_ensemble.py ../shared/data/yolospine-dev \
        --runs runs/segcv-v2a,runs/segcv-v3-seed1 --out runs/segcv-ensemble2 \
        --results bench/results/segment_crossval_ensemble2.json \
        --compare bench/results/segment_crossval_v2a.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_crossval import FOLDS, write_results

from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.pairs import SequencePairs
from lumbardx.engine.checkpoint import save_checkpoint
from lumbardx.engine.segment_crossval import summarise
from lumbardx.engine.segment_training import item_from_sample
from lumbardx.io import atomic_write_text
from lumbardx.models.segment_reader import SegmentEnsemble, load_segment_reader

LEVEL_KEYS = ("right", "missed", "extra", "extra_true")


def average_fold(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """One fold's predictions with every run's logits, offsets and level checks averaged
    (the runs must hold the same discs in the same order)."""
    base = raws[0]
    keys = [(r["image"], r["disc"]) for r in base["rows"]]
    for other in raws[1:]:
        if [(r["image"], r["disc"]) for r in other["rows"]] != keys:
            raise SystemExit(f"fold {base['fold']}: the runs do not hold the same discs")
    rows = [{**row,
             "logits": np.mean([raw["rows"][i]["logits"] for raw in raws], axis=0).tolist(),
             "offset": float(np.mean([raw["rows"][i]["offset"] for raw in raws]))}
            for i, row in enumerate(base["rows"])]
    checks = [{**c, **{k: float(np.mean([raw["level_check"][i][k] for raw in raws]))
                       for k in LEVEL_KEYS}}
              for i, c in enumerate(base.get("level_check", []))]
    return {"fold": base["fold"], "template": base["template"], "rows": rows,
            "level_check": checks, "slip_measure": base.get("slip_measure", [])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--runs", required=True, help="Comma-separated cross-validation folders.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--folds-csv", type=Path, default=FOLDS)
    ap.add_argument("--compare", type=Path, action="append", default=[])
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs.split(",") if r]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(args.data, classes="all", cache=True)
    pairs = SequencePairs(ds)
    items = [item_from_sample(pairs[i], ds.class_names) for i in range(len(ds))]
    with args.folds_csv.open(newline="") as fh:
        folds = {r["image"]: int(r["fold"]) for r in csv.DictReader(fh)}
    for k in sorted({int(p.parent.name[4:]) for p in runs[0].glob("fold*/predictions.json")}):
        raws = [json.loads((r / f"fold{k}" / "predictions.json").read_text()) for r in runs]
        atomic_write_text(args.out / f"fold{k}" / "predictions.json",
                          json.dumps(average_fold(raws)))
        save_checkpoint(SegmentEnsemble([
            load_segment_reader(torch.load(r / f"fold{k}" / "segment_reader.pt",
                                           weights_only=True)) for r in runs]).checkpoint(),
            args.out / f"fold{k}" / "segment_reader.pt")  # for bench/segment_end_to_end.py
    summary = summarise(args.out, items, folds)
    summary.update({"data": args.data.name, "folds_csv": args.folds_csv.name,
                    "ensemble_of": [r.name for r in runs], "inputs": "T1+T2"})
    write_results(summary, args.results, args.compare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
