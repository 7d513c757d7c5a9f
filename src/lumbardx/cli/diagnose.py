"""``lumbardx diagnose``: diagnose studies and write overlay, findings.json, reports and DICOM.

Which studies a PATH holds (the rule printed in ``--help``):

* an image file (PNG / JPEG) or a DICOM file: one study;
* a folder holding DICOM files directly: one study (its best sagittal series is used);
* any other folder: when every DICOM file found in its subfolders belongs to one study (same
  Study Instance UID, e.g. a PACS export ``STUDY/SERIES/IM*``) and it holds no loose PNG /
  JPEG, it is one study; otherwise it is a folder of studies -- each subfolder is a study and
  each loose PNG / JPEG file is a study. A loose file named like an image or a DICOM file
  (:data:`STUDY_SUFFIXES`) whose content is none of them is a study too, so that it fails
  with the reason instead of vanishing from the batch; other files are ignored.

A study that fails (unreadable file, no sagittal series, CT...) is reported with the file and
the reason and the batch goes on. Exit code: 0 all studies diagnosed (a study skipped as done
earlier counts as diagnosed), 1 any failed, 2 nothing to do (no study found).

Resuming. A batch may be killed at any point (even ``SIGKILL``) and run again with the same
arguments; it then skips the studies already done and diagnoses the rest:

* each study's outputs are written into a hidden sibling ``OUT/.<name>.partial-<pid>``, ending
  with ``complete.json`` (the resolved input path, its :func:`fingerprint`, the
  :func:`output_options` and the output file names), and the folder is renamed to
  ``OUT/<name>`` only then (an earlier folder of the same name is renamed aside, the new one
  renamed in, the old one deleted: :func:`lumbardx.stages.outputs.publish_outputs`); a visible
  study folder is therefore always complete;
* at the start the work folders left by a killed run are deleted, and ``OUT/*/complete.json``
  is read and indexed by input path (the output folder's name holds the study key, which is
  only known after reading the study); a study whose record has the same fingerprint and
  options, with all its files present, is skipped and its summary row says ``done earlier
  (complete.json)``; otherwise it is diagnosed again and its earlier folder replaced. A failed
  study has no record, so it is tried again. ``--redo`` diagnoses every study again;
* ``OUT/summary.csv`` is rewritten atomically after every study, so a killed run leaves a valid
  summary of what it did.

Two runs must not write into the same OUT at the same time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lumbardx.data.errors import InputError, LumbardxError

if TYPE_CHECKING:
    from lumbardx.diagnosis import Diagnoser, Result
    from lumbardx.study import ModelInfo

log = logging.getLogger(__name__)

HELP_PATHS = (
    "Image file (PNG/JPEG), DICOM file, DICOM study folder, or folder of studies. A folder "
    "holding DICOM files, or whose DICOM files all belong to one study (same Study Instance "
    "UID), is one study; any other folder holds studies: each subfolder and each loose "
    "PNG/JPEG file is a study (a loose file named .png/.jpg/.dcm that is none of them fails "
    "with the reason).")


#: Suffixes of files that are meant to be read: in a folder of studies such a file is a study
#: even when its content is not PNG, JPEG or DICOM (it then fails with the reason).
STUDY_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".ima"})


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
        unreadable = [p for p in files
                      if kinds[p] is None and p.suffix.lower() in STUDY_SUFFIXES]
        subfolders = [p for p in entries if p.is_dir()]
        firsts = [f for f in (_first_dicom(d) for d in subfolders) if f is not None]
        uids = {_study_uid(f) for f in firsts}
        if not images and not unreadable and firsts and len(uids) == 1 and None not in uids:
            found.studies.append(path)  # one study exported as STUDY/SERIES/...
            continue
        if not images and not unreadable and not subfolders:
            found.problems.append((path, "holds no image, DICOM file or study folder"))
            continue
        found.studies.extend(sorted([*subfolders, *images, *unreadable]))
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


def fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input's content without reading it, to tell whether a study finished
    earlier must be redone: for a file its size and ``mtime_ns``; for a folder the number of
    its files and a sha256 of their sorted (relative path, size, ``mtime_ns``)."""
    if path.is_file():
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entries = []
    for root, _, names in os.walk(path):
        for name in names:
            file = Path(root) / name
            if not file.is_file():  # a broken link or a socket: not part of the study
                continue
            st = file.stat()
            entries.append((file.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    digest = hashlib.sha256(json.dumps(sorted(entries)).encode("utf-8")).hexdigest()
    return {"files": len(entries), "sha256": digest}


def _model_identity(info: ModelInfo) -> dict[str, Any]:
    """The fields of a loaded detector that decide what it finds."""
    return {"name": info.name, "version": info.version, "weights_sha256": info.weights_sha256,
            "backend": info.backend}


def output_options(dx: Diagnoser, classes: str, dicom_outputs: bool,
                   pdf: bool) -> dict[str, Any]:
    """The settings that change a study's outputs (models and their backend, segment reader,
    ``--classes``, ``--dicom-outputs``, ``--pdf``), as stored in ``complete.json`` (a JSON
    round trip, so that the stored and the current settings compare equal)."""
    options = {
        "model": _model_identity(dx.info),
        "single_slice": None if dx.single_slice is None else
        _model_identity(dx.single_slice.info),
        "segments": None if dx.segments is None else dx.segments.summary,
        "classes": classes, "dicom_outputs": dicom_outputs, "pdf": pdf}
    return json.loads(json.dumps(options))


@dataclass
class Finished:
    """An output folder that an earlier run completed: the folder and its ``complete.json``."""

    folder: Path
    record: dict[str, Any]

    def matches(self, fingerprint: dict[str, Any], options: dict[str, Any]) -> bool:
        """Whether it was made from this input content with these options and all its files
        are still there."""
        files = self.record.get("files")
        return (self.record.get("fingerprint") == fingerprint
                and self.record.get("options") == options and isinstance(files, list)
                and all((self.folder / str(f)).is_file() for f in files))


def input_key(path: Path) -> str:
    """How ``complete.json`` names its input: the resolved path."""
    return str(path.resolve())


def finished_folders(out: Path) -> dict[str, list[Finished]]:
    """The completed output folders in ``out`` (``OUT/*/complete.json``, hidden folders
    skipped), by :func:`input_key`; an unreadable record counts as not finished."""
    from lumbardx.stages.outputs import COMPLETE_RECORD

    found: dict[str, list[Finished]] = {}
    for path in sorted(out.glob(f"*/{COMPLETE_RECORD}")):
        if path.parent.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("input"), str):
            found.setdefault(record["input"], []).append(Finished(path.parent, record))
    return found


SUMMARY_COLUMNS = ["input", "status", "folder", "discs", "findings", "time_s", "reason"]


def _ok_row(path: Path, folder: Path, discs: object, findings: object, time_s: str,
            reason: str = "") -> dict[str, str]:
    """The summary row of a study diagnosed now (``time_s`` its pipeline time) or earlier
    (``reason`` saying so)."""
    return {"input": str(path), "status": "ok", "folder": str(folder), "discs": str(discs),
            "findings": str(findings), "time_s": time_s, "reason": reason}


def _failed_row(path: Path, reason: str) -> dict[str, str]:
    """The summary row of an input that failed, with the reason."""
    return {"input": str(path), "status": "failed", "folder": "", "discs": "", "findings": "",
            "time_s": "", "reason": reason}


def _failure(res: Result) -> str:
    """Why ``res`` failed, naming the file inside a study folder when that is where."""
    where = getattr(res.error, "path", None)
    if where is None or Path(where) == res.path:
        return res.reason
    return f"{where}: {res.reason}"


@dataclass
class Batch:
    """What decides, per study, whether an earlier run finished it, and writes the others.

    Attributes:
        out: the output folder.
        options: :func:`output_options` of this run.
        fingerprints: :func:`fingerprint` of every study, taken before diagnosing (a study
            changed while diagnosed is redone next time).
        finished: :func:`finished_folders` of ``out`` at the start.
        dicom, pdf: ``--dicom-outputs``, ``--pdf``.
    """

    out: Path
    options: dict[str, Any]
    fingerprints: dict[Path, dict[str, Any]]
    finished: dict[str, list[Finished]]
    dicom: bool
    pdf: bool

    def done_earlier(self, study: Path) -> dict[str, str] | None:
        """The summary row of ``study`` when an earlier run finished it from the same input
        content with the same options (its other folders are then deleted), else ``None``."""
        from lumbardx.stages.outputs import COMPLETE_RECORD

        earlier = self.finished.get(input_key(study), [])
        done = next((f for f in earlier if f.matches(self.fingerprints[study], self.options)),
                    None)
        if done is None:
            return None
        self._discard_others(study, done.folder)
        return _ok_row(study, done.folder, done.record.get("discs", ""),
                       done.record.get("findings", ""), "", f"done earlier ({COMPLETE_RECORD})")

    def settle(self, res: Result) -> dict[str, str]:
        """Publish a diagnosed study's folder (:func:`~lumbardx.stages.outputs.publish_outputs`,
        then delete the input's other folders) and return its summary row; the failed row
        when diagnosing or writing failed."""
        from lumbardx.diagnosis import Result
        from lumbardx.stages.outputs import publish_outputs

        if res.study is not None:
            folder = output_folder(self.out, res.path, res.study.study_key)
            text = findings_text(res.study)
            discs = len(res.study.findings.discs)
            record = {"input": input_key(res.path), "fingerprint": self.fingerprints[res.path],
                      "options": self.options, "discs": discs, "findings": text}
            try:
                publish_outputs(res.study, folder, record, dicom=self.dicom, pdf=self.pdf)
            except (LumbardxError, OSError, ValueError) as exc:
                log.exception("%s: writing outputs failed", res.path)
                res = Result(res.path, error=InputError(folder, f"writing outputs failed: "
                                                                f"{exc}"))
            else:
                self._discard_others(res.path, folder)
                secs = sum(res.study.timings_ms.values()) / 1000.0
                return _ok_row(res.path, folder, discs, text, f"{secs:.3f}")
        return _failed_row(res.path, _failure(res))

    def _discard_others(self, study: Path, keep: Path) -> None:
        """Delete the output folders of ``study`` other than ``keep`` (made with an earlier
        study key, or left by a run killed between publishing a new folder and deleting the
        old one)."""
        from lumbardx.stages.outputs import discard_folder

        for f in self.finished.get(input_key(study), []):
            if f.folder != keep and f.folder.exists():
                discard_folder(f.folder)


def write_summary(out: Path, rows: list[dict[str, str]]) -> Path:
    """Write ``OUT/summary.csv`` (:data:`SUMMARY_COLUMNS`, one row per input) atomically, so
    that a run killed at any point leaves a valid summary of what it did."""
    from lumbardx.io import atomic_write_text

    text = StringIO()
    writer = csv.DictWriter(text, SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out / "summary.csv", text.getvalue())


def _print_table(console: Console, out: Path, rows: list[dict[str, str]]) -> None:
    """The summary rows as a terminal table: study folder, discs, findings, time."""
    table = Table(title=f"lumbardx diagnose -> {out}")
    for col in ("study", "discs", "findings by level", "time (s)"):
        table.add_column(col, overflow="fold")
    for row in rows:
        if row["status"] == "failed":
            table.add_row(Path(row["input"]).name or row["input"], "-",
                          f"[red]failed: {row['reason']}[/red]", "-")
        else:
            note = f" [dim]({row['reason']})[/dim]" if row["reason"] else ""
            table.add_row(Path(row["folder"]).name, row["discs"], row["findings"] + note,
                          row["time_s"] or "-")
    console.print(table)


def diagnose(
    paths: list[Path] = typer.Argument(..., help=HELP_PATHS, show_default=False),
    out: Path = typer.Option(Path("lumbardx-out"), "--out", help="Output folder; one "
                             "subfolder per study: OUT/<input name>-<study key>/, ending with "
                             "complete.json; OUT/summary.csv, one row per input."),
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
    redo: bool = typer.Option(False, "--redo", help="Diagnose every study again. Without "
                              "it, a batch run again (e.g. after being killed) skips the "
                              "studies finished earlier into OUT from the same input content "
                              "with the same options (their complete.json) and diagnoses the "
                              "rest."),
) -> None:
    """Find discs, disc herniation and spondylolisthesis on sagittal lumbar MRI studies.

    A batch can be stopped at any point and run again with the same arguments: the studies
    finished earlier into OUT (same input content and options) are skipped, the rest are
    diagnosed; --redo diagnoses them all. A study's folder appears complete or not at all.
    Exit code: 0 all studies diagnosed (or done earlier), 1 any failed, 2 nothing to do.

    Decision support for research and teaching; not a diagnosis.
    """
    from lumbardx.diagnosis import Diagnoser
    from lumbardx.stages.outputs import remove_work_folders

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
    console.print(f"model {dx.info.name} ({dx.info.version}; {dx.info.backend}), "
                  f"{len(found.studies)} stud{'y' if len(found.studies) == 1 else 'ies'}")
    if dx.info.reads_pairs:
        alone = (f"{dx.single_slice.info.name} ({dx.single_slice.info.version})"
                 if dx.single_slice is not None else "the same model, less accurate")
        console.print(f"reads T1 and T2 together; slices without a pair: {alone}")
    if dx.segments is not None:
        console.print(f"segment reader {dx.segments.summary['version']}")

    stale = remove_work_folders(out)
    if stale:
        console.print(f"removed {len(stale)} unfinished output folder(s) of an interrupted run")
    batch = Batch(out, output_options(dx, classes, dicom_outputs, pdf),
                  {s: fingerprint(s) for s in found.studies}, finished_folders(out),
                  dicom_outputs, pdf)
    rows: dict[Path, dict[str, str]] = {}
    if not redo:
        for study in found.studies:
            row = batch.done_earlier(study)
            if row is not None:
                rows[study] = row
        if rows:
            console.print(f"{len(rows)} done earlier in {out}, skipped (--redo to redo them)")
    todo = [s for s in found.studies if s not in rows]

    def summary_rows() -> list[dict[str, str]]:
        return ([_failed_row(p, r) for p, r in found.problems]
                + [rows[s] for s in found.studies if s in rows])

    if todo:
        dx.warmup()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=len(todo) < 2) as bar:
        task = bar.add_task("diagnosing", total=len(todo))
        for res in dx.diagnose_many(todo):
            rows[res.path] = row = batch.settle(res)
            if row["status"] == "failed":
                bar.console.print(f"[red]failed[/red] {res.path}: {row['reason']}")
            write_summary(out, summary_rows())
            bar.advance(task)

    final = summary_rows()
    _print_table(console, out, final)
    summary = write_summary(out, final)
    failed = sum(r["status"] == "failed" for r in final)
    console.print(f"{len(final) - failed} diagnosed, {failed} failed; summary: {summary}")
    raise typer.Exit(1 if failed else 0)
