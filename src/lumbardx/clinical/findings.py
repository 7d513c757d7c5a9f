"""Findings per disc level, built from detection boxes (or ground-truth boxes).

Rules (each tested in ``tests/test_findings.py``):

1. **Thresholds.** A box counts when its score is at least its class threshold
   (:mod:`lumbardx.clinical.thresholds`; ground-truth boxes have no score and always count).
   Boxes of classes absent from the thresholds use ``default_threshold``.
2. **Curve and order.** A robust curve is fitted through the centres of the disc boxes (every
   class except spondylolisthesis) and discs are ordered by arc length along it
   (:mod:`lumbardx.clinical.levels`). A box farther than ``OFF_SPINE`` (1.0) inter-disc spacings
   from the curve is set aside as off-spine (``SpineFindings.off_spine``).
3. **One disc, one finding.** Disc boxes sorted by arc length join the current disc while their
   centre lies within half the local inter-disc spacing (along the curve) of the disc's mean
   position; otherwise they start a new disc. The spacing is first guessed as twice the median
   disc-box height (yolospine-dev: a normal box is ~0.51 spacings tall), then re-measured from
   the discs found and the grouping redone once.
4. **Spondylolisthesis boxes** span two vertebrae and the disc between: such a box goes to the
   disc whose centre it contains nearest its own centre; when it contains none, to the disc
   within half a spacing of its projection; otherwise it makes a disc of its own (a slipped
   level annotated with no disc box).
5. **Status.** Every class with a counted box is a finding of that disc (best box per class).
   The status is the finding of highest priority: ``spondylolisthesis`` > ``herniation`` >
   extra classes (in the order given) > ``normal``; source class names rank as the study class
   they map to (:data:`lumbardx.data.classes.STUDY_ALIASES`), so the rules hold under the
   ``all`` class mapping too. Herniation and spondylolisthesis co-exist:
   both stay in ``findings`` while the status names the slip. ``confidence`` is the best score
   of the status class (``None`` for ground truth).

Severity fields are filled later by :mod:`lumbardx.clinical.severity`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from lumbardx.clinical.levels import (LevelNaming, SpineCurve, fit_spine_curve, local_spacing,
                                      name_levels, sacrum_recognised)
from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.classes import STUDY_ALIASES, ClassMap

SLIP = "spondylolisthesis"
HERNIATION = "herniation"
NORMAL = "normal"
OFF_SPINE = 1.0
MERGE = 0.5


@dataclass
class Finding:
    """One class called on one disc: its ``label``, best ``score`` (``None`` for ground truth)
    and that ``box`` (pixels, :mod:`lumbardx.data.boxes` convention)."""

    label: str
    score: float | None
    box: Box


@dataclass
class DiscFindings:
    """One disc and what was found on it.

    Attributes:
        level: level name (``"L4-L5"``), counted up from the lowest disc.
        level_uncertain: whether the name may be off (sacrum not recognised, gap above it).
        status: the highest-priority finding (rule 5), ``"normal"`` for a normal disc.
        confidence: best score of the status class, ``None`` for ground truth.
        box: the box supporting the status.
        findings: every class found, in priority order.
        scores: best score per class among the disc's boxes (1.0 for ground truth).
        boxes: every box grouped into this disc.
        centre: ``(x, y)`` pixels, mean of the disc-box centres (the slip box's when alone).
        s: arc length of ``centre`` along the curve (pixels).
        spacing: local inter-disc spacing along the curve (pixels; ``nan`` with one disc).
        slip_percent, meyerding_grade, herniation_extent_mm: severity estimates (see
            :mod:`lumbardx.clinical.severity`), ``None`` until estimated or when not measurable.
        slip_method: how ``slip_percent`` was measured (``None``: not measured, or the vertebral
            body corners of :func:`lumbardx.clinical.severity.estimate_slip`).
        probabilities: the segment reader's calibrated probability per label
            (:mod:`lumbardx.stages.segments`), ``None`` when no segment reader ran.
    """

    level: str
    level_uncertain: bool
    status: str
    confidence: float | None
    box: Box
    findings: list[Finding]
    scores: dict[str, float]
    boxes: list[Box]
    centre: tuple[float, float]
    s: float
    spacing: float
    slip_percent: float | None = None
    meyerding_grade: str | None = None
    herniation_extent_mm: float | None = None
    slip_method: str | None = None
    probabilities: dict[str, float] | None = None

    def has(self, label: str) -> bool:
        """Whether ``label`` (or a source name of that study class) is among the findings."""
        return any(f.label == label or study_class(f.label) == label for f in self.findings)


@dataclass
class SpineFindings:
    """All discs of one image, top to bottom.

    Attributes:
        discs: the discs in order along the spine.
        sacrum_recognised: whether the lowest disc was taken as L5-S1 on evidence.
        sacrum_reason: why (rule of :func:`lumbardx.clinical.levels.sacrum_recognised`, or the
            caller's evidence).
        level_reasons: reasons for uncertain level names.
        missing_levels: level names skipped for gaps (discs presumed undetected).
        off_spine: boxes set aside as too far from the spine curve.
        curve: the fitted curve (``None`` without boxes).
        image_size: ``(width, height)`` pixels.
    """

    discs: list[DiscFindings]
    sacrum_recognised: bool
    sacrum_reason: str
    level_reasons: list[str] = field(default_factory=list)
    missing_levels: list[str] = field(default_factory=list)
    off_spine: list[Box] = field(default_factory=list)
    curve: SpineCurve | None = None
    image_size: tuple[int, int] = (0, 0)


def _centre(b: Box) -> np.ndarray:
    return np.array([(b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2])


def _contains(b: Box, p: np.ndarray) -> bool:
    return b.x1 <= p[0] <= b.x2 and b.y1 <= p[1] <= b.y2


def _group(s: np.ndarray, spacing: np.ndarray | float) -> list[list[int]]:
    """Rule 3 on sorted positions ``s`` with per-position (or one) spacing."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), s.shape)
    groups: list[list[int]] = []
    for i in range(len(s)):
        if groups and abs(s[i] - np.mean(s[groups[-1]])) < MERGE * sp[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def study_class(label: str) -> str | None:
    """The study class a label names (``"Lumbar Disc Bulge (LDB)"`` -> herniation), if any."""
    if label in (SLIP, HERNIATION, NORMAL):
        return label
    return STUDY_ALIASES.get(label.strip().lower())


def priority_order(labels: Sequence[str]) -> list[str]:
    """Rule 5's order for the classes ``labels``: slip, herniation, extras, normal (source
    names of the study classes, e.g. ``Spondylolisthesis``, rank as their study class)."""
    rank = {SLIP: 0, HERNIATION: 1, None: 2, NORMAL: 3}
    names = list(dict.fromkeys([SLIP, HERNIATION, *labels, NORMAL]))
    return sorted(names, key=lambda x: rank[study_class(x)])  # stable: extras keep their order


def best_per_label(found: Iterable[Finding], order: Sequence[str]) -> list[Finding]:
    """Rule 5: the best-scored finding of each label (a ground-truth finding, score ``None``,
    counts as 1; the first wins a tie), listed in ``order`` (a :func:`priority_order`)."""
    best: dict[str, Finding] = {}
    for f in found:
        if f.label not in best or (f.score or 1.0) > (best[f.label].score or 1.0):
            best[f.label] = f
    return [best[lab] for lab in order if lab in best]


def build_findings(boxes: Sequence[Box], image_size: tuple[int, int],
                   thresholds: Mapping[str, float] | None = None, default_threshold: float = 0.0,
                   sacrum: bool | None = None, lowest: str = "L5-S1",
                   classes: Sequence[str] = ()) -> SpineFindings:
    """Group boxes into discs along the spine, name their levels and give each a status.

    Args:
        boxes: boxes with study (or extra) class names in ``label``; ``score`` ``None`` for
            ground truth. Pixels, :mod:`lumbardx.data.boxes` convention.
        image_size: ``(width, height)`` in pixels.
        thresholds: class name -> minimum score (rule 1); ``None`` counts every box.
        default_threshold: threshold of classes missing from ``thresholds``.
        sacrum: image evidence from the caller (``True`` the sacrum is in view below the lowest
            disc, ``False`` it is not); ``None`` applies the sacrum rule of
            :mod:`lumbardx.clinical.levels`.
        lowest: name of the lowest disc when counted from the sacrum.
        classes: the model's class names (fixes the priority order of extra classes).

    Returns:
        The discs top to bottom with levels and statuses (rules in the module docstring).
    """
    thr = dict(thresholds or {})
    kept = [b for b in boxes
            if b.score is None or b.score >= thr.get(b.label, default_threshold)]
    discs_b = [b for b in kept if study_class(b.label) != SLIP]
    slips = [b for b in kept if study_class(b.label) == SLIP]
    anchor = discs_b if len(discs_b) >= 2 else discs_b + slips
    if not anchor:
        return SpineFindings([], False, "no boxes", image_size=image_size)
    heights = np.array([b.height for b in (discs_b or slips)])
    sp0 = 2.0 * float(np.median(heights)) if discs_b else float(np.median(heights))
    curve = fit_spine_curve(np.stack([_centre(b) for b in anchor]), spacing=sp0)

    # Rule 2-3: project, set aside off-spine boxes, group by arc length.
    c = np.stack([_centre(b) for b in discs_b]) if discs_b else np.zeros((0, 2))
    s, d = curve.project(c) if len(c) else (np.zeros(0), np.zeros(0))
    off = [b for b, dd in zip(discs_b, d) if abs(dd) > OFF_SPINE * sp0]
    keep = np.abs(d) <= OFF_SPINE * sp0
    order = np.argsort(s[keep])
    members = [discs_b[i] for i in np.flatnonzero(keep)[order]]
    ss = s[keep][order]
    groups = _group(ss, sp0)
    if len(groups) >= 2:
        spc = local_spacing(np.array([ss[g].mean() for g in groups]))
        per_box = np.empty(len(ss))
        for gi, g in enumerate(groups):
            per_box[g] = spc[gi]
        groups = _group(ss, per_box)
    disc_members: list[list[Box]] = [[members[i] for i in g] for g in groups]
    disc_s: list[float] = [float(ss[g].mean()) for g in groups]
    disc_c: list[np.ndarray] = [np.mean([_centre(b) for b in m], axis=0) for m in disc_members]

    # Rule 4: spondylolisthesis boxes.
    spc = local_spacing(np.array(disc_s)) if len(disc_s) >= 2 else np.full(len(disc_s), sp0)
    spc = np.where(np.isfinite(spc), spc, sp0)
    for b in sorted(slips, key=lambda x: -(x.score or 1.0)):
        bc = _centre(b)
        bs, bd = curve.project(bc[None])
        if abs(bd[0]) > OFF_SPINE * sp0 * 1.5:
            off.append(b)
            continue
        inside = [i for i, cc in enumerate(disc_c) if _contains(b, cc)]
        if inside:
            target = min(inside, key=lambda i: float(np.linalg.norm(disc_c[i] - bc)))
        else:
            near = [i for i in range(len(disc_s)) if abs(disc_s[i] - bs[0]) < MERGE * spc[i]]
            target = min(near, key=lambda i: abs(disc_s[i] - bs[0])) if near else -1
        if target >= 0:
            disc_members[target].append(b)
            continue
        pos = int(np.searchsorted(disc_s, bs[0]))
        disc_members.insert(pos, [b])
        disc_s.insert(pos, float(bs[0]))
        disc_c.insert(pos, bc)
        spc = np.insert(spc, pos, spc[min(pos, len(spc) - 1)] if len(spc) else sp0)

    if not disc_members:  # every box set aside (scattered, or boxes without height)
        return SpineFindings([], False, "no boxes on a spine", off_spine=off, curve=curve,
                             image_size=image_size)

    # Levels.
    s_arr = np.array(disc_s)
    spacing = local_spacing(s_arr) if len(s_arr) >= 2 else np.full(len(s_arr), np.nan)
    lowest_box = max(disc_members[-1], key=lambda b: b.y2)
    if sacrum is None:
        recognised, reason = sacrum_recognised(curve, disc_s[-1], float(spacing[-1]),
                                               image_size, lowest_box.xyxy())
    else:
        recognised = bool(sacrum)
        reason = "sacrum in view (caller's evidence)" if sacrum else \
            "sacrum not in view (caller's evidence)"
    naming: LevelNaming = name_levels(s_arr, recognised, lowest=lowest, spacing=spacing)

    prio = priority_order([*classes, *(b.label for m in disc_members for b in m)])
    discs: list[DiscFindings] = []
    for i, m in enumerate(disc_members):
        found = best_per_label((Finding(b.label, b.score, b) for b in m), prio)
        discs.append(DiscFindings(
            level=naming.names[i], level_uncertain=naming.uncertain[i], status=found[0].label,
            confidence=found[0].score, box=found[0].box, findings=found,
            scores={f.label: 1.0 if f.score is None else float(f.score) for f in found},
            boxes=list(m), centre=(float(disc_c[i][0]), float(disc_c[i][1])), s=disc_s[i],
            spacing=float(spacing[i])))
    return SpineFindings(discs, recognised, reason, naming.reasons, naming.missing, off, curve,
                         image_size)


def recognise_sacrum(spine: SpineFindings, reason: str) -> None:
    """Take the sacrum as recognised below the lowest disc on other evidence (``reason``) and
    name the levels again (:func:`lumbardx.clinical.levels.name_levels`), in place: the names
    counted from L5-S1 stay, the flags and reasons that came from the sacrum rule go, those
    of gaps stay."""
    if spine.sacrum_recognised or not spine.discs:
        return
    s = np.array([d.s for d in spine.discs])
    spacing = np.array([d.spacing for d in spine.discs])
    naming = name_levels(s, True, spacing=spacing)
    for d, name, uncertain in zip(spine.discs, naming.names, naming.uncertain):
        d.level, d.level_uncertain = name, uncertain
    spine.sacrum_recognised, spine.sacrum_reason = True, reason
    spine.level_reasons, spine.missing_levels = list(naming.reasons), list(naming.missing)


def boxes_from_annotation(ann: ImageAnnotation, class_map: ClassMap) -> list[Box]:
    """The annotation's boxes renamed to ``class_map`` targets; unmapped classes dropped."""
    out = []
    for b in ann.boxes:
        target = class_map.target(b.label)
        if target is not None:
            out.append(Box(target, b.x1, b.y1, b.x2, b.y2, score=b.score,
                           difficult=b.difficult, truncated=b.truncated))
    return out


def match_discs(truth: SpineFindings, pred: SpineFindings) -> list[int | None]:
    """Match each ground-truth disc to the predicted disc at the same level of the spine.

    Predicted disc centres are projected onto the **ground-truth** curve; a pair is allowed
    when the arc-length distance is below half the ground-truth local spacing (the same rule
    that groups boxes into one disc) and the predicted centre lies within ``OFF_SPINE``
    spacings of the curve. Among allowed pairs, a one-to-one assignment minimising the summed
    arc-length distance is taken (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

    Returns:
        Per ground-truth disc, the index of its predicted disc in ``pred.discs``, or ``None``.
    """
    out: list[int | None] = [None] * len(truth.discs)
    if not truth.discs or not pred.discs or truth.curve is None:
        return out
    sp = np.array([d.spacing for d in truth.discs])
    if not np.isfinite(sp).any():
        sp = np.full(len(sp), 2.0 * float(np.median([d.box.height for d in truth.discs])))
    sp = np.where(np.isfinite(sp), sp, np.nanmedian(sp))
    ps, pd = truth.curve.project(np.array([d.centre for d in pred.discs]))
    ts = np.array([d.s for d in truth.discs])
    cost = np.abs(ts[:, None] - ps[None, :])
    allowed = (cost < MERGE * sp[:, None]) & (np.abs(pd)[None, :] <= OFF_SPINE * sp[:, None])
    big = 1e9
    rows, cols = linear_sum_assignment(np.where(allowed, cost, big))
    for r, col in zip(rows, cols):
        if allowed[r, col]:
            out[r] = int(col)
    return out
