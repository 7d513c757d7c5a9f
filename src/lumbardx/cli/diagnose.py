"""``lumbardx diagnose``: diagnose studies and write overlay, findings.json, reports and DICOM.

Which studies a PATH holds (the rule printed in ``--help``):

* an image file (PNG / JPEG) or a DICOM file: one study;
* a folder holding DICOM files directly: one study (its best sagittal series is used);
* any other folder: when every DICOM file found in its subfolders belongs to one study (same
  Study Instance UID, e.g. a PACS export ``STUDY/SERIES/IM*``) and it holds no loose PNG /
  JPEG, it is one study; otherwise it is a folder of studies -- each subfolder is a study and
  each loose PNG / JPEG file is a study (other files are ignored).

A study that fails (unreadable file, no sagittal series, CT...) is reported with the file and
the reason and the batch goes on. Exit code: 0 all studies diagnosed, 1 any failed, 2 nothing
to do (no study found).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lumbardx.data.errors import InputError, LumbardxError

log = logging.getLogger(__name__)

HELP_PATHS = (
    "Image file (PNG/JPEG), DICOM file, DICOM study folder, or folder of studies. A folder "
    "holding DICOM files, or whose DICOM files all belong to one study (same Study Instance "
    "UID), is one study; any other folder holds studies: each subfolder and each loose "
    "PNG/JPEG file is a study.")


@dataclass
class Discovery:
    """Studies found under the PATHs: ``studies`` to diagnose, ``problems`` (path, reason)
    for PATHs that hold none."""

    studies: list[Path] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _kind(path: Path) -> str | None:
    from lumbardx.data.images import sniff_kind

    try:
        return sniff_kind(path)
    except InputError:
        return None


def _first_dicom(folder: Path) -> Path | None:
    """The first DICOM file under ``folder`` (depth first, names sorted, hidden skipped)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            if _kind(Path(root) / name) == "dicom":
                return Path(root) / name
    return None


def _study_uid(path: Path) -> str | None:
    from lumbardx.data.dicom import read_header

    try:
        return str(read_header(path).get("StudyInstanceUID", "")) or None
    except InputError:
        return None


def discover(paths: list[Path]) -> Discovery:
    """Expand PATHs into studies (rule in the module docstring)."""
    found = Discovery()
    for path in paths:
        if not path.exists():
            found.problems.append((path, "does not exist"))
            continue
        if path.is_file():
            found.studies.append(path)
            continue
        entries = _visible(path)
        files = [p for p in entries if p.is_file()]
        if not entries:
            found.problems.append((path, "folder is empty (no files)"))
            continue
        kinds = {p: _kind(p) for p in files}
        if any(k == "dicom" for k in kinds.values()):
            found.studies.append(path)
            continue
        images = [p for p in files if kinds[p] in ("png", "jpeg")]
        subfolders = [p for p in entries if p.is_dir()]
        firsts = [f for f in (_first_dicom(d) for d in subfolders) if f is not None]
        uids = {_study_uid(f) for f in firsts}
        if not images and firsts and len(uids) == 1 and None not in uids:
            found.studies.append(path)  # one study exported as STUDY/SERIES/...
            continue
        if not images and not subfolders:
            found.problems.append((path, "holds no image, DICOM file or study folder"))
            continue
        found.studies.extend(sorted([*subfolders, *images]))
    return found


def output_folder(out: Path, source: Path, study_key: str) -> Path:
    """``OUT/<input name>-<study_key[:8]>`` (input name: file stem or folder name, with
    characters other than letters, digits, ``._-`` replaced by ``_``)."""
    name = source.stem if source.is_file() else source.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"
    return out / f"{name}-{study_key[:8]}"


def findings_text(study: object) -> str:
    """Abnormal findings by level, e.g. ``"L4-L5 herniation 0.91; L5-S1 spondylolisthesis
    0.80 (grade I)"``; ``"no abnormal finding"`` when all discs are normal; ``"no disc
    detected: check the image"`` when there is none (the study cannot be called normal)."""
    if not study.findings.discs:  # type: ignore[attr-defined]
        return "no disc detected: check the image"
    parts = []
    for d in study.findings.discs:  # type: ignore[attr-defined]
        for f in d.findings:
            if f.label == "normal":
                continue
            level = d.level + ("?" if d.level_uncertain else "")
            score = "" if f.score is None else f" {f.score:.2f}"
            extra = ""
            if f.label == "spondylolisthesis" and d.meyerding_grade:
                extra = f" (grade {d.meyerding_grade})"
            elif f.label == "herniation" and d.herniation_extent_mm is not None:
                extra = f" ({d.herniation_extent_mm:.1f} mm)"
            parts.append(f"{level} {f.label}{score}{extra}")
    return "; ".join(parts) if parts else "no abnormal finding"


def _write_summary(out: Path, rows: list[dict[str, str]]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["input", "status", "folder", "discs", "findings",
                                     "time_s", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def diagnose(
    paths: list[Path] = typer.Argument(..., help=HELP_PATHS, show_default=False),
    out: Path = typer.Option(Path("lumbardx-out"), "--out", help="Output folder; one "
                             "subfolder per study: OUT/<input name>-<study key>/."),
    weights: Path | None = typer.Option(None, "--weights", help="Trained checkpoint (.pt) or "
                                        "ONNX export; default: the shipped weights."),
    model: str = typer.Option("default", "--model", help="default|best|single (shipped "
                              "weights)."),
    single_slice_weights: Path | None = typer.Option(
        None, "--single-slice-weights", help="For a model trained on T1+T2 pairs: the model "
        "for images and studies without a pair (default: the shipped single-slice model with "
        "shipped weights, else the pair model alone)."),
    segments_weights: Path | None = typer.Option(
        None, "--segments-weights", help="Segment reader weights (per-level probabilities, "
        "slip call and measurement, level check); default: the shipped reader with shipped "
        "weights."),
    segments: bool = typer.Option(True, "--segments/--no-segments", help="Read every motion "
                                  "segment with the segment reader."),
    classes: str = typer.Option("study", "--classes", help="study (normal, herniation, "
                                "spondylolisthesis) or all (also stenosis and disc "
                                "degeneration as findings)."),
    backend: str = typer.Option("auto", "--backend", help="auto|torch|onnx."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1..."),
    dicom_outputs: bool = typer.Option(True, "--dicom-outputs/--no-dicom-outputs",
                                       help="For DICOM input, also write SR (TID 1500) and a "
                                       "Secondary Capture of the overlay."),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Write report.pdf."),
) -> None:
    """Find discs, disc herniation and spondylolisthesis on sagittal lumbar MRI studies.

    Decision support for research and teaching; not a diagnosis.
    """
    from lumbardx.diagnosis import Diagnoser, Result, write_outputs

    console = Console()
    found = discover(list(paths))
    for path, reason in found.problems:
        console.print(f"[red]failed[/red] {path}: {reason}")
    if not found.studies:
        console.print("nothing to do: no study found in the paths given")
        raise typer.Exit(2)
    if classes not in ("study", "all"):
        console.print(f"[red]--classes {classes!r}:[/red] use study or all")
        raise typer.Exit(2)
    try:
        dx = Diagnoser(weights, model=model, backend=backend, device=device,
                       single_slice=single_slice_weights,
                       segments=(segments_weights if segments_weights is not None else None)
                       if segments else False,
                       extra_findings=classes == "all")
    except (LumbardxError, ValueError) as exc:
        console.print(f"[red]cannot load the model:[/red] {exc}")
        raise typer.Exit(1) from None
    dx.warmup()
    console.print(f"model {dx.info.name} ({dx.info.version}; {dx.info.backend}), "
                  f"{len(found.studies)} stud{'y' if len(found.studies) == 1 else 'ies'}")
    if dx.info.reads_pairs:
        alone = (f"{dx.single_slice.info.name} ({dx.single_slice.info.version})"
                 if dx.single_slice is not None else "the same model, less accurate")
        console.print(f"reads T1 and T2 together; slices without a pair: {alone}")
    if dx.segments is not None:
        console.print(f"segment reader {dx.segments.summary['version']}")

    results: list[tuple[Result, Path | None]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=len(found.studies) < 2) as bar:
        task = bar.add_task("diagnosing", total=len(found.studies))
        for res in dx.diagnose_many(found.studies):
            folder = None
            if res.study is not None:
                folder = output_folder(out, res.path, res.study.study_key)
                try:
                    write_outputs(res.study, folder, dicom=dicom_outputs, pdf=pdf)
                except (LumbardxError, OSError, ValueError) as exc:
                    log.exception("%s: writing outputs failed", res.path)
                    res = Result(res.path, error=InputError(folder, f"writing outputs failed: "
                                                                    f"{exc}"))
                    folder = None
            if res.error is not None:
                where = getattr(res.error, "path", None) or res.path
                bar.console.print(f"[red]failed[/red] {where}: {res.reason}")
            results.append((res, folder))
            bar.advance(task)

    table = Table(title=f"lumbardx diagnose -> {out}")
    for col in ("study", "discs", "findings by level", "time (s)"):
        table.add_column(col, overflow="fold")
    rows = [{"input": str(p), "status": "failed", "folder": "", "discs": "", "findings": "",
             "time_s": "", "reason": r} for p, r in found.problems]
    for p, r in found.problems:
        table.add_row(p.name or str(p), "-", f"[red]failed: {r}[/red]", "-")
    for res, folder in results:
        if res.study is None:
            table.add_row(res.path.name, "-", f"[red]failed: {res.reason}[/red]", "-")
            rows.append({"input": str(res.path), "status": "failed", "folder": "", "discs": "",
                         "findings": "", "time_s": "", "reason": res.reason})
            continue
        secs = sum(res.study.timings_ms.values()) / 1000.0
        text = findings_text(res.study)
        table.add_row(str(folder.name if folder else res.path.name),
                      str(len(res.study.findings.discs)), text, f"{secs:.2f}")
        rows.append({"input": str(res.path), "status": "ok", "folder": str(folder),
                     "discs": str(len(res.study.findings.discs)), "findings": text,
                     "time_s": f"{secs:.3f}", "reason": ""})
    console.print(table)
    summary = _write_summary(out, rows)
    failed = sum(r["status"] == "failed" for r in rows)
    console.print(f"{len(rows) - failed} diagnosed, {failed} failed; summary: {summary}")
    raise typer.Exit(1 if failed else 0)
