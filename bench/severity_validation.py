"""Validate the severity estimates (Meyerding slip %, herniation extent mm) on generated cases.

Cases come from :func:`lumbardx.synth.case.generate_case` with seeds that the method was NOT
tuned on (tuning used seeds 3000-3059 and 4000-4024; this script uses 100000 + i), so the
errors are held-out. Ground-truth boxes give the discs; the estimates use the image only.

Usage::

    python3 bench/severity_validation.py [--slips 80] [--hernia-cases 40]

Writes ``bench/results/severity_validation.json`` with per-case rows and the summary (mean
absolute error, median, 90th percentile, bias, failures, grade agreement). The validation
strings in :mod:`lumbardx.clinical.severity` quote these numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lumbardx.clinical.findings import SLIP, build_findings
from lumbardx.clinical.severity import (estimate_herniation_extent, estimate_slip,
                                        meyerding_grade)
from lumbardx.synth.anatomy import SynthConfig
from lumbardx.synth.case import generate_case

SEED0 = 100_000


def _summary(err: list[float], fails: int) -> dict[str, float | int]:
    e = np.asarray(err, dtype=float)
    return {"n": int(len(e)), "failures": fails, "mae": round(float(np.abs(e).mean()), 3),
            "median_abs": round(float(np.median(np.abs(e))), 3),
            "p90_abs": round(float(np.percentile(np.abs(e), 90)), 3),
            "bias": round(float(e.mean()), 3)}


def validate_slips(n: int) -> dict[str, object]:
    """Slip % error on ``n`` generated cases, each with one spondylolisthesis in view."""
    cfg = SynthConfig(p_listhesis=1.0)
    rows, err, fails, agree = [], [], 0, 0
    for k in range(n):
        case = generate_case(np.random.default_rng(SEED0 + k), cfg, name=f"slip{k:03d}")
        li = case.truth["listheses"][0]
        spine = build_findings(case.annotation.boxes, (case.view.width, case.view.height))
        idx = next((i for i, d in enumerate(spine.discs) if d.has(SLIP)), None)
        est = estimate_slip(case.image, spine, idx) if li["in_view"] and idx is not None else None
        row = {"case": case.name, "level": li["level"], "true_percent": li["slip_percent"],
               "true_grade": li["grade"], "spacing_mm": case.pixel_spacing[0],
               "estimate_percent": None if est is None else round(est.percent, 2)}
        if est is None:
            fails += 1
        else:
            err.append(est.percent - li["slip_percent"])
            agree += int(meyerding_grade(abs(est.percent)) == li["grade"])
        rows.append(row)
    out = _summary(err, fails)
    out["grade_agreement"] = round(agree / max(len(err), 1), 3)
    return {"summary": out, "rows": rows}


def validate_herniations(n_cases: int) -> dict[str, object]:
    """Extent (mm) error on every herniated disc of ``n_cases`` generated cases."""
    cfg = SynthConfig(p_herniation=0.6, p_listhesis=0.0)
    rows, err, fails = [], [], 0
    for k in range(n_cases):
        case = generate_case(np.random.default_rng(SEED0 + 5000 + k), cfg, name=f"hern{k:03d}")
        spine = build_findings(case.annotation.boxes, (case.view.width, case.view.height))
        by_level = {d["level"]: d for d in case.truth["discs"]}
        for i, td in enumerate(case.truth["discs"]):
            if td["herniation"] is None or i >= len(spine.discs):
                continue
            est = estimate_herniation_extent(case.image, spine, i, case.pixel_spacing)
            true = by_level[td["level"]]["herniation"]["extent_mm"]
            rows.append({"case": case.name, "level": td["level"], "type": td["herniation"]["type"],
                         "true_mm": true, "estimate_mm": None if est is None else round(est, 2)})
            if est is None:
                fails += 1
            else:
                err.append(est - true)
    return {"summary": _summary(err, fails), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slips", type=int, default=80)
    parser.add_argument("--hernia-cases", type=int, default=40)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "severity_validation.json")
    args = parser.parse_args()
    t0 = time.time()
    result = {"source": "lumbardx.synth.case.generate_case, seeds from 100000 (held out)",
              "slip_percent": validate_slips(args.slips),
              "herniation_extent_mm": validate_herniations(args.hernia_cases)}
    result["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v["summary"] for k, v in result.items() if isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
