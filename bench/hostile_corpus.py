"""Hostile input through ``lumbardx.data``: each file gives an image or one clean InputError.

Corpus: pydicom's bundled test files (``pydicom.data.get_testdata_files``, the regular files
installed locally), mutations of eight of them (truncated at 25 / 50 / 75 / 95 %, bytes flipped
in the header and in the pixel data, four seeds each), and files made here: inconsistent
Bits Allocated / Bits Stored / Rows / Columns, zero-length pixel data, multi-frame, RGB, signed
16-bit, zero / NaN pixel spacing, zero / NaN window width, Rescale Slope 0, 65535 x 65535
headers, PNG / JPEG / text named ``.dcm``, empty files, garbage JPEG 2000 fragments, and a
7000 x 7000 native DICOM, PNG and JPEG.

Each file is read as ``lumbardx`` reads one (:func:`lumbardx.data.images.read_image`; a
multi-frame DICOM through :func:`lumbardx.data.dicom.read_dicom` at its middle frame) in a
child process, so that a native crash of the reader is seen: the child reports each file
before and after reading it; when it dies the file it was on counts as a ``crash``, when it
takes longer than ``--timeout`` as a ``timeout``, and a new child goes on with the next file.
Outcomes: ``image``, ``input_error`` (an InputError with a one-line message),
``other_exception`` (any other type, or a multi-line message), ``crash``, ``timeout``. The
input errors that report a failed decoder process (a native crash, time-out or out-of-memory
contained by :mod:`lumbardx.data.decode`) are listed by name.

Also recorded: the peak resident memory growth (``VmHWM`` after less ``VmRSS`` before, in a
fresh interpreter) of reading each 7000 x 7000 file, and the cost of decoding compressed
pixel data in the decoder process: a 15-slice 512 x 512 16-bit series in JPEG 2000 and RLE,
read in the decoder process (first read including its start, then the rest) and, for
comparison, in the calling process (``run_isolated`` replaced by a direct call of the same
function, which reads the file again as the child does). Medians leave out the first slice,
reported apart; each series is read twice and both passes count.

Usage::

    python bench/hostile_corpus.py --out bench/results/hostile_corpus.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name  # bench/machine_info.py, beside this script

from lumbardx.io import atomic_write_text

OUTCOMES = ("image", "input_error", "other_exception", "crash", "timeout")
#: pydicom test files mutated by truncation and byte flips: native, big endian, RLE, JPEG 2000,
#: JPEG-LS, baseline JPEG, RGB and a multi-frame file.
MUTATED = ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
           "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_16.dcm",
           "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm")
SEEDS = range(4)
HUGE = 7000


# ---------------------------------------------------------------- corpus

def pydicom_files() -> list[Path]:
    """pydicom's bundled test files that are regular files, sorted."""
    return sorted(p for p in map(Path, get_testdata_files()) if p.is_file())


def _pixel_offset(data: bytes) -> int:
    """Byte offset of the last Pixel Data tag (little or big endian), else half the file."""
    found = max(data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10"))
    return found if found > 132 else len(data) // 2


def mutations(folder: Path) -> dict[str, Path]:
    """Truncations and byte flips of :data:`MUTATED`, written to ``folder``."""
    out: dict[str, Path] = {}
    for name in MUTATED:
        data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
        stem, pixels_at = Path(name).stem, _pixel_offset(data)
        for fraction in (0.25, 0.5, 0.75, 0.95):
            out[f"{stem}_cut{int(fraction * 100)}"] = data[: int(len(data) * fraction)]
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            for region, (low, high) in (("header", (132, pixels_at)),
                                        ("pixels", (pixels_at + 8, len(data)))):
                flipped = bytearray(data)
                for at in rng.integers(low, max(high, low + 1), 8):
                    flipped[at] ^= int(rng.integers(1, 256))
                out[f"{stem}_flip_{region}{seed}"] = bytes(flipped)
    paths = {}
    for key, content in out.items():
        paths[key] = folder / f"{key}.dcm"
        paths[key].write_bytes(content)
    return paths


def _mr(pixels: np.ndarray, **fields: Any) -> Dataset:
    """An MR data set (Explicit VR Little Endian) holding ``pixels``, then ``fields`` set."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return ds


def _made_datasets(ramp: np.ndarray, rng: np.random.Generator) -> dict[str, Dataset]:
    """The data sets of :func:`made_files` (``ramp``: uint16 ``[64, 48]``)."""
    datasets: dict[str, Dataset] = {
        "ok_native": _mr(ramp),
        "bits_allocated_12": _mr(ramp, BitsAllocated=12),
        "bits_allocated_1": _mr(ramp, BitsAllocated=1),
        "bits_stored_above_allocated": _mr(ramp, BitsStored=20),
        "rows_too_many": _mr(ramp, Rows=80),
        "rows_too_few": _mr(ramp, Rows=32),
        "columns_too_many": _mr(ramp, Columns=60),
        "rows_zero": _mr(ramp, Rows=0),
        "samples_2": _mr(ramp, SamplesPerPixel=2),
        "frames_zero": _mr(ramp, NumberOfFrames=0),
        "frames_negative": _mr(ramp, NumberOfFrames=-3),
        "frames_claimed_5": _mr(ramp, NumberOfFrames=5),
        "pixel_data_empty": _mr(ramp, PixelData=b""),
        "multi_frame": _mr(np.concatenate([ramp] * 3), Rows=64, NumberOfFrames=3),
        "rgb": _mr(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)),
        "signed_16": _mr((ramp.astype(np.int32) - 2000).astype(np.int16)),
        "spacing_zero": _mr(ramp, PixelSpacing=[0, 0]),
        "spacing_nan": _mr(ramp, PixelSpacing=["NaN", "NaN"]),
        "spacing_negative": _mr(ramp, PixelSpacing=[-0.5, 0.5]),
        "window_width_zero": _mr(ramp, WindowCenter=500, WindowWidth=0),
        "window_width_nan": _mr(ramp, WindowCenter=500, WindowWidth="NaN"),
        "window_width_negative": _mr(ramp, WindowCenter=500, WindowWidth=-100),
        "rescale_slope_zero": _mr(ramp, RescaleSlope=0, RescaleIntercept=0),
        "rescale_slope_nan": _mr(ramp, RescaleSlope="NaN", RescaleIntercept=0),
        "header_65535": _mr(ramp, Rows=65535, Columns=65535),
        "header_65535_rows": _mr(ramp, Rows=65535),
        "header_8192_square_rgb32": _mr(ramp, Rows=8192, Columns=8192, SamplesPerPixel=3,
                                        BitsAllocated=32, BitsStored=32),
        f"native_{HUGE}": _mr((np.add.outer(np.arange(HUGE), np.arange(HUGE)) % 4096
                               ).astype(np.uint16)),
    }
    for seed in range(6):
        noise = np.random.default_rng(seed).integers(0, 256, 2000 + 1500 * seed, np.uint8)
        prefix = b"\xff\x4f\xff\x51" if seed % 2 else b""
        ds = _mr(np.zeros((64, 64), np.uint16), PixelData=encapsulate([prefix + noise.tobytes()]))
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        datasets[f"garbage_jpeg2000_{seed}"] = ds
    rle = _mr(ramp)
    rle.compress(RLELossless)
    rle.PixelData = rle.PixelData[: len(rle.PixelData) // 2]
    datasets["rle_cut_fragment"] = rle
    return datasets


def made_files(folder: Path) -> dict[str, Path]:
    """Files with contradicting or extreme headers and non-DICOM content named ``.dcm``."""
    rng = np.random.default_rng(0)
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 13) % 4096
    paths: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the invalid values set on purpose
        for name, ds in _made_datasets(ramp, rng).items():
            paths[name] = folder / f"{name}.dcm"
            ds.save_as(paths[name], enforce_file_format=True)
    gradient = (np.add.outer(np.arange(HUGE), np.arange(HUGE)) % 256).astype(np.uint8)
    for name, fmt, array in (("png_named_dcm", "PNG", ramp.astype(np.uint8)),
                             ("jpeg_named_dcm", "JPEG", ramp.astype(np.uint8)),
                             (f"png_{HUGE}", "PNG", gradient), (f"jpeg_{HUGE}", "JPEG", gradient)):
        paths[name] = folder / (f"{name}.dcm" if "named" in name else f"{name}.{fmt.lower()}")
        Image.fromarray(array).save(paths[name], format=fmt)
    paths["text_named_dcm"] = folder / "text_named_dcm.dcm"
    paths["text_named_dcm"].write_text("exported by PACS\n" * 10)
    paths["empty"] = folder / "empty.dcm"
    paths["empty"].write_bytes(b"")
    return paths


# ---------------------------------------------------------------- reading in a child

def read_one(path: Path) -> str:
    """Read ``path`` as lumbardx reads one file; returns the outcome (module docstring), or
    ``contained`` for an InputError that reports a failed decoder process (a crash, time-out or
    out-of-memory that would have ended the reader without isolation)."""
    from lumbardx.data.dicom import number_of_frames, read_dicom, read_header
    from lumbardx.data.errors import InputError
    from lumbardx.data.images import read_image

    try:
        try:
            frames = number_of_frames(read_header(path))
        except InputError:
            frames = 1
        if frames > 1:
            read_dicom(path, frame=frames // 2)
        else:
            read_image(path)
        return "image"
    except InputError as exc:
        if "\n" in exc.problem:
            return "other_exception"
        return "contained" if "could not be decoded (decoder" in exc.problem else "input_error"
    except Exception:  # noqa: BLE001 - what this benchmark counts
        return "other_exception"


def worker(list_file: Path, start: int) -> None:
    """Child: read the files of ``list_file`` from ``start``, printing ``begin i`` and
    ``end i outcome`` lines."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    files = json.loads(list_file.read_text())
    for i in range(start, len(files)):
        print(f"begin {i}", flush=True)
        print(f"end {i} {read_one(Path(files[i]))}", flush=True)


def run_corpus(files: list[Path], timeout_s: float) -> list[str]:
    """The outcome of each file, read in child processes (module docstring)."""
    outcomes: list[str] = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump([str(p) for p in files], fh)
    list_file = Path(fh.name)
    try:
        while len(outcomes) < len(files):
            outcomes.extend(_run_child(list_file, len(outcomes), len(files), timeout_s))
    finally:
        list_file.unlink()
    return outcomes


def _run_child(list_file: Path, start: int, total: int, timeout_s: float) -> list[str]:
    """Outcomes from one child run starting at file ``start``; it ends at the last file, or
    with ``crash`` / ``timeout`` for the file the child was on."""
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(list_file), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    lines: list[str] = []

    def collect() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)  # noqa: PERF402 - one by one: the main thread watches progress

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    done: list[str] = []
    began = time.monotonic()
    while True:
        reader.join(0.2)
        ended = [line.split() for line in lines if line.startswith("end ")]
        if len(ended) > len(done):
            done = [parts[2] for parts in ended]
            began = time.monotonic()
        if not reader.is_alive():
            proc.wait()
            if start + len(done) < total:  # died on a file
                done.append("crash")
            return done
        if time.monotonic() - began > timeout_s:
            proc.kill()
            proc.wait()
            reader.join()
            return [line.split()[2] for line in lines if line.startswith("end ")] + ["timeout"]


# ---------------------------------------------------------------- memory and overhead

_PEAK = """
import json, sys
from lumbardx.data.images import read_image

def status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

before = status_kib("VmRSS")
img = read_image(sys.argv[1])
print(json.dumps({"peak_growth_mb": round((status_kib("VmHWM") - before) / 1024, 1),
                  "shape": list(img.pixels.shape)}))
"""


def peak_memory(path: Path, timeout_s: float = 600.0) -> dict[str, Any]:
    """Peak resident memory growth of reading ``path`` in a fresh interpreter (Linux):
    ``VmHWM`` (peak RSS since exec) after, less ``VmRSS`` before; ``ru_maxrss`` would not do,
    Linux carries it over from the forked parent across exec."""
    run = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True,
                         text=True, timeout=timeout_s, check=False)
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1:]}
    return {"file_mb": round(path.stat().st_size / 2**20, 1), **json.loads(run.stdout)}


def decode_overhead(folder: Path, n: int = 15) -> dict[str, Any]:
    """Milliseconds to read an ``n``-slice 512 x 512 16-bit compressed series, in the decoder
    process and in the calling process (module docstring)."""
    from lumbardx.data import dicom
    from lumbardx.data.decode import DecoderProcess

    result: dict[str, Any] = {"slices": n, "shape": [512, 512]}
    rng = np.random.default_rng(0)
    base = np.add.outer(np.arange(512), np.arange(512)).astype(np.int32) * 3
    for syntax in (JPEG2000Lossless, RLELossless):
        paths = []
        for k in range(n):
            noisy = base + rng.integers(0, 60, base.shape) + 40 * k
            ds = _mr((noisy % 4096).astype(np.uint16))
            ds.compress(syntax)
            paths.append(folder / f"series_{syntax.name.replace(' ', '_')}_{k}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        timings: dict[str, list[float]] = {}
        for mode in ("in_process", "decoder_process"):
            original = dicom.run_isolated
            worker = DecoderProcess()
            dicom.run_isolated = (  # type: ignore[assignment]
                (lambda fn, *args: fn(*args)) if mode == "in_process" else worker.call)
            try:
                times = []
                for path in paths + paths:
                    t0 = time.perf_counter()
                    dicom.read_dicom(path)
                    times.append(1000 * (time.perf_counter() - t0))
                timings[mode] = times
            finally:
                dicom.run_isolated = original  # type: ignore[assignment]
                worker.close()
        inside, child = timings["in_process"], timings["decoder_process"]
        result[syntax.name] = {
            "in_process_ms_per_slice": round(statistics.median(inside[1:]), 2),
            "decoder_process_ms_per_slice": round(statistics.median(child[1:]), 2),
            "decoder_process_first_slice_ms": round(child[0], 1),
            "first_series_total_ms": {"in_process": round(sum(inside[:n]), 1),
                                      "decoder_process": round(sum(child[:n]), 1)},
        }
    return result


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/hostile_corpus.json"))
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds one file may take before it counts as a timeout")
    ap.add_argument("--worker", nargs=2, metavar=("LIST", "START"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]))
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        groups: dict[str, dict[str, Path]] = {
            "pydicom": {p.name: p for p in pydicom_files()},
            "mutation": mutations(folder),
            "made": made_files(folder),
        }
        names = [(g, name) for g, files in groups.items() for name in files]
        raw = run_corpus([groups[g][name] for g, name in names], args.timeout)
        contained = [f"{g}/{name}" for (g, name), o in zip(names, raw) if o == "contained"]
        outcomes = ["input_error" if o == "contained" else o for o in raw]
        by_group: dict[str, Counter[str]] = {g: Counter() for g in groups}
        per_file: dict[str, str] = {}
        for (g, name), outcome in zip(names, outcomes):
            by_group[g][outcome] += 1
            per_file[f"{g}/{name}"] = outcome
        largest = {name: peak_memory(groups["made"][name])
                   for name in (f"native_{HUGE}", f"png_{HUGE}", f"jpeg_{HUGE}")}
        overhead = decode_overhead(folder)
    total = Counter(outcomes)
    result = {
        "files": len(outcomes),
        "outcomes": {k: total.get(k, 0) for k in OUTCOMES},
        "by_group": {g: {k: c.get(k, 0) for k in OUTCOMES} for g, c in by_group.items()},
        "not_clean": {k: v for k, v in per_file.items() if v not in ("image", "input_error")},
        "input_errors_from_a_failed_decoder_process": contained,
        "made_files": {k.split("/", 1)[1]: v for k, v in per_file.items()
                       if k.startswith("made/")},
        "largest_inputs_peak_memory": largest,
        "compressed_decode_overhead": overhead,
        "pydicom": pydicom.__version__,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"{len(outcomes)} files: " + ", ".join(f"{k} {total.get(k, 0)}" for k in OUTCOMES)
          + f"; {len(contained)} of the input errors from a failed decoder process")
    for name, peak in largest.items():
        print(f"{name}: {peak}")
    print(json.dumps(overhead))
    return 0 if not result["not_clean"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
