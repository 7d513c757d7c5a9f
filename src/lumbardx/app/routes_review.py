"""Corrections API: accept / reject / edit / add / delete boxes and complete the review; a
completed review is written as training data (docs/api.md, "Corrections") and becomes the
study's record: its overlay, findings.json, reports and SR are rewritten as reviewed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from lumbardx.app.accounts import User, utc_now
from lumbardx.app.context import AppContext, ctx, current_user
from lumbardx.app.files import read_json, write_json
from lumbardx.app.review import REVIEW_LOCK, ReviewError, apply, training_boxes
from lumbardx.app.routes_studies import study_folder
from lumbardx.data.errors import InputError

router = APIRouter(prefix="/api/studies/{key}/review")


class BoxUpdate(BaseModel):
    """New edges and/or class of a box."""

    box: list[float] | None = None
    label: str | None = None


class NewBox(BaseModel):
    """A box drawn by the reader."""

    label: str
    box: list[float]


class Complete(BaseModel):
    """Finish the review; ``accept_pending`` accepts boxes not yet decided."""

    accept_pending: bool = False


def export(c: AppContext, key: str, review: dict[str, Any]) -> None:
    """Write the study into ``DATA_DIR/corrections`` (see :mod:`lumbardx.app.corrections`)."""
    folder = c.studies.folder(key)
    patient_id = None
    try:
        header = c.studies.header(key)
    except InputError:
        header = None
    if header is not None:
        c.redactor.register_header(header)
        patient_id = str(header.get("PatientID", "") or "") or None
    c.corrections.write(key, folder / "image.png", review["width"], review["height"],
                        training_boxes(review), review["classes"], patient_id)


def _act(c: AppContext, key: str, user: User, action: str, box_id: str | None = None,
         body: dict[str, Any] | None = None) -> dict[str, Any]:
    folder = study_folder(c, key)
    path = folder / "review.json"
    with REVIEW_LOCK:
        if not path.exists():
            raise HTTPException(409, "the study is not analysed yet")
        try:
            review, detail = apply(read_json(path), action, user.name, box_id, body)
        except ReviewError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        write_json(path, review)
        if review["state"] == "complete":
            export(c, key, review)
            if action == "complete":
                c.studies.update(key, status="reviewed", reviewed_at=utc_now())
    c.audit.append(user.name, f"correction_{action}", key, **detail)
    if review["state"] == "complete":  # the reports, SR and overlay now state the review
        c.analyser.submit_reviewed(key)
    return review


@router.post("/boxes/{box_id}/accept")
def accept(key: str, box_id: str, user: User = Depends(current_user),
           c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Accept a model box."""
    return _act(c, key, user, "accept", box_id)


@router.post("/boxes/{box_id}/reject")
def reject(key: str, box_id: str, user: User = Depends(current_user),
           c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Reject a box (kept in the review, left out of the training data)."""
    return _act(c, key, user, "reject", box_id)


@router.patch("/boxes/{box_id}")
def update(key: str, box_id: str, body: BoxUpdate, user: User = Depends(current_user),
           c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Move a box's edges and/or change its class."""
    return _act(c, key, user, "update", box_id, body.model_dump(exclude_none=True))


@router.post("/boxes", status_code=201)
def add(key: str, body: NewBox, user: User = Depends(current_user),
        c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Add a box the model missed."""
    return _act(c, key, user, "add", None, body.model_dump())


@router.delete("/boxes/{box_id}")
def delete(key: str, box_id: str, user: User = Depends(current_user),
           c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Delete a box drawn by the reader."""
    return _act(c, key, user, "delete", box_id)


@router.post("/complete")
def complete(key: str, body: Complete | None = None, user: User = Depends(current_user),
             c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Finish the review: the study becomes ``reviewed`` and training data."""
    return _act(c, key, user, "complete", None, (body or Complete()).model_dump())


@router.get("")
def get_review(key: str, user: User = Depends(current_user),
               c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """The review object."""
    path = study_folder(c, key) / "review.json"
    if not path.exists():
        raise HTTPException(409, "the study is not analysed yet")
    return read_json(path)
