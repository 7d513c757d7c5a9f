"""Stage ``findings``: boxes grouped into discs along the spine, levels named, one status per
disc (:func:`lumbardx.clinical.findings.build_findings` with the model's decision thresholds),
and the warnings a reader needs about them."""

from __future__ import annotations

from lumbardx.clinical.findings import SpineFindings, build_findings
from lumbardx.data.boxes import Box
from lumbardx.data.images import MedicalImage
from lumbardx.models.pretrained import LoadedModel


def findings_warnings(spine: SpineFindings) -> list[str]:
    """No discs, uncertain levels, presumed missing levels, boxes set aside."""
    out: list[str] = []
    if not spine.discs:
        scattered = (f" ({len(spine.off_spine)} box(es) found, not along a spine)"
                     if spine.off_spine else "")
        out.append(f"no discs found{scattered}: check that the image is a sagittal lumbar "
                   "spine MRI")
        return out
    out.extend(spine.level_reasons)
    if spine.missing_levels:
        out.append(f"levels presumed undetected: {', '.join(spine.missing_levels)}")
    if spine.off_spine:
        out.append(f"{len(spine.off_spine)} box(es) away from the spine were set aside")
    return out


def drop_stale(warnings: list[str], before: list[str], spine: SpineFindings) -> list[str]:
    """``warnings`` without those of :func:`findings_warnings` that were true ``before`` a
    later stage changed ``spine`` and are not now (e.g. the sacrum recognised by the segment
    reader: its "sacrum not recognised" reason goes)."""
    after = findings_warnings(spine)
    return [w for w in warnings if w not in before or w in after]


def find(boxes: list[Box], image: MedicalImage, m: LoadedModel
         ) -> tuple[SpineFindings, list[str]]:
    """Discs of ``boxes`` (image pixels) and the warnings about them and about thresholds
    that were not chosen on validation data."""
    spine = build_findings(boxes, (image.width, image.height), m.thresholds,
                           classes=m.class_names)
    warnings = findings_warnings(spine)
    unchosen = [n for n in m.class_names if n not in m.chosen]
    if unchosen:
        warnings.append("decision thresholds not chosen on validation data for "
                        f"{', '.join(unchosen)}: default "
                        f"{', '.join(f'{m.thresholds[n]:g}' for n in unchosen)}")
    return spine, warnings
