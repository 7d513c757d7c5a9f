"""PACS API: search sagittal series, pull one into the worklist, push a study's SR and
Secondary Capture back (docs/api.md, "PACS"). Patient IDs travel in request bodies only."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lumbardx.app.accounts import User
from lumbardx.app.context import AppContext, ctx, current_user
from lumbardx.app.routes_studies import store_staged, study_folder
from lumbardx.app.uploads import UploadError, stage_folder
from lumbardx.data.errors import InputError
from lumbardx.pacs import SC_FILENAME, SR_FILENAME
from lumbardx.pacs.client import PacsClient, PacsError
from lumbardx.pacs.config import redact_url, resolve_settings

router = APIRouter(prefix="/api")
_UID = r"^[0-9]+(\.[0-9]+)*$"


class SearchBody(BaseModel):
    """Search filters (at least one)."""

    patient_id: str | None = Field(None, max_length=64)
    study_uid: str | None = Field(None, max_length=64, pattern=_UID)
    sagittal_only: bool = True


class PullBody(BaseModel):
    """The series to retrieve."""

    study_uid: str = Field(max_length=64, pattern=_UID)
    series_uid: str = Field(max_length=64, pattern=_UID)


def client(c: AppContext) -> PacsClient:
    """A client for the configured PACS (503 when none is configured)."""
    url = c.settings.pacs_url
    if not url:
        raise HTTPException(503, "no PACS configured (start the server with --pacs-url)")
    try:
        settings = resolve_settings(url, credentials_file=c.settings.pacs_credentials_file)
    except InputError as exc:
        raise HTTPException(503, f"PACS settings unusable: {exc.problem}") from None
    return PacsClient.from_settings(settings)


@router.get("/pacs")
def pacs_info(user: User = Depends(current_user), c: AppContext = Depends(ctx)
              ) -> dict[str, Any]:
    """Whether a PACS is configured, and its URL without credentials."""
    url = c.settings.pacs_url
    return {"configured": bool(url), "url": redact_url(url) if url else None}


@router.post("/pacs/search")
def pacs_search(body: SearchBody, user: User = Depends(current_user),
                c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Series matching a Patient ID and/or Study Instance UID (sagittal only by default)."""
    if not body.patient_id and not body.study_uid:
        raise HTTPException(422, "give patient_id and/or study_uid")
    if body.patient_id:
        c.redactor.register([body.patient_id])
    try:
        with client(c) as pacs:
            found = pacs.find_series(patient_id=body.patient_id, study_uid=body.study_uid,
                                     sagittal_only=body.sagittal_only)
    except PacsError as exc:
        raise HTTPException(502, exc.problem) from None
    c.audit.append(user.name, "pacs_search", None, results=len(found))
    return {"series": [asdict(s) for s in found]}


@router.post("/pacs/pull", status_code=201)
def pacs_pull(body: PullBody, user: User = Depends(current_user),
              c: AppContext = Depends(ctx)) -> JSONResponse:
    """Retrieve one series and store it as a study (analysed like an upload)."""
    staging = c.studies.new_staging()
    try:
        with client(c) as pacs:
            pacs.pull_series(body.study_uid, body.series_uid, staging / "pulled")
        staged = stage_folder(staging / "pulled", staging)
    except PacsError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise HTTPException(404 if exc.status == 404 else 502, exc.problem) from None
    except UploadError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise HTTPException(exc.status, exc.detail) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging / "pulled", ignore_errors=True)
    return store_staged(c, staged, "pacs", user, "pacs_pull")


@router.post("/studies/{key}/push")
async def pacs_push(key: str, user: User = Depends(current_user),
                    c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Send the study's DICOM SR and overlay Secondary Capture to the PACS."""
    folder = study_folder(c, key)
    paths = [folder / SR_FILENAME, folder / SC_FILENAME]
    if not all(p.is_file() for p in paths):
        raise HTTPException(409, "the study has no DICOM results to send (not analysed, or "
                                 "not read from DICOM)")

    def push() -> list[str]:
        with client(c) as pacs:
            return [p.name for p in pacs.push(paths)]

    try:
        stored = await run_in_threadpool(push)
    except PacsError as exc:
        raise HTTPException(502, exc.problem) from None
    except InputError as exc:
        raise HTTPException(409, exc.problem) from None
    c.audit.append(user.name, "pacs_push", key, stored=stored)
    return {"stored": stored}
