"""The reader's review of one study: decisions on the model's boxes and the reader's own boxes,
kept in ``studies/<key>/review.json`` (schema in docs/api.md, "Corrections").

Boxes are ``[x1, y1, x2, y2]`` in pixels of the analysed image, 0-based continuous corners
(:mod:`lumbardx.data.boxes`). Model boxes (ids ``m0, m1, ...``) are the finding boxes of
``findings.json`` in disc order; reader boxes get ids ``r0, r1, ...``. Decisions:
``pending`` (not looked at), ``accepted``, ``rejected``, ``edited`` (edges or class changed),
``added`` (drawn by the reader). Training data (:func:`training_boxes`) is every box not
``pending`` or ``rejected``.

A model box the reader changes keeps what the model said (``model_label``, ``model_box``,
``model_score``); when its class changes, its ``score`` becomes ``null``: the class is the
reader's call, not the model's. A box the reader draws (or a model box the reader moves) gets
the disc ``level`` that the grouping of the model's boxes gives it among the boxes not
rejected, named from the levels of the model's boxes (:func:`assign_levels`), updated after
each change.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence
from typing import Any

from lumbardx.app.accounts import utc_now
from lumbardx.data.boxes import Box

#: One writer of a study's ``review.json`` at a time: the review routes (a reader's action is a
#: read-modify-write) and the analyser (a new analysis starts a fresh review, or rewrites the
#: record of a complete one) take it around their read and write.
REVIEW_LOCK = threading.Lock()

DECISIONS: tuple[str, ...] = ("pending", "accepted", "rejected", "edited", "added")


class ReviewError(Exception):
    """A correction that cannot be applied: HTTP ``status`` (404, 409, 422) and ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def initial_review(findings: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """A fresh review of a ``findings.json`` object: every model box ``pending``."""
    boxes = []
    for disc in findings.get("findings", []):
        for f in disc.get("findings", []):
            boxes.append({"id": f"m{len(boxes)}", "label": f["label"],
                          "box": [float(v) for v in f["box"]], "score": f.get("score"),
                          "origin": "model", "decision": "pending", "level": disc.get("level")})
    image = findings["image"]
    return {"state": "open", "classes": list(classes), "width": int(image["width"]),
            "height": int(image["height"]), "updated_at": None, "updated_by": None,
            "boxes": boxes}


def _find(review: dict[str, Any], box_id: str) -> dict[str, Any]:
    for b in review["boxes"]:
        if b["id"] == box_id:
            return b
    raise ReviewError(404, f"no box {box_id!r} in this study")


def _check_box(review: dict[str, Any], box: Any) -> list[float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ReviewError(422, "box must be [x1, y1, x2, y2] in image pixels")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ReviewError(422, "box coordinates must be numbers") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ReviewError(422, "box coordinates must be finite")
    w, h = review["width"], review["height"]
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ReviewError(422, f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] must satisfy "
                               f"0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h}")
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ReviewError(422, "box must be at least one pixel wide and high")
    return [round(v, 2) for v in (x1, y1, x2, y2)]


def _check_label(review: dict[str, Any], label: Any) -> str:
    if label not in review["classes"]:
        raise ReviewError(422, f"unknown class {label!r}: use one of "
                               f"{', '.join(review['classes'])}")
    return str(label)


def apply(review: dict[str, Any], action: str, user: str, box_id: str | None = None,
          body: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply one correction to a copy of ``review``.

    Args:
        action: ``accept``, ``reject``, ``update`` (body ``box`` and/or ``label``), ``add``
            (body ``label`` and ``box``), ``delete`` (reader boxes only) or ``complete``
            (body ``accept_pending``).
        user: who made it.
        box_id: the box acted on (not for ``add`` / ``complete``).
        body: the request body.

    Returns:
        ``(new review, audit detail)`` -- the detail holds box ids, labels and coordinates.

    Raises:
        ReviewError: unknown box (404), not allowed now (409), invalid box or class (422).
    """
    new = copy.deepcopy(review)
    body = body or {}
    detail: dict[str, Any] = {"box_id": box_id}
    if action in ("accept", "reject"):
        b = _find(new, box_id or "")
        if b["origin"] == "reader" and action == "accept":
            raise ReviewError(409, "a box drawn by the reader needs no acceptance")
        b["decision"] = "accepted" if action == "accept" else "rejected"
        detail["label"] = b["label"]
    elif action == "update":
        b = _find(new, box_id or "")
        if "box" not in body and "label" not in body:
            raise ReviewError(422, "give 'box' and/or 'label'")
        old = {"label": b["label"], "box": list(b["box"])}
        if b["origin"] == "model" and "model_label" not in b:
            b.update(model_label=b["label"], model_box=list(b["box"]), model_score=b["score"])
        if "box" in body:
            b["box"] = _check_box(new, body["box"])
        if "label" in body:
            b["label"] = _check_label(new, body["label"])
        if b["origin"] == "model":
            # the model's score stands only for the model's class
            b["score"] = b["model_score"] if b["label"] == b["model_label"] else None
        if b["decision"] != "added":
            b["decision"] = "edited"
        detail.update(before=old, after={"label": b["label"], "box": b["box"]})
    elif action == "add":
        label = _check_label(new, body.get("label"))
        box = _check_box(new, body.get("box"))
        n = 1 + max((int(b["id"][1:]) for b in new["boxes"] if b["origin"] == "reader"),
                    default=-1)
        b = {"id": f"r{n}", "label": label, "box": box, "score": None, "origin": "reader",
             "decision": "added", "level": None}
        new["boxes"].append(b)
        detail.update(box_id=b["id"], label=label, box=box)
    elif action == "delete":
        b = _find(new, box_id or "")
        if b["origin"] != "reader":
            raise ReviewError(409, "a model box cannot be deleted: reject it")
        new["boxes"].remove(b)
        detail["label"] = b["label"]
    elif action == "complete":
        pending = [b["id"] for b in new["boxes"] if b["decision"] == "pending"]
        if pending and not body.get("accept_pending", False):
            raise ReviewError(409, f"{len(pending)} box(es) still pending "
                                   f"({', '.join(pending[:10])}): accept or reject them, or "
                                   "send accept_pending: true")
        for b in new["boxes"]:
            if b["decision"] == "pending":
                b["decision"] = "accepted"
        new["state"] = "complete"
        detail = {"accepted_pending": len(pending),
                  "training_boxes": len(training_boxes(new))}
    else:
        raise ValueError(f"unknown review action {action!r}")
    assign_levels(new)
    new["updated_at"], new["updated_by"] = utc_now(), user
    return new, detail


def assign_levels(review: dict[str, Any]) -> None:
    """Set, in place, the ``level`` of every box not rejected whose level is not the model's
    own (a reader's box, or a model box the reader moved): the boxes not rejected are grouped
    into discs by the logic of the model's boxes and named from the levels of the model boxes
    left where the model put them (:func:`lumbardx.clinical.reviewed.box_levels`)."""
    from lumbardx.clinical.reviewed import box_levels

    live = [b for b in review["boxes"] if b["decision"] != "rejected"]
    anchor = [b["origin"] == "model" and b.get("model_box", b["box"]) == b["box"] for b in live]
    levels = box_levels([Box(b["label"], *b["box"]) for b in live],
                        (review["width"], review["height"]),
                        [b["level"] if a else None for b, a in zip(live, anchor)],
                        review["classes"])
    for b, a, level in zip(live, anchor, levels):
        if not a:
            b["level"] = level


def training_boxes(review: dict[str, Any]) -> list[Box]:
    """The boxes that become training data (decision not ``pending`` / ``rejected``)."""
    return [Box(b["label"], *b["box"]) for b in review["boxes"]
            if b["decision"] not in ("pending", "rejected")]
