"""Do the checks of :mod:`lumbardx.stages.plausibility` refuse junk and no real slice?

Diagnosis refuses a uniform image, pixel noise, and an image in which the detector finds no
disc. This measures the checks on both sides with the shipped weights, as ``lumbardx
diagnose`` reads an image file: every real slice of a dataset (none may be refused; the discs
found and the roughness are recorded), and junk made here (pixel noise at three sizes, smooth
noise, black, uniform gray, a gradient) and the photographs and logos that ship with
matplotlib (``mpl-data/sample_data``), each of which must be refused.

Usage::

    python bench/junk_images.py ../shared/data/yolospine-dev --out bench/results/junk_images.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name

from lumbardx.data.errors import InputError
from lumbardx.diagnosis import Diagnoser
from lumbardx.io import atomic_write_text
from lumbardx.stages.plausibility import roughness


def junk_images(folder: Path) -> dict[str, Path]:
    """Generated junk and matplotlib's sample photographs and logos, as 8-bit PNG files."""
    rng = np.random.default_rng(0)
    arrays = {"noise": rng.integers(0, 256, (384, 384), dtype=np.uint8),
              "noise_256": rng.integers(0, 256, (256, 256), dtype=np.uint8),
              "noise_512": rng.integers(0, 256, (512, 512), dtype=np.uint8),
              "black": np.zeros((384, 384), np.uint8),
              "gray": np.full((384, 384), 128, np.uint8),
              "gradient": np.tile(np.linspace(0, 255, 384).astype(np.uint8), (384, 1)),
              "noise_smooth": np.asarray(Image.fromarray(
                  rng.integers(0, 256, (48, 48), dtype=np.uint8)).resize((384, 384)))}
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for f in sorted([*sample.glob("*.jpg"), *sample.glob("*.png")]):
        arrays[f"sample_{f.stem}"] = np.asarray(Image.open(f).convert("L"))
    out = {}
    for name, a in arrays.items():
        out[name] = folder / f"{name}.png"
        Image.fromarray(a).save(out[name])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="dataset folder with images/")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dx = Diagnoser(backend="torch", refuse_without_discs=False, segments=False)
    t0 = time.perf_counter()
    real = sorted((args.data / "images").glob("*.png"))
    refusing = Diagnoser(loaded=dx.loaded, single_slice=dx.single_slice, segments=False)
    counts, rough, refused_real = [], [], []
    for p in real:
        counts.append(len(dx.diagnose(p).findings.discs))
        rough.append(roughness(np.asarray(Image.open(p).convert("L"))))
        try:
            refusing.diagnose(p)
        except InputError as exc:
            refused_real.append(f"{p.name}: {exc.problem}")
    junk: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in junk_images(Path(tmp)).items():
            discs = len(dx.diagnose(path).findings.discs)
            try:
                refusing.diagnose(path)
                refused = None
            except InputError as exc:
                refused = exc.problem
            junk[name] = {"discs": discs, "refused": refused,
                          "roughness": round(roughness(np.asarray(Image.open(path))), 3)}
    result = {"detector": dx.info.version,
              "single_slice": None if dx.single_slice is None else dx.single_slice.info.version,
              "real": {"slices": len(counts), "min_discs": min(counts),
                       "refused": refused_real, "max_roughness": round(max(rough), 3),
                       "discs_histogram": np.bincount(counts).tolist()},
              "junk": junk, "junk_refused": sum(v["refused"] is not None for v in junk.values()),
              "wall_s": round(time.perf_counter() - t0, 1), "machine": {"cpu": cpu_name()}}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"real slices: {len(counts)}, fewest discs found {min(counts)}, refused "
          f"{len(refused_real)}; junk refused {result['junk_refused']} of {len(junk)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
