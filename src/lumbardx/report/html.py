"""The study report as one self-contained HTML file (``report.html``), and the report's content.

The file has no external resources and no JavaScript: CSS is inline and the overlay is embedded
as a base64 PNG, so it can be mailed, archived or opened offline. Every piece of text is
escaped with :func:`html.escape`.

Privacy: the report names the study by its de-identified key and the *file name* of the source
(no folder). DICOM header fields are never printed; in addition, any Patient's Name component or
Patient ID found in the header is cut out of the file name and of the warnings
(:func:`redact`), since exported files are often named after the patient.

The content builders here (:func:`finding_rows`, :func:`summary_lines`, :func:`report_warnings`,
:func:`limits`, :func:`header_fields`) are shared with the PDF report.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.multival import MultiValue

from lumbardx import __version__
from lumbardx.clinical.findings import NORMAL, DiscFindings
from lumbardx.clinical.reviewed import NOT_REVIEWED
from lumbardx.data.errors import InputError
from lumbardx.report.overlay import (class_colours, extent_text, level_label, slip_text,
                                     write_bytes_atomic)
from lumbardx.study import detector_calls_evidence

if TYPE_CHECKING:
    from lumbardx.study import ModelInfo, Study

TITLE = "Lumbar spine MRI - decision-support report"
NOT_A_DIAGNOSIS = "Decision support; not a diagnosis."
REDACTED = "[redacted]"
NO_TRAINING_RECORD = "not recorded with these weights (see the model card that came with them)"


@dataclass
class FindingRow:
    """One table row: ``level`` as shown (``"L4-L5?"`` when uncertain), ``status``,
    ``confidence`` (``"0.87"``, or ``"reference"`` for ground-truth boxes), ``other`` findings
    on the disc, ``severity`` estimates (empty when none), ``reader`` the segment reader's
    probabilities of slip, stenosis and degeneration (empty without a reader)."""

    level: str
    uncertain: bool
    status: str
    confidence: str
    other: str
    severity: str
    reader: str = ""


#: The segment reader's probabilities shown per level, with their short names.
READER_SHOWN: tuple[tuple[str, str], ...] = (("spondylolisthesis", "slip"),
                                             ("stenosis", "stenosis"),
                                             ("degeneration", "degeneration"))


def reader_text(disc: DiscFindings) -> str:
    """``"slip 0.12, stenosis 0.71, degeneration 0.30"`` from the segment reader, or ``""``."""
    if not disc.probabilities:
        return ""
    return ", ".join(f"{short} {disc.probabilities[k]:.2f}" for k, short in READER_SHOWN
                     if k in disc.probabilities)


def identifiers(study: Study) -> list[str]:
    """Patient's Name components and Patient ID(s) from the DICOM header (empty without one)."""
    ds = study.image.header
    if ds is None:
        return []
    out: list[str] = []
    name = ds.get("PatientName")
    if name is not None and str(name).strip():
        out.append(str(name))
        out += [c for c in re.split(r"[\^=\s,]+", str(name)) if c]
    for keyword in ("PatientID", "OtherPatientIDs", "PatientBirthName"):
        value = ds.get(keyword)
        if value is None:
            continue
        values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
        out += [str(v) for v in values if str(v).strip()]
    return sorted({x.strip() for x in out if len(x.strip()) >= 2}, key=len, reverse=True)


def redact(text: str, study: Study) -> str:
    """``text`` with every header identifier (:func:`identifiers`) replaced by ``[redacted]``:
    case-insensitive, as a substring when 3+ characters long, as a whole word when 2."""
    for ident in identifiers(study):
        pattern = re.escape(ident) if len(ident) >= 3 else rf"(?<![A-Za-z0-9]){re.escape(ident)}" \
            r"(?![A-Za-z0-9])"
        text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
    return text


def source_name(study: Study) -> str:
    """The source's file (or folder) name without its path (or the study's
    ``source_label``), identifiers redacted."""
    return redact(study.source_label or Path(study.source).name, study)


def patient_id(study: Study) -> str:
    """The DICOM Patient ID, for the report header only (never in logs or file names)."""
    ds = study.image.header
    value = "" if ds is None else str(ds.get("PatientID", "") or "").strip()
    if value:
        return value
    return "not recorded (image file)" if ds is None else "not recorded in the DICOM header"


def review_status(study: Study) -> str:
    """``"not reviewed (...)"`` or who reviewed the findings, when, and what they changed."""
    return NOT_REVIEWED if study.review is None else study.review.status_text()


def review_rows(study: Study) -> list[tuple[str, str, str, str, str]]:
    """``(level, finding, from, reader's action, model score)`` per box of a review, model
    boxes first, then the reader's; empty without a review."""
    if study.review is None:
        return []
    rows = []
    for b in study.review.boxes:
        found = b.label if b.model_label in (None, b.label) else f"{b.label} (model: " \
                                                                  f"{b.model_label})"
        score = b.model_score if b.model_score is not None else b.score
        rows.append((b.level or "-", found, "reader" if b.origin == "reader" else "model",
                     b.what, "-" if b.origin == "reader" or score is None else f"{score:.2f}"))
    return rows


def header_fields(study: Study, analysed_at: datetime | None = None) -> list[tuple[str, str]]:
    """``(label, value)`` pairs of the report header: study key, source, image, date, model."""
    img, m = study.image, study.model
    when = (analysed_at or datetime.now()).astimezone()
    spacing = (f"{img.pixel_spacing[0]:.3g} x {img.pixel_spacing[1]:.3g} mm"
               if img.pixel_spacing is not None else "unknown (no pixel spacing: mm not measured)")
    slice_txt = (f"{study.slice_index + 1} of {study.n_slices}" if study.slice_index is not None
                 else "single image")
    pairs = ", reads T1 and T2 together" if m.reads_pairs else ""
    fields = [
        ("Patient ID", patient_id(study)),
        ("Study key (de-identified)", study.study_key),
        ("Source", source_name(study)),
        ("Review", review_status(study)),
        ("Image", f"{img.width} x {img.height} px, {img.kind.upper()}, pixel spacing {spacing}"),
        ("Slice analysed", slice_txt),
    ]
    if study.partner_series:
        fields.append(("Read together with",
                       f"the same slice of {redact(study.partner_series, study)}"))
    return fields + [
        ("Date of analysis", when.strftime("%Y-%m-%d %H:%M %Z").strip()),
        ("Model", f"{m.name} ({m.backend}, input {m.image_size} px{pairs}), weights {m.version}"),
        ("Weights SHA-256", m.weights_sha256 or "none (model held in memory)"),
        ("Software", f"lumbardx {__version__}"),
    ]


def _confidence(score: float | None, reviewed: bool = False) -> str:
    if score is None:
        return "reader's call" if reviewed else "reference"
    return f"{score:.2f}"


def confidence_note(study: Study) -> str:
    """What the "Confidence" column means for this study's models (the detector's score; the
    segment reader's calibrated probability for what it calls; the stacked regression's
    probability for herniation and spondylolisthesis when it calls them)."""
    reader = study.segment_reader or {}
    if not reader:
        return ("Confidence is the detector's score for the status (0-1), not a probability of "
                "disease.")
    by_reader = "stenosis and degeneration"
    if reader.get("slip_call") == "reader" and reader.get("disc_call") != "stacked":
        by_reader = "spondylolisthesis, " + by_reader
    note = ("Confidence is the detector's score for the status (0-1), not a probability of "
            f"disease; for {by_reader} it is the segment reader's calibrated probability")
    if reader.get("disc_call") == "stacked":
        note += ("; for herniation and spondylolisthesis it is the probability of a regression "
                 "on the detector's scores and the segment reader's reading together")
    return note + "."


def finding_rows(study: Study) -> list[FindingRow]:
    """One row per disc, top to bottom (severity in long form, see :mod:`.overlay`)."""
    rows = []
    reviewed = study.review is not None
    for d in study.findings.discs:
        others = [f"{f.label} ({_confidence(f.score, reviewed)})" for f in d.findings
                  if f.label != d.status and f.label != NORMAL]
        sev = [t for t in (slip_text(d, long=True), extent_text(d, long=True)) if t]
        rows.append(FindingRow(level_label(d), d.level_uncertain, d.status,
                               _confidence(d.confidence, reviewed), ", ".join(others),
                               "; ".join(sev), reader_text(d)))
    return rows


def summary_lines(study: Study) -> list[str]:
    """Plain sentences summarising the findings of the analysed slice."""
    discs = study.findings.discs
    if not discs:
        return ["No discs were detected on the analysed slice: check that it is a sagittal "
                "lumbar spine MRI; the detector may have failed."]
    out = []
    for d in discs:
        if d.status == NORMAL and len(d.findings) <= 1:
            continue
        what = [f.label for f in d.findings if f.label != NORMAL]
        sev = [t for t in (slip_text(d, long=True), extent_text(d, long=True)) if t]
        line = f"{level_label(d)}: {' and '.join(what)}"
        if sev:
            line += f" - {'; '.join(sev)} (estimate)"
        out.append(line)
    if not out:
        out.append(f"All {len(discs)} discs detected were called normal on this slice.")
    return out


def report_warnings(study: Study) -> list[str]:
    """The study's warnings plus what the level naming and grouping set aside, redacted."""
    f = study.findings
    out = list(study.warnings)
    reasons = list(f.level_reasons)
    if f.discs and not f.sacrum_recognised:
        out.append(f"Level names uncertain: the sacrum was not recognised ({f.sacrum_reason}); "
                   "levels are counted up from the lowest disc found, as if it were L5-S1.")
        reasons = [r for r in reasons if "sacrum" not in r.lower()]  # said just above
    out += [f"Level naming: {r}" for r in reasons]
    if f.missing_levels:
        out.append("Discs presumed missed (gap along the spine): " + ", ".join(f.missing_levels))
    if f.off_spine:
        out.append(f"{len(f.off_spine)} box(es) set aside as lying off the spine curve "
                   "(dashed on the overlay).")
    return [redact(w, study) for w in dict.fromkeys(out)]


SEGMENT_METHOD = (
    "Segment reader: each motion segment (vertebra, disc, vertebra) is resampled along the "
    "spine from the T1 and T2 slices and read with its neighbours; it reports at each level "
    "the calibrated probability of spondylolisthesis, canal stenosis and disc degeneration "
    "(presence, not grade) and checks that the lowest disc looks like L5-S1.")


def limits(study: Study, training_data: str | None = None) -> list[str]:
    """The method-and-limits statements printed in every report."""
    m = study.model
    trained = training_data or getattr(m, "training_data", None) or NO_TRAINING_RECORD
    return [
        f"{NOT_A_DIAGNOSIS} Every finding must be confirmed by a qualified reader on the full "
        "examination.",
        f"Method: detector {m.name} finds disc boxes of the classes {', '.join(m.class_names)}; "
        "boxes are grouped per disc along a curve fitted to the spine, and levels are counted "
        "up from the lowest disc (L5-S1 when the sacrum is recognised).",
        f"Trained on: {trained}. Performance on other scanners, sequences and populations has "
        "not been established.",
        "One sagittal slice is analysed; abnormalities outside it (e.g. foraminal or "
        "far-lateral herniation) can be missed. Axial images are not read.",
        "Severity values are image-based estimates from that slice. Supine MRI underestimates "
        "spondylolisthesis compared with standing (weight-bearing) radiographs: a low grade "
        "here does not exclude a higher grade standing.",
        "Not detected: spinal stenosis grading, fractures, tumours, infection, Modic changes, "
        "disc degeneration grade (Pfirrmann)"
        + (" (extra classes of this model, when present, are shown as found)."
           if set(m.class_names) - {"normal", "herniation", "spondylolisthesis"} else "."),
    ] + sensitivity_statement(m, study.segment_reader) + (
        [SEGMENT_METHOD] if study.segment_reader else [])


def sensitivity_statement(model: ModelInfo, segment_reader: dict | None = None) -> list[str]:
    """What share of the discs with each finding the detector called and where that was
    measured (:func:`~lumbardx.study.detector_calls_evidence`: only the findings the detector
    calls with ``segment_reader``; normal discs left out), as one statement, or none without
    evidence: a finding not shown is not excluded."""
    parts = [f"{name} {100 * called / positives:.0f}% ({called} of {positives})"
             for name, (called, positives) in
             detector_calls_evidence(model, segment_reader).items()
             if name != "normal" and positives > 0]
    if not parts:
        return []
    return [f"Discs with a finding that this model called, on {model.sensitivity_basis}: "
            + "; ".join(parts) + ". A finding that is not shown is not excluded."]


_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;color:#1b1f24;
margin:0;background:#f4f5f7;line-height:1.45}
main{max-width:980px;margin:0 auto;background:#fff;padding:28px 36px 36px}
header{border-bottom:3px solid #1b1f24;padding-bottom:10px;margin-bottom:14px}
h1{font-size:1.45rem;margin:0 0 4px}h2{font-size:1.1rem;margin:24px 0 8px;
border-bottom:1px solid #d6d9de;padding-bottom:3px}
.banner{background:#fff4e5;border-left:5px solid #d55e00;padding:8px 12px;margin:10px 0;
font-weight:600}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0;font-size:.93rem}
dl.meta dt{color:#57606a}dl.meta dd{margin:0;word-break:break-all}
table{border-collapse:collapse;width:100%;font-size:.95rem}
th,td{text-align:left;padding:6px 9px;border-bottom:1px solid #e1e4e8;vertical-align:top}
th{background:#eef0f3;font-weight:600}tr.abn td{background:#fffaf3}
.chip{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;color:#fff;
text-shadow:0 0 2px #000}
.unc{color:#b35900;font-weight:600}.est{font-size:.78rem;border:1px solid #8c959f;color:#57606a;
border-radius:3px;padding:0 4px;margin-left:6px}
.note{font-size:.86rem;color:#57606a;margin-top:6px}
figure{margin:0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #d6d9de}
figcaption{font-size:.86rem;color:#57606a;margin-top:4px}
ul{margin:4px 0;padding-left:22px}li{margin:2px 0}
footer{margin-top:26px;border-top:1px solid #d6d9de;padding-top:8px;font-size:.82rem;color:#57606a}
@media print{body{background:#fff}main{padding:0}tr,figure{page-break-inside:avoid}}
@page{size:A4;margin:14mm}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _chip(label: str, colours: dict[str, tuple[int, int, int]]) -> str:
    r, g, b = colours.get(label, (90, 90, 90))
    return f'<span class="chip" style="background:rgb({r},{g},{b})">{_e(label)}</span>'


def review_section(study: Study) -> list[str]:
    """The "Reader's review" section: every box, where it came from and what the reader did
    (nothing without a review: the header says "not reviewed")."""
    rows = review_rows(study)
    if study.review is None:
        return []
    p = ["</section>", "<section><h2>Reader's review</h2>",
         f"<p>{_e(study.review.status_text())}.</p>"]
    if rows:
        p.append("<table><thead><tr><th>Level</th><th>Finding</th><th>From</th>"
                 "<th>Reader's action</th><th>Model score</th></tr></thead><tbody>")
        p += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows]
        p.append("</tbody></table>")
    p.append('<p class="note">Findings by level above are the reviewed findings: the boxes the '
             "reader confirmed, changed or added, grouped and named by the same rules as the "
             "model's; a rejected box is listed here only.</p>")
    return p


def render_html_report(study: Study, overlay_png: bytes, *, analysed_at: datetime | None = None,
                       training_data: str | None = None) -> str:
    """The report as an HTML string (``overlay_png``: the PNG file's bytes, embedded)."""
    rows = finding_rows(study)
    colours = class_colours([*study.model.class_names, *(r.status for r in rows)])
    p: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lumbardx report {_e(study.study_key)}</title><style>{_CSS}</style></head>",
        "<body><main><header>", f"<h1>{_e(TITLE)}</h1>",
        f'<div class="banner">{_e(NOT_A_DIAGNOSIS)} Findings must be confirmed by a qualified '
        "reader on the full examination.</div>", '<dl class="meta">',
    ]
    p += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in header_fields(study, analysed_at)]
    p += ["</dl></header>", "<section><h2>Summary</h2><ul>"]
    p += [f"<li>{_e(s)}</li>" for s in summary_lines(study)]
    p += ["</ul></section>", "<section><h2>Findings by level</h2>"]
    if rows:
        reader = any(r.reader for r in rows)
        p.append("<table><thead><tr><th>Level</th><th>Status</th><th>Confidence</th>"
                 "<th>Also found</th><th>Severity</th>"
                 + ("<th>Segment reader (probability)</th>" if reader else "")
                 + "</tr></thead><tbody>")
        for r in rows:
            lvl = (f'<span class="unc" title="level name uncertain">{_e(r.level)}</span>'
                   if r.uncertain else _e(r.level))
            sev = f'{_e(r.severity)}<span class="est">estimate</span>' if r.severity else "-"
            cls = "" if r.status == NORMAL else ' class="abn"'
            extra = f"<td>{_e(r.reader or '-')}</td>" if reader else ""
            p.append(f"<tr{cls}><td>{lvl}</td><td>{_chip(r.status, colours)}</td>"
                     f"<td>{_e(r.confidence)}</td><td>{_e(r.other or '-')}</td><td>{sev}</td>"
                     f"{extra}</tr>")
        p.append("</tbody></table>")
        notes = [confidence_note(study)]
        if any(r.uncertain for r in rows):
            notes.append("A level marked ? may be misnamed (see Warnings).")
        if study.severity_note:
            notes.append(f"Severity: {study.severity_note}.")
        p.append(f'<p class="note">{_e(" ".join(notes))}</p>')
    else:
        p.append("<p>No discs detected.</p>")
    p += review_section(study)
    b64 = base64.b64encode(overlay_png).decode("ascii")
    p += ["</section>", "<section><h2>Overlay</h2><figure>",
          f'<img src="data:image/png;base64,{b64}" alt="analysed slice with detected discs, '
          'levels and findings">',
          f"<figcaption>Boxes: {'the reviewed findings' if study.review else 'detector output'}"
          " in the colour of the class; level names on one side, findings, confidence and "
          "severity estimates on the other.</figcaption>",
          "</figure></section>", "<section><h2>Warnings</h2><ul>"]
    warnings = report_warnings(study)
    p += [f"<li>{_e(w)}</li>" for w in warnings] or ["<li>None.</li>"]
    p += ["</ul></section>", "<section><h2>Method and limits</h2><ul>"]
    p += [f"<li>{_e(x)}</li>" for x in limits(study, training_data)]
    p += ["</ul></section>", "<section><h2>Timings</h2>"]
    if study.timings_ms:
        p.append("<table><thead><tr><th>Step</th><th>Time (ms)</th></tr></thead><tbody>")
        p += [f"<tr><td>{_e(k)}</td><td>{v:.1f}</td></tr>" for k, v in study.timings_ms.items()]
        p.append(f"<tr><th>total</th><th>{sum(study.timings_ms.values()):.1f}</th></tr>")
        p.append("</tbody></table>")
    else:
        p.append("<p>Not recorded.</p>")
    p += ["</section>", f"<footer>Generated by lumbardx {_e(__version__)}. "
          f"{_e(NOT_A_DIAGNOSIS)}</footer>", "</main></body></html>", ""]
    return "\n".join(p)


def write_html_report(study: Study, path: str | Path, overlay_path: str | Path, *,
                      analysed_at: datetime | None = None,
                      training_data: str | None = None) -> Path:
    """Write ``report.html`` for ``study`` atomically, embedding the PNG at ``overlay_path``.

    Raises:
        InputError: the overlay file cannot be read or is not a PNG.
    """
    overlay_path = Path(overlay_path)
    try:
        png = overlay_path.read_bytes()
    except OSError as exc:
        raise InputError(overlay_path, f"overlay image cannot be read: {exc.strerror or exc}"
                         ) from exc
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InputError(overlay_path, "overlay image is not a PNG file")
    text = render_html_report(study, png, analysed_at=analysed_at, training_data=training_data)
    return write_bytes_atomic(path, text.encode("utf-8"))
