"""Stage ``stacked``: herniation and spondylolisthesis called per disc from the detector's scores
and the segment reader's logits together (:mod:`lumbardx.engine.stacking`).

Runs inside the segment stage when its checkpoint holds stacked calls
(``SegmentStage.disc_call == "stacked"``), after the reader has read every disc. Per disc of the
diagnosis (boxes grouped with the decision thresholds):

1. **Detector scores.** Every box the detector kept (down to its candidate floor) is grouped into
   discs without thresholds, as the regressions were fitted; each diagnosis disc takes the best
   score per class of the every-box disc at the same level of the spine
   (:func:`lumbardx.clinical.findings.match_discs`), or of its own boxes when none matches, and
   the higher of the two.
2. **Calls.** :meth:`StackedCalls.probabilities` on :func:`stack_features`; a finding is called at
   its threshold. A called finding's confidence is its stacked probability and its box the
   detector's best box of the class on the disc (the reader's slip-box template, or the disc's
   box, when the detector has none there). A finding the detector called but the regression
   does not is dropped; a disc left without a finding is normal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lumbardx.clinical.findings import (NORMAL, SLIP, Finding, SpineFindings, build_findings,
                                        match_discs)
from lumbardx.data.boxes import Box
from lumbardx.engine.stacking import STACK_DETECTOR, STACK_FINDINGS, StackedCalls, stack_features


def disc_detector_boxes(spine: SpineFindings, boxes: Sequence[Box], classes: Sequence[str]
                        ) -> list[list[Box]]:
    """Per disc of ``spine``, every detector box (of ``boxes``, no threshold) at that disc."""
    every = build_findings(list(boxes), spine.image_size, thresholds=None, classes=list(classes))
    match = match_discs(spine, every) if spine.discs else []
    return [list(d.boxes) + (list(every.discs[j].boxes) if j is not None else [])
            for d, j in zip(spine.discs, match)]


def best_scores(boxes: Sequence[Box]) -> dict[str, float]:
    """Best score per class of :data:`STACK_DETECTOR` among ``boxes`` (absent: not listed)."""
    out: dict[str, float] = {}
    for b in boxes:
        if b.label in STACK_DETECTOR and b.score is not None:
            out[b.label] = max(out.get(b.label, 0.0), float(b.score))
    return out


def stacked_probabilities(stacked: StackedCalls, disc_boxes: Sequence[Sequence[Box]],
                          reader_logits: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """Finding -> probability ``[L]`` per disc."""
    if not disc_boxes:
        return {name: np.zeros(0) for name in STACK_FINDINGS}
    x = np.stack([stack_features(best_scores(b), z) for b, z in zip(disc_boxes, reader_logits)])
    return stacked.probabilities(x)


def apply_stacked(spine: SpineFindings, stacked: StackedCalls,
                  disc_boxes: Sequence[Sequence[Box]], reader_logits: Sequence[dict[str, float]],
                  slip_templates: Sequence[Box], normal_probs: Sequence[float | None]
                  ) -> list[list[Finding]]:
    """The findings of each disc of ``spine`` with herniation and spondylolisthesis called by
    ``stacked`` (module docstring); the other findings are kept as they are. ``disc_boxes``:
    :func:`disc_detector_boxes`; per disc the reader's raw logits, its slip-box template and
    its calibrated probability of normal (the confidence of a disc left normal without a
    normal box)."""
    p = stacked_probabilities(stacked, disc_boxes, reader_logits)
    out = []
    for i, disc in enumerate(spine.discs):
        found = [f for f in disc.findings if f.label not in STACK_FINDINGS and f.label != NORMAL]
        for name in STACK_FINDINGS:
            prob = float(p[name][i])
            if prob < stacked.thresholds[name]:
                continue
            mine = [b for b in disc_boxes[i] if b.label == name and b.score is not None]
            box = (max(mine, key=lambda b: float(b.score or 0.0)) if mine
                   else slip_templates[i] if name == SLIP else disc.box)
            found.append(Finding(name, round(prob, 4),
                                 Box(name, box.x1, box.y1, box.x2, box.y2, score=round(prob, 4))))
        if not found:
            normal = [f for f in disc.findings if f.label == NORMAL]
            found = normal or [Finding(NORMAL, normal_probs[i], disc.box)]
        out.append(found)
    return out
