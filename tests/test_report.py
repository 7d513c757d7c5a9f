"""Overlay, findings.json, HTML and PDF reports of a diagnosed study (lumbardx.report)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont
from pydicom.dataset import Dataset

import lumbardx.report.fonts as fonts
from lumbardx.clinical.findings import SpineFindings, build_findings
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.data.images import MedicalImage
from lumbardx.report import (write_bytes_atomic, write_findings_json, write_html_report,
                             write_pdf_report, write_study_outputs)
from lumbardx.report.html import render_html_report, report_warnings
from lumbardx.report.overlay import (CLASS_COLOURS, class_colours, extent_text, level_label,
                                     render_overlay, slip_text)
from lumbardx.report.pdf import build_report_pages
from lumbardx.study import ModelInfo, Study, pixel_key
from lumbardx.synth import SynthConfig, generate_case

from findings_schema import check_findings_schema

LEVELS = ["T9-T10", "T10-T11", "T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5",
          "L5-S1"]
CLASSES = ["normal", "herniation", "spondylolisthesis"]
SEVERITY_NOTE = "estimate (image-based; validation pending)"


@pytest.fixture(scope="module")
def case():
    """A generated slice (384 x 384, L5-S1 slip) and hand-made detections on it."""
    c = generate_case(np.random.default_rng(2), SynthConfig(p_listhesis=1.0))
    normals = [b for b in c.annotation.boxes if b.label == "normal"]
    rng = np.random.default_rng(0)
    boxes = [Box("herniation" if i == 3 else "normal", b.x1, b.y1, b.x2, b.y2,
                 score=float(rng.uniform(0.6, 0.95))) for i, b in enumerate(normals)]
    boxes += [Box(b.label, b.x1, b.y1, b.x2, b.y2, score=0.8) for b in c.annotation.boxes
              if b.label != "normal"]
    return c, boxes


def make_study(case, *, source="case_001.png", sacrum=None, header=None, kind="png"):
    c, boxes = case
    img = c.image
    f = build_findings(boxes, (img.shape[1], img.shape[0]), sacrum=sacrum, classes=CLASSES)
    for d in f.discs:
        if d.status == "spondylolisthesis":
            d.slip_percent, d.meyerding_grade = 12.0, "I"
        if d.status == "herniation":
            d.herniation_extent_mm = 4.14
    mi = MedicalImage(img.astype(np.float32), img, c.pixel_spacing, Path(source), kind,
                      header=header)
    model = ModelInfo("yolov5s", "0.1.0+test", "ab" * 32, list(CLASSES), 384)
    return Study(Path(source), mi, f, model, pixel_key(img),
                 timings_ms={"read": 5.0, "detect": 120.0, "findings": 2.0},
                 warnings=[], severity_note=SEVERITY_NOTE)


@pytest.fixture(scope="module")
def study(case):
    return make_study(case)


# -- fonts -----------------------------------------------------------------------------------


def test_font_is_matplotlib_dejavu_and_falls_back(monkeypatch):
    path = fonts.dejavu_path()
    assert path is not None and path.name == "DejaVuSans.ttf"
    font = fonts.load_font(20)
    assert isinstance(font, ImageFont.FreeTypeFont) and Path(font.path) == path
    assert fonts.text_size(fonts.load_font(30), "L4-L5")[0] > fonts.text_size(font, "L4-L5")[0]
    fonts.load_font.cache_clear()
    monkeypatch.setattr(fonts, "dejavu_path", lambda bold=False: None)
    try:
        fallback = fonts.load_font(20)
        assert not isinstance(getattr(fallback, "path", None), str)  # Pillow's built-in font
        assert fonts.text_size(fallback, "L4-L5")[0] > 0
    finally:
        fonts.load_font.cache_clear()


# -- overlay ---------------------------------------------------------------------------------


def test_overlay_shape_and_class_colours(study):
    img = study.image.display
    out = render_overlay(img, study.findings, scale=2)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[1] == 2 * img.shape[1] and out.shape[0] > 2 * img.shape[0]  # legend band
    empty = SpineFindings([], False, "no boxes")
    assert render_overlay(np.zeros((384, 384), np.uint8), empty).shape[1] == 768  # enlarged
    assert render_overlay(np.zeros((900, 700), np.uint8), empty).shape[1] == 700  # large enough

    def edge_colour(box: Box, side: str) -> tuple[int, ...]:
        y = int(box.y1 * 2) + 2 if side == "top" else int(box.y2 * 2) - 3
        return tuple(int(v) for v in out[y, int((box.x1 + box.x2))])

    by_status = {d.status: d for d in study.findings.discs}
    assert set(by_status) == set(CLASSES)
    assert edge_colour(by_status["normal"].box, "top") == CLASS_COLOURS["normal"]
    assert edge_colour(by_status["herniation"].box, "top") == CLASS_COLOURS["herniation"]
    assert edge_colour(by_status["spondylolisthesis"].box, "bottom") == \
        CLASS_COLOURS["spondylolisthesis"]
    assert len(set(CLASS_COLOURS.values())) == 3
    # The slice itself stays gray away from boxes and labels (bottom-left corner of the image).
    corner = out[2 * img.shape[0] - 10:2 * img.shape[0], :10].astype(int)
    assert np.all(corner[..., 0] == corner[..., 1]) and np.all(corner[..., 1] == corner[..., 2])


def _relative_luminance(rgb) -> float:  # noqa: ANN001
    c = np.asarray(rgb, float) / 255.0
    lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def test_overlay_labels_sit_on_plates_legible_on_bright_and_dark(study):
    """Every label has a dark translucent plate: over a white canal and over black bone the
    label colours keep a WCAG contrast of at least 3:1 (large text) against the plate."""
    from lumbardx.report.overlay import PLATE_ALPHA, text_colour

    for value in (255, 0):
        img = np.full_like(study.image.display, value)
        out = render_overlay(img, study.findings, scale=2)
        plate = round(value * (1 - PLATE_ALPHA))
        area = out[: 2 * img.shape[0]]
        on_plate = np.all(np.abs(area.astype(int) - plate) <= 1, axis=-1)
        if value == 255:  # plates are the only grey on a white image: one per label at least
            assert on_plate.sum() > 200 * 2 * len(study.findings.discs)
        colours = class_colours(["normal", "herniation", "spondylolisthesis"])
        for rgb in [(255, 255, 255), *(text_colour(c) for c in colours.values())]:
            lighter = max(_relative_luminance(rgb), _relative_luminance([plate] * 3))
            darker = min(_relative_luminance(rgb), _relative_luminance([plate] * 3))
            assert (lighter + 0.05) / (darker + 0.05) >= 3.0, (value, rgb)


def test_overlay_without_discs_and_bad_input(study):
    empty = SpineFindings([], False, "no boxes", image_size=(384, 384))
    out = render_overlay(study.image.display, empty, scale=1)
    h, w = study.image.display.shape
    assert out.shape[1] == w and out.shape[0] > h
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(study.image.display.astype(np.float32), study.findings)
    with pytest.raises(ValueError, match="scale"):
        render_overlay(study.image.display, study.findings, scale=0)


def test_labels_and_colours():
    disc = build_findings([Box("spondylolisthesis", 10, 10, 60, 40, 0.9)], (100, 100)).discs[0]
    disc.slip_percent, disc.meyerding_grade = 18.3, "I"
    assert slip_text(disc) == "slip ~18% (grade I, est.)"
    disc.slip_percent = -12.4
    assert slip_text(disc).startswith("retrolisthesis ~12%")
    assert extent_text(disc) is None
    disc.herniation_extent_mm = 4.14
    assert extent_text(disc) == "post. extent 4.1 mm (est.)"
    disc.level, disc.level_uncertain = "L4-L5", True
    assert level_label(disc) == "L4-L5?"
    yolo = ["Degenerative Disc Disease (DDD)", "Normal IVD", "Spinal Stenosis (SS)",
            "Spondylolisthesis", "Lumbar Disc Bulge (LDB)", "Thoracic Disc Bulge (TDB)"]
    colours = class_colours(yolo)
    assert len(set(colours.values())) == 6
    assert colours["Normal IVD"] == CLASS_COLOURS["normal"]
    assert colours["Lumbar Disc Bulge (LDB)"] == CLASS_COLOURS["herniation"]


# -- findings.json, HTML, PDF ----------------------------------------------------------------


def check_report_findings(doc: dict) -> None:
    """findings.json of this test's study: the schema (:func:`check_findings_schema`), levels
    of the lumbar spine named once each, top to bottom, each disc with its boxes."""
    check_findings_schema(doc)
    positions = []
    for f in doc["findings"]:
        assert f["level"] in LEVELS
        assert f["findings"]
        positions.append(LEVELS.index(f["level"]))
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_write_study_outputs(study, tmp_path):
    paths = write_study_outputs(study, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"overlay.png", "findings.json", "report.html",
                                                "report.pdf"}
    assert all(p.is_file() for p in paths.values())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    with Image.open(paths["overlay"]) as im:
        assert im.mode == "RGB" and im.size[0] == 2 * study.image.width
    doc = json.loads(paths["findings"].read_text(encoding="utf-8"))
    check_report_findings(doc)
    assert "overlay" in doc["timings_ms"] and doc["findings"][-1]["level"] == "L5-S1"
    assert {f["label"] for f in doc["findings"]} == set(CLASSES)
    assert study.outputs["report_pdf"] == paths["report_pdf"]


def test_write_study_outputs_without_pdf(study, tmp_path):
    paths = write_study_outputs(study, tmp_path / "nopdf", pdf=False)
    assert set(paths) == {"overlay", "findings", "report_html"}
    assert sorted(p.name for p in (tmp_path / "nopdf").iterdir()) == [
        "findings.json", "overlay.png", "report.html"]


def test_html_report_content(study, tmp_path):
    text = render_html_report(study, b"\x89PNG\r\n\x1a\nfake")
    for d in study.findings.discs:
        assert f"<td>{d.level}</td>" in text
        assert f">{d.status}</span>" in text
    assert "posterior extent 4.1 mm" in text and "Meyerding grade I" in text
    assert SEVERITY_NOTE in text and "not a diagnosis" in text.lower()
    assert "standing" in text and "stenosis" in text  # limits section
    assert "data:image/png;base64," in text and study.study_key in text
    # Self-contained, no scripts, no external resources.
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    assert "<link" not in text and "url(" not in text


def test_html_escapes_file_name_and_uncertain_levels(case, tmp_path):
    evil = make_study(case, source="/data/<script>alert('x')<script>.png", sacrum=False)
    evil.warnings.append("odd file <img src=x onerror=alert(1)>")
    png = tmp_path / "overlay.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    path = write_html_report(evil, tmp_path / "report.html", png)
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "/data/" not in text  # file name only
    assert all(f"{d.level}?" in text for d in evil.findings.discs)
    assert any("sacrum was not recognised" in w for w in report_warnings(evil))
    with pytest.raises(InputError, match="not a PNG"):
        write_html_report(evil, tmp_path / "r2.html", tmp_path / "report.html")
    assert not (tmp_path / "r2.html").exists()


def test_patient_id_only_in_the_report_header(case, tmp_path):
    """The Patient ID identifies the report (its header field, so a printed report is not
    misfiled); the patient's name and the ID are redacted everywhere else (source file name,
    warnings), and findings.json's findings carry neither."""
    ds = Dataset()
    ds.PatientName = "Zyxwort^Quenby^Q"
    ds.PatientID = "PID-48213"
    st = make_study(case, source="/pacs/Zyxwort_Quenby_PID-48213_sag.dcm", header=ds, kind="dicom")
    st.warnings.append("note about PID-48213")
    text = render_html_report(st, b"\x89PNG\r\n\x1a\n")
    for ident in ("Zyxwort", "Quenby"):
        assert ident.lower() not in text.lower()
    assert text.count("PID-48213") == 1
    assert "<dt>Patient ID</dt><dd>PID-48213</dd>" in text
    assert "[redacted]" in text and "_sag.dcm" in text
    pages = build_report_pages(st, np.zeros((40, 30, 3), np.uint8))
    printed = " ".join(t.get_text() for fig in pages for t in fig.findobj(
        lambda a: hasattr(a, "get_text")))
    assert "_sag.dcm" in printed and st.study_key in printed
    for ident in ("Zyxwort", "Quenby"):
        assert ident.lower() not in printed.lower()
    assert printed.count("PID-48213") == 1
    doc = json.loads(write_findings_json(st, tmp_path / "f.json").read_text())
    assert "Quenby" not in json.dumps(doc["findings"]) and "PID" not in doc["study_key"]


def test_pdf_report(study, case, tmp_path):
    png = tmp_path / "overlay.png"
    Image.fromarray(render_overlay(study.image.display, study.findings)).save(png)
    path = write_pdf_report(study, tmp_path / "report.pdf", png)
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page(?!s)", data)) >= 1
    pages = build_report_pages(study, np.asarray(Image.open(png).convert("RGB")))
    printed = " ".join(t.get_text() for fig in pages for t in fig.findobj(
        lambda a: hasattr(a, "get_text")))
    for d in study.findings.discs:
        assert d.level in printed
    assert "Method and limits" in printed and "supine mri underestimates" in printed.lower()
    assert f"page 1 of {len(pages)}" in printed
    # $ signs are printed as such (no mathtext), and a long warning list flows onto more pages.
    st = make_study(case, source="a$b$c.png")
    st.warnings.extend(f"warning number {i}: " + "text " * 30 for i in range(40))
    long_pages = build_report_pages(st, np.zeros((40, 30, 3), np.uint8))
    assert len(long_pages) > len(pages)
    assert all(not t.get_parse_math() for fig in long_pages for t in fig.texts
               if "$" in t.get_text())
    with pytest.raises(InputError, match="cannot be read"):
        write_pdf_report(study, tmp_path / "r2.pdf", tmp_path / "missing.png")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "report.pdf"
    write_bytes_atomic(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.pdf"]


def test_real_slice_overlay(yolospine_dev):
    """One real slice with its reference boxes: overlay and reports build without error."""
    label = sorted((yolospine_dev / "labels").glob("*.txt"))[0]
    image = np.asarray(Image.open(yolospine_dev / "images" / f"{label.stem}.png").convert("L"))
    h, w = image.shape
    names = ["ddd", "normal", "stenosis", "spondylolisthesis", "herniation", "herniation"]
    boxes = []
    for line in label.read_text().split("\n"):
        if line.strip():
            c, cx, cy, bw, bh = (float(v) for v in line.split())
            boxes.append(Box(names[int(c)], (cx - bw / 2) * w, (cy - bh / 2) * h,
                             (cx + bw / 2) * w, (cy + bh / 2) * h))
    f = build_findings(boxes, (w, h))
    out = render_overlay(image, f)
    assert out.shape[1] == 2 * w and out.dtype == np.uint8
    colours = {tuple(c) for c in out[:2 * h].reshape(-1, 3)[::7]}
    assert CLASS_COLOURS["normal"] in colours or CLASS_COLOURS["herniation"] in colours
