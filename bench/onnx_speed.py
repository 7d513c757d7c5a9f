"""CPU speed of PyTorch vs ONNX Runtime, single image, for lumbardx's CPU-friendly detectors.

For each model (default ``yolov5n``, ``yolov5s``, ``ppyolov2-r18`` at 384 px, the size of the
yolospine slices) the model is exported with :func:`lumbardx.models.export.export_onnx` and two
things are timed on one image (batch 1), both backends with the same number of threads:

* ``graph``: network + box decoding only (PyTorch ``DecodedDetector`` vs ``session.run``), the
  part ONNX Runtime replaces;
* ``end_to_end``: the backend call users make (``TorchBackend`` / ``OnnxBackend``: graph, then the
  same NMS code on both).

Warm-up runs are excluded; the median (and 10th / 90th percentiles) of ``--runs`` timed runs is
reported in milliseconds, with ``ratio = torch / onnx`` (> 1: ONNX Runtime is faster). Weights are
random unless ``--checkpoint`` is given (one checkpoint for one model); with random weights the
NMS workload (candidate count) is not representative, so compare ``graph`` times. The input is
the first slice of ``--data`` when given (grayscale replicated to 3 channels, resized), else a
smooth synthetic image.

Usage::

    python bench/onnx_speed.py --runs 50 --threads 1 --data ../shared/data/yolospine-dev
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lumbardx
from lumbardx.models.export import DecodedDetector, export_onnx
from lumbardx.models.registry import build_model
from lumbardx.models.runtime import OnnxBackend, TorchBackend
from machine_info import cpu_name  # bench/machine_info.py, beside this script

DEFAULT_MODELS = ("yolov5n", "yolov5s", "ppyolov2-r18")


def load_image(data: Path | None, size: int) -> torch.Tensor:
    """``float32 [1, 3, size, size]`` in [0, 1]: the first dataset slice, or a synthetic one."""
    if data is not None:
        from PIL import Image

        files = sorted((data / "images").rglob("*.png")) or sorted(data.rglob("*.png"))
        if not files:
            raise SystemExit(f"{data}: no PNG images found")
        img = Image.open(files[0]).convert("L").resize((size, size), Image.BILINEAR)
        gray = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    else:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                                indexing="ij")
        gray = 0.5 + 0.4 * torch.sin(6 * xx) * torch.cos(4 * yy)
    return gray.expand(1, 3, size, size).contiguous()


def time_runs(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Median, p10 and p90 in milliseconds of ``runs`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    q = np.percentile(times, [10, 90])
    return {"median_ms": statistics.median(times), "p10_ms": float(q[0]), "p90_ms": float(q[1])}


def bench_model(name: str, args: argparse.Namespace, image: torch.Tensor, tmp: Path) -> dict:
    """Time one model in both backends; returns the JSON record."""
    if args.checkpoint is None:
        model = build_model(name, args.num_classes).eval()
    else:
        from lumbardx.engine.checkpoint import load_checkpoint, rebuild_detector

        det = rebuild_detector(load_checkpoint(args.checkpoint), args.checkpoint)
        if det.model_name != name:
            raise SystemExit(f"{args.checkpoint} holds a {det.model_name}, not a {name}")
        model = det.model
    path = export_onnx(model, tmp / f"{name}.onnx", args.size)
    onnx_backend = OnnxBackend(path, threads=args.threads)
    torch_backend = TorchBackend(model, image_size=args.size)
    graph = DecodedDetector(model, (args.size, args.size)).eval()

    def torch_graph() -> None:
        with torch.inference_mode():
            graph(image)

    record: dict[str, Any] = {"model": name, "onnx_providers": onnx_backend.providers}
    for part, t_fn, o_fn in (
        ("graph", torch_graph, lambda: onnx_backend.decoded(image)),
        ("end_to_end", lambda: torch_backend(image), lambda: onnx_backend(image)),
    ):
        t = time_runs(t_fn, args.runs, args.warmup)
        o = time_runs(o_fn, args.runs, args.warmup)
        record[part] = {"torch": t, "onnx": o, "ratio": t["median_ms"] / o["median_ms"]}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="threads for both backends")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder with images/")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/onnx_speed.json"))
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.checkpoint is not None and len(models) != 1:
        parser.error("--checkpoint needs exactly one model in --models")

    import onnxruntime

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = load_image(args.data, args.size)
    records = []
    with tempfile.TemporaryDirectory(prefix="lumbardx-bench-") as tmp:
        for name in models:
            rec = bench_model(name, args, image, Path(tmp))
            records.append(rec)
            print(
                f"{name:14s} graph torch {rec['graph']['torch']['median_ms']:8.1f} ms  "
                f"onnx {rec['graph']['onnx']['median_ms']:8.1f} ms  "
                f"ratio {rec['graph']['ratio']:.2f} | end-to-end ratio "
                f"{rec['end_to_end']['ratio']:.2f}"
            )
    result = {
        "description": "single-image CPU inference, median of timed runs after warm-up; "
                       "ratio = torch / onnx (> 1: ONNX Runtime faster)",
        "image_size": args.size,
        "batch": 1,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": args.threads,
        "weights": str(args.checkpoint) if args.checkpoint else "random",
        "input": str(args.data) if args.data else "synthetic",
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "lumbardx": lumbardx.__version__,
        "models": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({args.threads} thread(s), {args.runs} runs, {args.size} px)")


if __name__ == "__main__":
    main()
