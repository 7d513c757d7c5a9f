"""Are disc levels named right, and is every wrong name flagged ``level_uncertain``?

Truth: ``bench/levels/yolospine-dev-levels.csv``, one slice per patient of ``yolospine-dev``
(168 slices, 1,113 discs), levels checked by eye on overlays of the ground-truth discs
(``disc`` indexes the ground-truth discs top to bottom as
:func:`lumbardx.engine.segment_training.truth_spine` groups them). In every slice checked the
lowest annotated disc is L5-S1 and no disc is skipped; two slices end with the sacrum only
partly in view.

Each truth slice is diagnosed as ``lumbardx diagnose`` reads an image file (the shipped
single-slice detector, then the findings and, when installed, the segment stage), in three
scenarios, the two miscounts that make wrong names happening on purpose:

* ``as_is``: the slice as it is;
* ``cut_above_sacrum``: the rows below the middle of the L5 body removed (a view that ends
  above the sacrum: the lowest disc in view is L4-L5);
* ``missed_lowest``: the detector's boxes at L5-S1 removed (a disc missed at the bottom).

Predicted discs are matched to ground-truth discs (:func:`lumbardx.clinical.findings.
match_discs`); a matched disc's name is right or wrong, flagged or not. Reported per scenario:
matched discs, wrong names, **wrong names without ``level_uncertain``** (the number that must
be 0), right names flagged, and slices with any unflagged wrong name. The shipped detector was
trained on these images (detection is optimistic); the naming rules and the segment reader's
level check are what is measured.

Synthetic cases (``--synthetic N``, :mod:`lumbardx.synth`, exact levels) add views with the
sacrum out of view.

Usage::

    python bench/level_naming.py ../shared/data/yolospine-dev \
        --out bench/results/level_naming.json [--no-segments] [--synthetic 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name

from lumbardx.clinical.findings import SpineFindings, build_findings, match_discs
from lumbardx.data.boxes import Box
from lumbardx.data.dataset import LumbarDataset
from lumbardx.engine.segment_training import truth_spine
from lumbardx.io import atomic_write_text

TRUTH = Path(__file__).resolve().parent / "levels" / "yolospine-dev-levels.csv"
SCENARIOS = ("as_is", "cut_above_sacrum", "missed_lowest")


def read_truth(path: Path) -> dict[str, dict[int, str]]:
    """image file name -> {ground-truth disc index: level}."""
    out: dict[str, dict[int, str]] = defaultdict(dict)
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["image"]][int(row["disc"])] = row["level"]
    return dict(out)


def read_spine(dx: Any, display: np.ndarray, drop: tuple[float, float] | None = None
               ) -> tuple[SpineFindings, list[str]]:
    """Detect, group and (with a segment reader) read one single slice ``uint8 [H, W]``;
    ``drop`` = ``(y_low, y_high)`` removes boxes whose centre lies in that row band."""
    import torch

    from lumbardx.data.images import MedicalImage
    from lumbardx.stages import detect as detect_stage
    from lumbardx.stages.findings import drop_stale, find, findings_warnings

    m = dx.single_slice or dx.loaded
    with torch.inference_mode():
        boxes = detect_stage.detect(m, *detect_stage.preprocess(m, display))
    if drop is not None:
        boxes = [b for b in boxes if not drop[0] <= (b.y1 + b.y2) / 2 <= drop[1]]
    image = MedicalImage(display.astype(np.float32), display, None, Path("slice.png"), "png")
    spine, warns = find(boxes, image, m)
    if dx.segments is not None and spine.discs:
        readings = dx.segments.read(np.stack([display, display]), spine, True)
        before = findings_warnings(spine)
        added = dx.segments.apply(spine, readings)
        warns = drop_stale(warns, before, spine) + added
    return spine, warns


def score(truth_spine_: SpineFindings, truth_levels: dict[int, str], pred: SpineFindings,
          keep: set[int]) -> Counter:
    """Counts for one slice: matched, wrong, wrong_unflagged, right_flagged, missed."""
    c: Counter = Counter()
    match = match_discs(truth_spine_, pred)
    for i, j in enumerate(match):
        if i not in keep:
            continue
        if j is None:
            c["unmatched"] += 1
            continue
        d = pred.discs[j]
        right = d.level == truth_levels[i]
        c["matched"] += 1
        c["wrong"] += int(not right)
        c["wrong_unflagged"] += int(not right and not d.level_uncertain)
        c["right_flagged"] += int(right and d.level_uncertain)
    return c


def summarise(counts: list[Counter]) -> dict[str, Any]:
    total: Counter = sum(counts, Counter())
    return {"slices": len(counts), **{k: int(total[k]) for k in
                                      ("matched", "unmatched", "wrong", "wrong_unflagged",
                                       "right_flagged")},
            "slices_with_unflagged_wrong": int(sum(c["wrong_unflagged"] > 0 for c in counts)),
            "right_flagged_share": total["right_flagged"] / max(total["matched"]
                                                                - total["wrong"], 1)}


def real_cases(dx: Any, data: Path, truth_csv: Path) -> dict[str, Any]:
    truth = read_truth(truth_csv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LumbarDataset(data, classes="all")
    index = {Path(r.image_id).name: i for i, r in enumerate(ds.records)}
    per: dict[str, list[Counter]] = {s: [] for s in SCENARIOS}
    reasons: dict[str, Counter] = {s: Counter() for s in SCENARIOS}
    for name, levels in sorted(truth.items()):
        sample = ds[index[name]]
        h, w = sample.image.shape
        boxes = [Box(ds.class_names[int(lab)], *map(float, bx))
                 for bx, lab in zip(sample.boxes, sample.labels)]
        gt, _ = truth_spine(boxes, (w, h))
        low = gt.discs[-1]
        everything = set(range(len(gt.discs)))
        for scen in SCENARIOS:
            display, keep, drop = sample.image, everything, None
            if scen == "cut_above_sacrum":
                cut = int(round((gt.discs[-2].centre[1] + low.centre[1]) / 2))
                display = np.ascontiguousarray(sample.image[:cut])
                keep = {i for i, d in enumerate(gt.discs) if d.box.y2 <= cut}
            elif scen == "missed_lowest":
                band = 0.5 * (low.spacing if np.isfinite(low.spacing) else low.box.height * 2)
                drop = (low.centre[1] - band, low.centre[1] + band)
                keep = everything - {len(gt.discs) - 1}
            pred, warns = read_spine(dx, display, drop)
            per[scen].append(score(gt, levels, pred, keep))
            reasons[scen].update(w.split(":")[0] for w in warns if "level" in w)
    return {s: {**summarise(per[s]), "level_warnings": dict(reasons[s].most_common(6))}
            for s in SCENARIOS}


def synthetic_cases(dx: Any, n: int, seed: int) -> dict[str, Any]:
    from lumbardx.synth import SynthConfig, generate_case

    rng = np.random.default_rng(seed)
    cfg = SynthConfig(p_sacrum_visible=0.5)
    per: dict[str, list[Counter]] = {"sacrum_in_view": [], "sacrum_out_of_view": []}
    for _ in range(n):
        case = generate_case(rng, cfg)
        discs = case.truth["discs"]
        boxes = [Box("normal", *d["box"]) if "box" in d else None for d in discs]
        if any(b is None for b in boxes) or len(boxes) < 2:
            continue
        h, w = case.image.shape
        gt = build_findings(boxes, (w, h))
        levels = {i: d["level"] for i, d in enumerate(discs)}
        pred, _ = read_spine(dx, case.image)
        key = "sacrum_in_view" if case.truth["sacrum_visible"] else "sacrum_out_of_view"
        per[key].append(score(gt, levels, pred, set(range(len(gt.discs)))))
    return {k: summarise(v) for k, v in per.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--truth", type=Path, default=TRUTH)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--segments-weights", type=Path, default=None)
    ap.add_argument("--no-segments", action="store_true")
    ap.add_argument("--synthetic", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from lumbardx.diagnosis import Diagnoser

    segments: Any = False if args.no_segments else args.segments_weights
    dx = Diagnoser(backend="torch", segments=segments)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "truth": args.truth.name, "data": args.data.name,
        "detector": (dx.single_slice or dx.loaded).info.version,
        "segment_reader": None if dx.segments is None else dx.segments.summary,
        "real": real_cases(dx, args.data, args.truth)}
    if args.synthetic:
        result["synthetic"] = synthetic_cases(dx, args.synthetic, args.seed)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["machine"] = {"cpu": cpu_name()}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    for scen, r in result["real"].items():
        print(f"{scen:18s} matched {r['matched']:5d} wrong {r['wrong']:4d} "
              f"wrong unflagged {r['wrong_unflagged']:4d} right flagged {r['right_flagged']:4d}")
    for key, r in result.get("synthetic", {}).items():
        print(f"synthetic {key:18s} slices {r['slices']} matched {r['matched']} wrong "
              f"{r['wrong']} wrong unflagged {r['wrong_unflagged']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
