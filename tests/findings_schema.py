"""Check a ``findings.json`` document against the schema documented in :mod:`lumbardx.study`.

Shared by the report and diagnose tests: ``from findings_schema import check_findings_schema``.
Only what holds for every study is checked here; tests add what their study should contain.
"""

from __future__ import annotations

import re

from lumbardx.study import SCHEMA

MODEL_KEYS = {"name", "version", "weights_sha256", "classes", "image_size", "backend",
              "training_data", "inputs", "sensitivity_evidence", "sensitivity_basis"}
DISC_KEYS = {"level", "level_uncertain", "label", "score", "box", "findings", "severity",
             "probabilities"}
SEVERITY_KEYS = {"slip_percent", "meyerding_grade", "slip_method", "herniation_extent_mm",
                 "estimate_note"}
SEGMENT_LABELS = {"normal", "herniation", "spondylolisthesis", "stenosis", "degeneration",
                  "lumbosacral"}


def check_findings_schema(doc: dict) -> None:
    """Types, keys and value ranges of a ``findings.json`` document."""
    assert doc["schema"] == SCHEMA
    for key, typ in {"source": str, "study_key": str, "image": dict, "model": dict,
                     "sacrum_recognised": bool, "sacrum_reason": str, "findings": list,
                     "timings_ms": dict, "warnings": list, "disclaimer": str}.items():
        assert isinstance(doc[key], typ), key
    assert re.fullmatch(r"[0-9a-f]{16}", doc["study_key"])
    img = doc["image"]
    assert isinstance(img["width"], int) and isinstance(img["height"], int)
    assert img["kind"] in ("png", "jpeg", "dicom")
    assert img["pixel_spacing_mm"] is None or len(img["pixel_spacing_mm"]) == 2
    assert img["partner_series"] is None or isinstance(img["partner_series"], str)
    assert set(doc["model"]) == MODEL_KEYS
    assert doc["model"]["backend"] in ("torch", "onnxruntime")
    assert doc["model"]["inputs"] in ("slice", "T1+T2")
    assert (doc["model"]["sensitivity_basis"] is None) == (not doc["model"][
        "sensitivity_evidence"])
    for name, ev in doc["model"]["sensitivity_evidence"].items():
        assert name in doc["model"]["classes"] and set(ev) == {"called", "positives"}
        assert 0 <= ev["called"] <= ev["positives"]
    if img["partner_series"] is not None:
        assert doc["model"]["inputs"] == "T1+T2"
    for disc in doc["findings"]:
        assert set(disc) == DISC_KEYS
        assert isinstance(disc["level_uncertain"], bool)
        assert isinstance(disc["label"], str)
        # the detector's classes, or a segment reader's finding (stenosis, degeneration)
        assert disc["label"] in doc["model"]["classes"] or (
            doc["segment_reader"] is not None and disc["label"] in SEGMENT_LABELS)
        assert disc["score"] is None or 0.0 <= disc["score"] <= 1.0
        assert len(disc["box"]) == 4 and all(isinstance(v, float) for v in disc["box"])
        x1, y1, x2, y2 = disc["box"]
        assert 0 <= x1 < x2 <= img["width"] and 0 <= y1 < y2 <= img["height"]
        assert all(set(f) == {"label", "score", "box"} and len(f["box"]) == 4
                   for f in disc["findings"])
        assert set(disc["severity"]) == SEVERITY_KEYS
        probs = disc["probabilities"]
        if doc["review"] is None:  # a reviewed disc the reader drew may have none
            assert (probs is None) == (doc["segment_reader"] is None)
        else:
            assert probs is None or doc["segment_reader"] is not None
        if probs is not None:
            assert set(probs) <= SEGMENT_LABELS and all(0.0 <= v <= 1.0 for v in probs.values())
    assert all(isinstance(v, float) for v in doc["timings_ms"].values())
    reader = doc["segment_reader"]
    assert reader is None or (isinstance(reader["version"], str) and set(reader) == {
        "version", "weights_sha256", "slip_call", "slip_measure", "disc_call"})
    if reader is not None:
        assert reader["slip_call"] in ("reader", "detector")
        assert reader["disc_call"] in ("detector", "stacked")
        assert reader["slip_measure"] in ("reader", "corners")
    review = doc["review"]
    if review is not None:
        assert review["state"] in ("open", "complete")
        assert set(review) == {"state", "reviewer", "reviewed_at", "summary", "counts", "boxes"}
        for b in review["boxes"]:
            assert b["origin"] in ("model", "reader")
            assert b["decision"] in ("pending", "accepted", "rejected", "edited", "added")
            assert len(b["box"]) == 4 and isinstance(b["action"], str)
