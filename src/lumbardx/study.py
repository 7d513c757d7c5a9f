"""The result of diagnosing one study: the analysed slice, findings per disc, model and timings.

``Study.to_dict()`` is the ``findings.json`` schema (documented in docs/diagnose.md):

.. code-block:: text

    {
      "schema": "lumbardx.findings/4",
      "source": str,                 # input file or folder name (no directories: paths often
                                     # carry patient names)
      "study_key": str,              # de-identified key: sha256 of the analysed pixels (16 hex)
      "image": {"width": int, "height": int, "kind": "png"|"jpeg"|"dicom",
                "pixel_spacing_mm": [row, col] | null, "slice": int | null, "slices": int,
                "partner_series": str | null},   # the T1 (T2) series read with this slice
      "model": {"name": str, "version": str, "weights_sha256": str | null,
                "classes": [str], "image_size": int, "backend": "torch"|"onnxruntime",
                "training_data": str | null, "inputs": "slice"|"T1+T2",
                "sensitivity_evidence": {class: {"called": int, "positives": int}},
                "sensitivity_basis": str | null},
                                     # held-out discs with the finding and how many the
                                     # model called, and where that was measured; only the
                                     # findings the detector calls in this study
      "sacrum_recognised": bool, "sacrum_reason": str,
      "findings": [                  # one per disc, top to bottom along the spine
        {"level": "L4-L5", "level_uncertain": bool, "label": "herniation", "score": float | null,
         "box": [x1, y1, x2, y2],    # pixels of the analysed image, 0-based continuous
         "findings": [{"label": str, "score": float | null, "box": [x1, y1, x2, y2]}],
         "severity": {"slip_percent": float | null, "meyerding_grade": str | null,
                      "slip_method": str | null,   # how slip_percent was measured
                      "herniation_extent_mm": float | null, "estimate_note": str},
         "probabilities": {"normal": float, "herniation": float, "spondylolisthesis": float,
                           "stenosis": float, "degeneration": float, "lumbosacral": float}
                          | null}   # the segment reader's, calibrated; null without one
      ],
      "segment_reader": {"version": str, "weights_sha256": str | null,
                         "slip_call": "reader"|"detector",     # who calls spondylolisthesis
                         "slip_measure": "reader"|"corners"} | null,
      "timings_ms": {"read": float, "detect": float, "findings": float, "overlay": float, ...},
      "warnings": [str],
      "review": null                 # model output nobody reviewed, or the reader's review:
        | {"state": "open"|"complete", "reviewer": str | null, "reviewed_at": str | null,
           "summary": str, "counts": {"confirmed": int, "changed": int, ...},
           "boxes": [{"id": str, "label": str, "box": [x1, y1, x2, y2],
                      "origin": "model"|"reader", "decision": str, "action": str,
                      "level": str | null, "score": float | null,     # null: reader's call
                      "model_label": str | null, "model_box": [...] | null,
                      "model_score": float | null}]},
      "disclaimer": str
    }

With a complete review, ``findings`` are the reviewed findings (the boxes the reader kept,
:mod:`lumbardx.clinical.reviewed`); a disc the reader drew may have ``probabilities`` null.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lumbardx.clinical.findings import SLIP, SpineFindings
from lumbardx.clinical.reviewed import ReviewRecord
from lumbardx.data.boxes import Box
from lumbardx.data.images import MedicalImage

SCHEMA = "lumbardx.findings/4"  # 2: per-level probabilities, slip method, segment reader;
# 3: the reader's review; 4: the model's sensitivity evidence
PAIR_INPUTS = "T1+T2"  # ModelInfo.inputs of a detector that reads T1 and T2 together
DISCLAIMER = (
    "Decision support for research and teaching; not a diagnosis. Findings must be confirmed "
    "by a qualified reader on the full examination."
)


@dataclass
class ModelInfo:
    """Which detector produced the findings.

    Attributes:
        name: registry name (``"yolov5s"``).
        version: lumbardx version that trained/exported it and the weights' tag.
        weights_sha256: hash of the weights file (``None`` for an in-memory model).
        class_names: the detector's classes, index order.
        image_size: square network input size in pixels.
        backend: ``"torch"`` or ``"onnxruntime"``.
        training_data: what the weights were trained on (from the checkpoint or model card).
        inputs: ``"slice"`` (one slice), or ``"T1+T2"`` for a detector trained on a patient's
            co-registered T1 and T2 slices (recipe ``sequence_pairs``; it reads a single slice
            too).
        sensitivity_evidence: class -> ``(called, positives)``: of the held-out discs with that
            finding, how many the model called at its decision threshold
            (:func:`lumbardx.models.pretrained.sensitivity_evidence`); only classes still
            called at the threshold measured (:meth:`lumbardx.models.pretrained.LoadedModel.
            set_thresholds` drops the others).
        sensitivity_basis: where and how ``sensitivity_evidence`` was measured (``None``
            without it).
    """

    name: str
    version: str
    weights_sha256: str | None
    class_names: list[str]
    image_size: int
    backend: str = "torch"
    training_data: str | None = None
    inputs: str = "slice"
    sensitivity_evidence: dict[str, tuple[int, int]] = field(default_factory=dict)
    sensitivity_basis: str | None = None

    @property
    def reads_pairs(self) -> bool:
        """Whether the detector was trained on T1/T2 pairs."""
        return self.inputs == PAIR_INPUTS


def detector_calls_evidence(model: ModelInfo, segment_reader: dict[str, Any] | None
                            ) -> dict[str, tuple[int, int]]:
    """The model's :attr:`~ModelInfo.sensitivity_evidence` for the findings its detector calls
    in a study read with ``segment_reader`` (:attr:`Study.segment_reader`): none when the
    reader's stacked regressions make the calls (``disc_call`` ``"stacked"``), and without
    spondylolisthesis when the reader calls it (``slip_call`` ``"reader"``). The record
    describes the detector's calls only."""
    reader = segment_reader or {}
    if reader.get("disc_call") == "stacked":
        return {}
    return {k: v for k, v in model.sensitivity_evidence.items()
            if not (k == SLIP and reader.get("slip_call") == "reader")}


def pixel_key(pixels: np.ndarray) -> str:
    """De-identified study key: the first 16 hex digits of the sha256 of the pixel array."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]


def _box(b: Box) -> list[float]:
    return [round(float(v), 2) for v in b.xyxy()]


@dataclass
class Study:
    """One diagnosed study.

    Attributes:
        source: the input path (file or study folder).
        image: the analysed slice (``display`` is the 8-bit image the overlay is drawn on;
            ``header`` holds the DICOM header for results sent back to PACS).
        findings: discs top to bottom with level, status, confidence, box and severity.
        model: the detector used.
        study_key: de-identified key (:func:`pixel_key` of the analysed pixels).
        slice_index, n_slices: which slice of the series was analysed (``None``/1 for images).
        partner_series: the co-registered series of the other sequence whose same slice was read
            with the analysed one (a detector reading T1 and T2 together), or ``None``.
        timings_ms: wall time of each step in milliseconds.
        warnings: anything the reader should know (e.g. level naming uncertain).
        outputs: files written for this study (name -> path).
        severity_note: how the severity estimates were validated (shown with them).
        segment_reader: the segment reader that read the discs (``version``,
            ``weights_sha256``), or ``None``.
        review: the reader's review (:class:`lumbardx.clinical.reviewed.ReviewRecord`), or
            ``None`` for model output nobody reviewed.
        source_label: what reports call the source when ``source``'s name means nothing to a
            reader (e.g. the web app's stored upload, renamed ``file-000.dcm``...); ``None``:
            ``source``'s name.
    """

    source: Path
    image: MedicalImage
    findings: SpineFindings
    model: ModelInfo
    study_key: str
    slice_index: int | None = None
    n_slices: int = 1
    partner_series: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    severity_note: str = ""
    segment_reader: dict[str, Any] | None = None
    review: ReviewRecord | None = None
    source_label: str | None = None

    @property
    def positive(self) -> bool:
        """Whether any disc has a finding other than normal."""
        return any(d.status != "normal" for d in self.findings.discs)

    def to_dict(self) -> dict[str, Any]:
        """The ``findings.json`` object (schema in the module docstring)."""
        img = self.image
        spacing = list(img.pixel_spacing) if img.pixel_spacing is not None else None
        discs = []
        for d in self.findings.discs:
            discs.append({
                "level": d.level,
                "level_uncertain": d.level_uncertain,
                "label": d.status,
                "score": None if d.confidence is None else round(float(d.confidence), 4),
                "box": _box(d.box),
                "findings": [
                    {"label": f.label,
                     "score": None if f.score is None else round(float(f.score), 4),
                     "box": _box(f.box)}
                    for f in d.findings
                ],
                "severity": {
                    "slip_percent": d.slip_percent,
                    "meyerding_grade": d.meyerding_grade,
                    "slip_method": d.slip_method,
                    "herniation_extent_mm": d.herniation_extent_mm,
                    "estimate_note": self.severity_note,
                },
                "probabilities": None if d.probabilities is None else dict(d.probabilities),
            })
        evidence = detector_calls_evidence(self.model, self.segment_reader)
        return {
            "schema": SCHEMA,
            "source": Path(self.source).name,
            "study_key": self.study_key,
            "image": {"width": img.width, "height": img.height, "kind": img.kind,
                      "pixel_spacing_mm": spacing, "slice": self.slice_index,
                      "slices": self.n_slices, "partner_series": self.partner_series},
            "model": {"name": self.model.name, "version": self.model.version,
                      "weights_sha256": self.model.weights_sha256,
                      "classes": list(self.model.class_names),
                      "image_size": self.model.image_size, "backend": self.model.backend,
                      "training_data": self.model.training_data,
                      "inputs": self.model.inputs,
                      "sensitivity_evidence": {
                          k: {"called": c, "positives": n} for k, (c, n) in evidence.items()},
                      "sensitivity_basis": self.model.sensitivity_basis if evidence else None},
            "segment_reader": self.segment_reader,
            "sacrum_recognised": self.findings.sacrum_recognised,
            "sacrum_reason": self.findings.sacrum_reason,
            "findings": discs,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "warnings": list(self.warnings),
            "review": None if self.review is None else self.review.to_dict(),
            "disclaimer": DISCLAIMER,
        }
