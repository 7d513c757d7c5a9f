"""Stage ``reviewed``: a diagnosed study as a reader reviewed it.

After a reader's review (the web app's corrections, :mod:`lumbardx.app.review`), the record is
the reviewed findings, not the model's: :func:`reviewed_study` rebuilds the discs from the boxes
the reader kept (:func:`lumbardx.clinical.reviewed.reviewed_findings`: same grouping and level
naming as the model's boxes), measures severity on them again (stage ``severity``: a slip the
reader called is graded like one the model called), keeps the segment reader's probabilities
on the discs that match a model disc, and attaches the review, so that the overlay,
``findings.json``, the reports and the DICOM SR written from it (stage ``outputs``) state the
reviewed findings and who reviewed them.
"""

from __future__ import annotations

import re
from dataclasses import replace

from lumbardx.clinical.findings import match_discs
from lumbardx.clinical.reviewed import ReviewRecord, reviewed_findings
from lumbardx.stages.findings import findings_warnings
from lumbardx.stages.severity import anterior_left, estimate_severity
from lumbardx.study import Study

#: Warnings about one disc's severity begin with its level (stage ``severity``).
_PER_LEVEL = re.compile(r"^[A-Z][A-Za-z0-9]*-[A-Z][A-Za-z0-9]*\??: ")


def reviewed_study(study: Study, record: ReviewRecord) -> Study:
    """``study`` with the reviewed findings and ``record`` attached (module docstring); the
    model's warnings about its own discs are replaced by those of the reviewed discs."""
    spine = reviewed_findings(record, study.findings, study.model.class_names)
    for i, j in enumerate(match_discs(spine, study.findings)):
        if j is not None:
            spine.discs[i].probabilities = study.findings.discs[j].probabilities
    severity = estimate_severity(study.image, spine, anterior_left(study.image))
    about_model_discs = set(findings_warnings(study.findings))
    other = [w for w in study.warnings if w not in about_model_discs and not _PER_LEVEL.match(w)]
    return replace(study, findings=spine, review=record,
                   warnings=[*findings_warnings(spine), *severity, *other])
