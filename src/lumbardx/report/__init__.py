"""Outputs of a diagnosed study for people: overlay image, findings.json, HTML and PDF reports.

>>> paths = write_study_outputs(study, Path("results/case_001"))  # doctest: +SKIP
>>> sorted(paths)  # doctest: +SKIP
['findings', 'overlay', 'report_html', 'report_pdf']
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lumbardx.report.html import render_html_report, write_html_report
from lumbardx.report.overlay import (class_colours, render_overlay, write_bytes_atomic,
                                     write_overlay)
from lumbardx.report.pdf import build_report_pages, write_pdf_report

if TYPE_CHECKING:
    from lumbardx.study import Study

#: File names written by :func:`write_study_outputs`, by output key.
OUTPUT_NAMES: dict[str, str] = {"overlay": "overlay.png", "findings": "findings.json",
                                "report_html": "report.html", "report_pdf": "report.pdf"}


def write_findings_json(study: Study, path: str | Path) -> Path:
    """Write ``study.to_dict()`` (the ``findings.json`` schema of :mod:`lumbardx.study`) as
    indented UTF-8 JSON, atomically."""
    text = json.dumps(study.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_study_outputs(study: Study, out_dir: str | Path, *, analysed_at: datetime | None = None,
                        training_data: str | None = None, pdf: bool = True) -> dict[str, Path]:
    """Write ``overlay.png``, ``findings.json``, ``report.html`` and (with ``pdf``)
    ``report.pdf`` into ``out_dir`` (created when missing), each atomically.

    The overlay's drawing time is recorded as ``study.timings_ms["overlay"]`` (unless the caller
    set it) before ``findings.json`` and the reports are written, and ``study.outputs`` gets the
    written paths.

    Returns:
        Output key (:data:`OUTPUT_NAMES`) -> path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in OUTPUT_NAMES.items() if pdf or k != "report_pdf"}
    t0 = time.perf_counter()
    write_overlay(study, paths["overlay"])
    study.timings_ms.setdefault("overlay", (time.perf_counter() - t0) * 1000.0)
    write_findings_json(study, paths["findings"])
    when = analysed_at or datetime.now()
    write_html_report(study, paths["report_html"], paths["overlay"], analysed_at=when,
                      training_data=training_data)
    if pdf:
        write_pdf_report(study, paths["report_pdf"], paths["overlay"], analysed_at=when,
                         training_data=training_data)
    study.outputs.update(paths)
    return paths


__all__ = ["OUTPUT_NAMES", "build_report_pages", "class_colours", "render_html_report",
           "render_overlay", "write_bytes_atomic", "write_findings_json", "write_html_report",
           "write_overlay", "write_pdf_report", "write_study_outputs"]
