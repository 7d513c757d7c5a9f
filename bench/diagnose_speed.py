"""End-to-end diagnosis time per image on this machine's CPU, against the study and a peer.

What is timed per image (``time.perf_counter``, milliseconds): ``read`` (file -> image),
``preprocess`` (letterbox, tensor), ``detect`` (network + NMS, boxes mapped back), ``findings``
(levels, statuses), ``segments`` (the segment reader, when the diagnoser has one: its cost is
reported against the same studies without it), ``severity`` and ``overlay`` (the annotated
RGB image rendered in memory); writing reports and DICOM is left out. Warm-up images are run
first and not counted. Reported: median and 90th percentile of the per-image total, and the
ratio of Ke et al.'s 14.5 s per case (PP-YOLOv2, "speed" in their Table) to our median.

Segment checkpoints: the shipped one, or ``--segments-weights``; ``--versus-segments B`` also
diagnoses every image and study with checkpoint ``B`` (everything else the same) next to ours
(before it on even items, after it on odd ones), and reports both medians and their ratio
(``versus_segments``): how a release candidate compares with today's release in the same run.

Backends: PyTorch and, when ``onnxruntime`` is installed and the model exports, ONNX Runtime.
Peer: when ``ultralytics`` is importable, an Ultralytics YOLO11n (``yolo11n.yaml``, random
initialisation, 3 classes, same image size) runs ``predict`` on the same images (its own
letterbox, network and NMS), each right after ours -- compared with our ``preprocess +
detect``. Note the sizes differ (parameters are recorded): YOLO11n is a nano model.

Model: ``--weights``, else the shipped default weights, else a randomly initialised
``--arch`` (default ``yolov5s``); the output says which. Random weights find few or no boxes,
so ``findings``, ``severity`` and ``overlay`` are then lower bounds. A model trained on T1/T2
pairs is timed as diagnosis runs it: the PNG/JPEG slices (no partner) by its single-slice
model (the shipped ``single`` choice, or ``--single-slice-weights``), the DICOM studies below
by the pair model.

DICOM studies (``--dicom-studies N``): N generated studies, each a T2 and a co-registered T1
sagittal series (:func:`lumbardx.synth.write_dicom_series`), diagnosed whole by
:meth:`lumbardx.diagnosis.Diagnoser.diagnose`: ``read`` then includes scanning the folder,
choosing the series and its middle slice, and -- for a model trained on T1/T2 pairs -- finding
the partner series and resampling its slice onto the analysed grid.

Usage::

    python bench/diagnose_speed.py --n 30 [--weights runs/x/best.pt] [--image-size 640] \
        [--dicom-studies 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbardx.data.images import MedicalImage
from lumbardx.data.series import load_study
from lumbardx.diagnosis import Diagnoser
from lumbardx.study import Study
from lumbardx.models.detector import count_parameters
from lumbardx.models.pretrained import NoShippedWeightsError, from_detector, shipped_weights
from lumbardx.models.registry import build_model
from lumbardx.models.runtime import onnxruntime_available
from lumbardx.report.overlay import render_overlay
from machine_info import cpu_name  # bench/machine_info.py, beside this script

STUDY_SECONDS_PER_CASE = 14.5  # Ke et al. 2025, PP-YOLOv2 (CLINICAL.md)
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "yolospine-dev" / "images"
OUT = Path(__file__).resolve().parent / "results" / "diagnose_speed.json"


def synthetic_images(n: int, folder: Path, seed: int = 0) -> list[Path]:
    """``n`` generated sagittal lumbar slices written as PNG into ``folder``."""
    from lumbardx.synth import SynthConfig, generate_case
    from lumbardx.synth.writer import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        case = generate_case(rng, SynthConfig())
        path = folder / f"synth_{i:03d}.png"
        path.write_bytes(png_bytes(case.image))
        paths.append(path)
    return paths


def synthetic_studies(n: int, folder: Path, seed: int = 0) -> list[Path]:
    """``n`` generated DICOM studies, each with a T2 and a co-registered T1 sagittal series
    (``folder/study_<i>/{t2,t1}/``)."""
    from lumbardx.synth import SynthConfig, generate_case, write_dicom_series

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        case = generate_case(rng, SynthConfig())
        study = folder / f"study_{i:03d}"
        if not study.is_dir():
            write_dicom_series(case, study / "t2")
            write_dicom_series(case, study / "t1", weighting="T1")
        paths.append(study)
    return paths


def stats(values: list[float]) -> dict[str, float]:
    """Median, 90th percentile, mean, min and max (ms)."""
    arr = np.asarray(values, dtype=float)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def _timed(diagnose: Callable[[Any], Study], items: list[Any], warmup: int,
           peer: Callable[[np.ndarray], None] | None,
           twin: Callable[[Any], Study] | None = None
           ) -> tuple[list[Study], dict[str, list[float]], list[float], list[Study]]:
    """``diagnose`` each item (the first ``warmup`` items run first and are not counted), the
    overlay rendered and timed into the study's ``timings_ms``; ``peer(display)`` timed on the
    analysed slice right after ours, so that both see the same machine load (other processes
    on a shared machine make separate runs incomparable); ``twin(item)`` (the same pipeline
    with another segment checkpoint, ``--versus-segments``) run on the item right before ours
    on even items and right after it on odd ones, for the same reason.

    Returns:
        The timed studies, their times per step (ms), the peer's times (ms) and the twin's
        studies.
    """
    studies: list[Study] = []
    steps: dict[str, list[float]] = {}
    peer_ms: list[float] = []
    twins: list[Study] = []
    for k, item in enumerate([*items[:warmup], *items]):
        first = twin is not None and k % 2 == 0  # alternate who runs first: no order bias
        if first:
            other = twin(item)
        study = diagnose(item)
        if twin is not None and not first:
            other = twin(item)
        if twin is not None and k >= warmup:
            twins.append(other)
        t1 = time.perf_counter()
        render_overlay(study.image.display, study.findings, model=study.model.name)
        study.timings_ms["overlay"] = 1000.0 * (time.perf_counter() - t1)
        if peer is not None:
            t2 = time.perf_counter()
            peer(study.image.display)
            if k >= warmup:
                peer_ms.append(1000.0 * (time.perf_counter() - t2))
        if k < warmup:
            continue
        studies.append(study)
        for name, ms in study.timings_ms.items():
            steps.setdefault(name, []).append(ms)
    return studies, steps, peer_ms, twins


def versus_segments(studies: list[Study], twins: list[Study]) -> dict[str, Any]:
    """Our pipeline against its twin with another segment checkpoint on the same items (the
    overlay left out of both totals; the twin renders none): medians and their ratio."""
    ours = [sum(v for k, v in s.timings_ms.items() if k != "overlay") for s in studies]
    theirs = [sum(s.timings_ms.values()) for s in twins]
    return {"n": len(twins), "total_ms": stats(theirs), "ours_total_ms": stats(ours),
            "segments_ms": stats([s.timings_ms.get("segments", 0.0) for s in twins]),
            "ratio_ours_over_versus": float(np.median(ours)) / float(np.median(theirs))}


def _summary(dx: Diagnoser, studies: list[Study], steps: dict[str, list[float]],
             peer_ms: list[float]) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Common fields of a timing (backend, total and per-step times, the study's ratio), our
    ``preprocess + detect`` statistics, and the peer's fields (empty without peer times)."""
    totals = [sum(study.timings_ms.values()) for study in studies]
    out = {"backend": dx.info.backend, "total_ms": stats(totals),
           "steps_ms": {k: statistics.median(v) for k, v in steps.items()},
           "ratio_study_over_ours": STUDY_SECONDS_PER_CASE * 1000.0 / float(np.median(totals))}
    model_ms = stats([a + b for a, b in zip(steps["preprocess"], steps["detect"])])
    if "segments" in steps:  # the segment stage against the same pipeline without it
        without = [t - s.timings_ms.get("segments", 0.0) for t, s in zip(totals, studies)]
        out["segment_stage"] = {
            "segments_ms": stats(steps["segments"]), "total_without_ms": stats(without),
            "ratio_total_with_over_without": float(np.median(totals)) / float(np.median(without))}
    versus = {}
    if peer_ms:
        versus = {"peer_predict_ms": stats(peer_ms),
                  "ratio_peer_over_ours_model": stats(peer_ms)["median"] / model_ms["median"]}
    return out, model_ms, versus


def time_studies(dx: Diagnoser, folders: list[Path], warmup: int,
                 peer: Callable[[np.ndarray], None] | None = None,
                 twin: Diagnoser | None = None) -> dict[str, Any]:
    """Per-step and total times of whole DICOM studies (``Diagnoser.diagnose`` plus the
    overlay), the first ``warmup`` not counted; ``peer(display)`` is timed on each study's
    analysed slice right after ours (its network costs the same whatever the channels hold);
    ``twin`` diagnoses each study too (:func:`versus_segments`)."""
    studies, steps, peer_ms, twins = _timed(dx.diagnose, folders, warmup, peer,
                                            None if twin is None else twin.diagnose)
    out, model_ms, versus = _summary(dx, studies, steps, peer_ms)
    if twins:
        out["versus_segments"] = versus_segments(studies, twins)
    out.update({"inputs": dx.info.inputs, "studies": len(studies),
                "read_as_pairs": sum(s.partner_series is not None for s in studies)})
    if versus:
        out.update({"model_ms": model_ms, **versus})
    return out


def time_lumbardx(dx: Diagnoser, paths: list[Path], warmup: int,
                  peer: Callable[[np.ndarray], None] | None = None,
                  twin: Diagnoser | None = None) -> dict[str, Any]:
    """Per-step and total times over image files ``paths`` (read, diagnose, overlay; the
    first ``warmup`` runs not counted), ``peer`` timed on each image as in :func:`_timed`,
    ``twin`` too (:func:`versus_segments`)."""

    def reader(d: Diagnoser) -> Callable[[Path], Study]:
        def read_and_diagnose(path: Path) -> Study:
            t0 = time.perf_counter()
            image: MedicalImage = load_study(path)[0]
            read_ms = 1000.0 * (time.perf_counter() - t0)
            return d.diagnose_image(image, path, timings={"read": read_ms})
        return read_and_diagnose

    studies, steps, peer_ms, twins = _timed(reader(dx), paths, warmup, peer,
                                            None if twin is None else reader(twin))
    out, model_ms, versus = _summary(dx, studies, steps, peer_ms)
    if twins:
        out["versus_segments"] = versus_segments(studies, twins)
    read_as: dict[str, int] = {}  # model input ("slice" / "T1+T2") -> images it read
    for study in studies:
        read_as[study.model.inputs] = read_as.get(study.model.inputs, 0) + 1
    out.update({"model_ms": model_ms, "read_as": read_as,
                "mean_discs_found": float(np.mean([len(s.findings.discs) for s in studies])),
                **versus})
    return out


def ultralytics_peer(image_size: int) -> tuple[Callable[[np.ndarray], None], dict[str, Any]]:
    """Ultralytics YOLO11n (random init, 3 classes): ``predict`` on a gray ``uint8 [H, W]``
    image (repeated to 3 channels) and a description.

    Raises:
        ImportError: ultralytics is not installed.
    """
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolo11n.yaml", task="detect")
    yolo.model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)

    def run(display: np.ndarray) -> None:
        yolo.predict(np.repeat(display[..., None], 3, axis=2), imgsz=image_size, device="cpu",
                     verbose=False)

    return run, {"model": "YOLO11n (yolo11n.yaml, random init, nc=3)", "image_size": image_size,
                 "parameters": sum(p.numel() for p in yolo.model.parameters()),
                 "ultralytics_version": ultralytics.__version__}


def load(args: argparse.Namespace, backend: str, segments: Path | None = None
         ) -> tuple[Diagnoser, str]:
    """The diagnoser for ``backend``, built as ``lumbardx diagnose`` builds it (a model trained
    on T1/T2 pairs comes with its single-slice model; an image without discs is timed, not
    refused; ``segments``: a segment checkpoint instead of the shipped one), and a
    description of the weights."""
    if args.weights is not None:
        dx = Diagnoser(args.weights, backend=backend, single_slice=args.single_slice_weights,
                       segments=segments, refuse_without_discs=False)
        described = f"weights {args.weights} (sha256 {dx.info.weights_sha256[:12]})"
    else:
        try:
            path = shipped_weights("default")
            dx = Diagnoser(model="default", backend=backend, segments=segments,
                           refuse_without_discs=False)
            described = f"shipped default weights {path.name}"
        except NoShippedWeightsError:
            torch.manual_seed(0)
            net = build_model(args.arch, 3)
            loaded = from_detector(net, ["normal", "herniation", "spondylolisthesis"],
                                   args.image_size, backend=backend)
            return Diagnoser(loaded=loaded, refuse_without_discs=False), (
                f"randomly initialised {args.arch} (no shipped weights installed; findings are "
                "not meaningful)")
    if dx.single_slice is not None:
        described += (f", reading T1+T2 pairs; single slices read by "
                      f"{getattr(dx.single_slice.source, 'name', 'a model in memory')} (sha256 "
                      f"{dx.single_slice.info.weights_sha256[:12]})")
    return dx, described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEV, help="folder of PNG/JPEG slices")
    parser.add_argument("--n", type=int, default=30, help="images timed")
    parser.add_argument("--warmup", type=int, default=3, help="images run first, not timed")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--single-slice-weights", type=Path, default=None,
                        help="with --weights of a model trained on T1/T2 pairs: the model "
                        "reading single slices (PNG files, one-sequence studies)")
    parser.add_argument("--arch", default="yolov5s", help="random model when no weights")
    parser.add_argument("--image-size", type=int, default=640, help="input size of a random "
                        "model (a checkpoint brings its own)")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--no-peer", action="store_true", help="skip Ultralytics YOLO11n")
    parser.add_argument("--dicom-studies", type=int, default=0, help="also time this many "
                        "generated two-series DICOM studies, read whole")
    parser.add_argument("--segments-weights", type=Path, default=None,
                        help="segment checkpoint timed instead of the shipped one")
    parser.add_argument("--versus-segments", type=Path, default=None,
                        help="also diagnose every image / study with this segment checkpoint "
                             "(the rest the same) right before ours, and report the ratio")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    studies: list[Path] = []
    if args.dicom_studies > 0:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "lumbardx-bench-studies"
        studies = synthetic_studies(args.dicom_studies, tmp)

    if args.data.is_dir():
        paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in
                       (".png", ".jpg", ".jpeg"))[: args.n]
        data = os.path.relpath(args.data, Path(__file__).resolve().parents[1])
    else:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "lumbardx-bench-synth"
        paths, data = synthetic_images(args.n, tmp), "synthetic (lumbardx.synth)"
    if not paths:
        raise SystemExit(f"no images in {args.data}")

    result: dict[str, Any] = {
        "what": "end-to-end per image: read, preprocess, detect, findings, severity, overlay "
                "(reports excluded); warm-up excluded",
        "data": data, "n_images": len(paths), "warmup": args.warmup,
        "machine": {"cpu": cpu_name(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "study_seconds_per_case": STUDY_SECONDS_PER_CASE, "backends": {},
    }
    peer = None
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "onnx" and not onnxruntime_available():
            result["backends"]["onnx"] = {"skipped": "onnxruntime not installed"}
            continue
        dx, described = load(args, backend, args.segments_weights)
        twin = None
        if args.versus_segments is not None:
            twin, _ = load(args, backend, args.versus_segments)
            result["versus_segments"] = str(args.versus_segments)
        if dx.segments is not None:
            result["segments"] = {"weights": str(args.segments_weights or "shipped"),
                                  **dx.segments.summary}
        result["model"] = {"described": described, "name": dx.info.name,
                           "inputs": dx.info.inputs, "image_size": dx.info.image_size}
        if dx.single_slice is not None:
            result["single_slice_model"] = {"name": dx.single_slice.info.name,
                                            "version": dx.single_slice.info.version,
                                            "image_size": dx.single_slice.info.image_size}
        if dx.loaded.model is not None:
            result["model"]["parameters"] = count_parameters(dx.loaded.model)
        if peer is None and not args.no_peer:
            try:
                peer, result["peer"] = ultralytics_peer(dx.info.image_size)
            except ImportError:
                result["peer"] = {"skipped": "ultralytics not importable"}
        r = time_lumbardx(dx, paths, args.warmup, peer, twin)
        result["backends"][backend] = r
        print(f"[{backend}] {described}: median {r['total_ms']['median']:.1f} ms, p90 "
              f"{r['total_ms']['p90']:.1f} ms per image; study/ours = "
              f"{r['ratio_study_over_ours']:.1f}x")
        if "segment_stage" in r:
            seg = r["segment_stage"]
            print(f"[{backend}] segment stage median {seg['segments_ms']['median']:.1f} ms; "
                  f"with/without = {seg['ratio_total_with_over_without']:.2f}")
        if "versus_segments" in r:
            v = r["versus_segments"]
            print(f"[{backend}] versus {args.versus_segments.name}: median "
                  f"{v['ours_total_ms']['median']:.1f} vs {v['total_ms']['median']:.1f} ms "
                  f"(without the overlay): ours/versus = {v['ratio_ours_over_versus']:.3f}")
        if studies:
            rs = time_studies(dx, studies, args.warmup, peer, twin)
            result.setdefault("dicom_studies", {})[backend] = rs
            print(f"[{backend}] DICOM studies (T2 + T1 series; model reads "
                  f"{rs['inputs']}, {rs['read_as_pairs']}/{rs['studies']} read as pairs): "
                  f"median {rs['total_ms']['median']:.1f} ms per study (read "
                  f"{rs['steps_ms']['read']:.1f} ms)")
            if "segment_stage" in rs:
                print(f"[{backend}] DICOM studies: segment stage median "
                      f"{rs['segment_stage']['segments_ms']['median']:.1f} ms; with/without = "
                      f"{rs['segment_stage']['ratio_total_with_over_without']:.2f}")
            if "versus_segments" in rs:
                v = rs["versus_segments"]
                print(f"[{backend}] DICOM studies versus {args.versus_segments.name}: median "
                      f"{v['ours_total_ms']['median']:.1f} vs {v['total_ms']['median']:.1f} ms:"
                      f" ours/versus = {v['ratio_ours_over_versus']:.3f}")
            if "peer_predict_ms" in rs:
                print(f"[{backend}] DICOM studies: YOLO11n predict median "
                      f"{rs['peer_predict_ms']['median']:.1f} ms vs our preprocess+detect "
                      f"{rs['model_ms']['median']:.1f} ms: YOLO11n/ours = "
                      f"{rs['ratio_peer_over_ours_model']:.2f}")
        if "peer_predict_ms" in r:
            print(f"[{backend}] YOLO11n predict median {r['peer_predict_ms']['median']:.1f} ms "
                  f"vs our preprocess+detect {r['model_ms']['median']:.1f} ms on the same "
                  f"images: YOLO11n/ours = {r['ratio_peer_over_ours_model']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
