"""A reader's review of a study's findings, as reports and the DICOM SR state it.

The web app keeps a review as JSON (``review.json``, :mod:`lumbardx.app.review`): every model
box with the reader's decision (``pending``, ``accepted``, ``rejected``, ``edited``) and the
boxes the reader drew (``added``). :class:`ReviewRecord` is that review read for the record:
who reviewed and when, and for each box where it came from and what the reader did with it.

:func:`reviewed_findings` turns the boxes the reader kept (accepted, edited, added) into discs
with :func:`lumbardx.clinical.findings.build_findings`, the grouping the model's boxes go
through; levels keep the names the model gave its boxes, and a disc the reader added is named
by counting from them (:func:`anchored_levels`), so a reader's box gets its disc level by the
same logic as the model's. A box the reader drew or whose class the reader changed carries no
model score: it is the reader's call.

Boxes are ``[x1, y1, x2, y2]`` pixels of the analysed image (:mod:`lumbardx.data.boxes`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lumbardx.clinical.findings import SpineFindings, build_findings
from lumbardx.clinical.levels import DISC_LEVELS
from lumbardx.data.boxes import Box

#: Decisions that keep a box in the reviewed findings.
KEPT: tuple[str, ...] = ("accepted", "edited", "added")
#: How a report words each decision.
DECISION_WORDS: dict[str, str] = {"pending": "not reviewed", "accepted": "confirmed",
                                  "edited": "changed", "rejected": "rejected",
                                  "added": "added by the reader"}
#: What a report says of a study nobody reviewed.
NOT_REVIEWED = "not reviewed (model output; no reader has confirmed these findings)"


def _coords(raw: Any) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in raw)
    return x1, y1, x2, y2


@dataclass(frozen=True)
class ReviewedBox:
    """One box of a review.

    Attributes:
        box_id: ``m<i>`` (model) or ``r<i>`` (drawn by the reader).
        label: the class now (after any change).
        box: ``(x1, y1, x2, y2)`` pixels now.
        origin: ``"model"`` or ``"reader"``.
        decision: one of :data:`DECISION_WORDS`.
        level: the disc level the box belongs to, when known.
        score: the model's score when the model's call stands; ``None`` for the reader's call.
        model_label, model_box, model_score: what the model said before the reader changed it
            (``None`` for a reader's box, or a review that did not record it).
    """

    box_id: str
    label: str
    box: tuple[float, float, float, float]
    origin: str
    decision: str
    level: str | None = None
    score: float | None = None
    model_label: str | None = None
    model_box: tuple[float, float, float, float] | None = None
    model_score: float | None = None

    @property
    def readers_call(self) -> bool:
        """Whether the class shown is the reader's (drawn by the reader, or class changed)."""
        return self.origin == "reader" or (self.model_label is not None
                                           and self.model_label != self.label)

    @property
    def what(self) -> str:
        """The reader's action in words: ``"confirmed"``, ``"class changed from herniation;
        box moved"``, ``"rejected"``, ``"added by the reader"``, ``"not reviewed"``."""
        if self.decision != "edited":
            return DECISION_WORDS.get(self.decision, self.decision)
        parts = []
        if self.model_label is not None and self.model_label != self.label:
            parts.append(f"class changed from {self.model_label}")
        if self.model_box is not None and self.model_box != self.box:
            parts.append("box moved")
        return "; ".join(parts) or "changed"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``findings.json`` ``review.boxes``)."""
        return {"id": self.box_id, "label": self.label, "box": list(self.box),
                "origin": self.origin, "decision": self.decision, "action": self.what,
                "level": self.level, "score": self.score, "model_label": self.model_label,
                "model_box": None if self.model_box is None else list(self.model_box),
                "model_score": self.model_score}


@dataclass(frozen=True)
class ReviewRecord:
    """A review as the record states it.

    Attributes:
        state: ``"open"`` (in progress) or ``"complete"``.
        reviewer: who made the last decision (the one who completed it, when complete).
        reviewed_at: when (ISO 8601, UTC).
        boxes: every box, model's and reader's, in review order.
    """

    state: str
    reviewer: str | None
    reviewed_at: str | None
    boxes: tuple[ReviewedBox, ...]

    @classmethod
    def from_json(cls, review: dict[str, Any]) -> ReviewRecord:
        """Read a ``review.json`` object (:mod:`lumbardx.app.review`)."""
        boxes = []
        for b in review.get("boxes", []):
            model_box = b.get("model_box")
            score = b.get("score")
            boxes.append(ReviewedBox(
                box_id=str(b["id"]), label=str(b["label"]), box=_coords(b["box"]),
                origin=str(b.get("origin", "model")), decision=str(b.get("decision", "pending")),
                level=b.get("level"), score=None if score is None else float(score),
                model_label=b.get("model_label"),
                model_box=None if model_box is None else _coords(model_box),
                model_score=b.get("model_score")))
        return cls(str(review.get("state", "open")), review.get("updated_by"),
                   review.get("updated_at"), tuple(boxes))

    @property
    def complete(self) -> bool:
        """Whether the reader finished the review."""
        return self.state == "complete"

    def kept(self) -> list[ReviewedBox]:
        """The boxes in the reviewed findings (accepted, edited, added)."""
        return [b for b in self.boxes if b.decision in KEPT]

    def counts(self) -> dict[str, int]:
        """Boxes per decision word (``{"confirmed": 5, "changed": 1, ...}``)."""
        c = Counter(DECISION_WORDS.get(b.decision, b.decision) for b in self.boxes)
        return {w: c[w] for w in DECISION_WORDS.values() if c[w]}

    def status_text(self) -> str:
        """One line for a report header, e.g. ``"reviewed by alice on 2026-12-06 10:31 UTC:
        5 confirmed, 1 changed, 1 rejected, 1 added by the reader"``."""
        counts = ", ".join(f"{n} {w}" for w, n in self.counts().items()) or "no boxes"
        who = self.reviewer or "unknown reader"
        when = _when(self.reviewed_at)
        if self.complete:
            return f"reviewed by {who}{when}: {counts}"
        return f"review in progress (last change by {who}{when}): {counts}; {NOT_REVIEWED}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``findings.json`` ``review``)."""
        return {"state": self.state, "reviewer": self.reviewer, "reviewed_at": self.reviewed_at,
                "summary": self.status_text(), "counts": self.counts(),
                "boxes": [b.to_dict() for b in self.boxes]}


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return " on " + iso.replace("T", " ")[:16] + " UTC"


def anchored_levels(spine: SpineFindings, known: dict[int, str]) -> list[str]:
    """Level names of ``spine``'s discs that keep the names the model gave: a disc holding a
    box of known level (``known``: ``id(box)`` -> level) takes it; another disc is named from
    the nearest disc with a known level, counting along :data:`~lumbardx.clinical.levels.
    DISC_LEVELS` as ``spine``'s own names step (so gaps count as they do there). Without any
    known box, ``spine``'s own names."""
    names = [d.level for d in spine.discs]
    anchors: dict[int, str] = {}
    for i, d in enumerate(spine.discs):
        levels = [known[id(b)] for b in d.boxes if id(b) in known]
        if levels:
            anchors[i] = Counter(levels).most_common(1)[0][0]
    if not anchors:
        return names
    out = []
    for i, own in enumerate(names):
        if i in anchors:
            out.append(anchors[i])
            continue
        j = min(anchors, key=lambda a: (abs(a - i), a))
        if own in DISC_LEVELS and names[j] in DISC_LEVELS and anchors[j] in DISC_LEVELS:
            k = DISC_LEVELS.index(anchors[j]) + DISC_LEVELS.index(own) \
                - DISC_LEVELS.index(names[j])
            out.append(DISC_LEVELS[k] if 0 <= k < len(DISC_LEVELS) else "?")
        else:
            out.append("?")
    return out


def reviewed_findings(record: ReviewRecord, model_spine: SpineFindings,
                      classes: Sequence[str] = ()) -> SpineFindings:
    """The discs of the boxes the reader kept, grouped as the model's boxes are
    (:func:`lumbardx.clinical.findings.build_findings`, every kept box counted: the reader's
    decision replaces the model's thresholds) and named as the review names their boxes
    (:func:`anchored_levels`: the model's names stand). Level doubts the model's reading
    raised about the whole spine (e.g. the segment reader's check that the lowest disc is
    L5-S1) stay: when every model disc was flagged, every reviewed disc is, with the model's
    reasons."""
    kept = record.kept()
    boxes = [Box(b.label, *b.box, score=None if b.readers_call else b.score) for b in kept]
    spine = build_findings(boxes, model_spine.image_size, classes=classes)
    known = {id(box): b.level for box, b in zip(boxes, kept) if b.level}
    for d, name in zip(spine.discs, anchored_levels(spine, known)):
        d.level = name
    if model_spine.discs and all(d.level_uncertain for d in model_spine.discs):
        for d in spine.discs:
            d.level_uncertain = True
        spine.level_reasons += [r for r in model_spine.level_reasons
                                if r not in spine.level_reasons]
    return spine


def box_levels(boxes: Sequence[Box], image_size: tuple[int, int],
               known: Sequence[str | None], classes: Sequence[str] = ()) -> list[str | None]:
    """The disc level of each box (``None`` for a box set aside off the spine): the boxes are
    grouped into discs by the logic of the model's boxes
    (:func:`lumbardx.clinical.findings.build_findings`) and the discs named by
    :func:`anchored_levels` from the ``known`` levels (the model's, per box; ``None``:
    to be named)."""
    boxes = list(boxes)
    spine = build_findings(boxes, image_size, classes=classes)
    names = anchored_levels(spine, {id(b): k for b, k in zip(boxes, known) if k})
    where: dict[int, str] = {}
    for d, name in zip(spine.discs, names):
        for b in d.boxes:
            where[id(b)] = name
    return [where.get(id(b)) for b in boxes]
