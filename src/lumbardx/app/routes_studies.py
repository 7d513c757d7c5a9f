"""Studies API: worklist, upload, detail, images, overlay, reports, patient identity and
re-analysis (docs/api.md, "Studies")."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from lumbardx.app.accounts import User
from lumbardx.app.context import AppContext, ctx, current_user
from lumbardx.app.files import read_json
from lumbardx.app.security import REPORT_CSP, BodyTooLarge
from lumbardx.app.studies import STATUSES, Quarantined, StudyNotFound, StudyStore, png_bytes
from lumbardx.app.uploads import StagedStudy, UploadError, stage_upload
from lumbardx.data.errors import InputError
from lumbardx.data.images import window_to_uint8

router = APIRouter(prefix="/api")


def study_folder(c: AppContext, key: str) -> Path:
    """The study's folder, or 404."""
    try:
        return c.studies.folder(key)
    except StudyNotFound:
        raise HTTPException(404, f"no study {key[:32]!r}") from None


def store_staged(c: AppContext, staged: StagedStudy, origin: str, user: User,
                 action: str) -> JSONResponse:
    """Ingest staged files as a study, audit it, queue its analysis; the HTTP answer."""
    try:
        meta, duplicate = c.studies.ingest(staged, origin=origin, user=user.name,
                                           on_header=c.redactor.register_header)
    except Quarantined as q:
        c.audit.append(user.name, f"{action}_quarantined", None, quarantine_id=q.quarantine_id)
        return JSONResponse({"detail": q.detail, "quarantine_id": q.quarantine_id}, 422)
    key = meta["study_key"]
    c.audit.append(user.name, action, key, duplicate=duplicate, files=meta.get("n_files"))
    if not duplicate:
        result = c.analyser.submit(key)
        if isinstance(result, dict):
            meta = result
    return JSONResponse({"study": StudyStore.summary(meta), "duplicate": duplicate},
                        200 if duplicate else 201)


@router.get("/studies")
def worklist(status: str | None = None, limit: int = Query(200, ge=1, le=1000),
             user: User = Depends(current_user), c: AppContext = Depends(ctx)
             ) -> dict[str, Any]:
    """Worklist rows, newest first (no patient names or IDs)."""
    if status is not None and status not in STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(STATUSES)}")
    return {"studies": c.studies.list(status, limit)}


@router.post("/studies", status_code=201)
async def upload(request: Request, user: User = Depends(current_user),
                 c: AppContext = Depends(ctx)) -> JSONResponse:
    """One study: DICOM files, one PNG/JPEG or one ZIP of a DICOM folder (field ``files``)."""
    s = c.settings
    try:
        form = await request.form(max_files=s.max_zip_members, max_fields=16)
    except (HTTPException, BodyTooLarge):
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart
        raise HTTPException(400, f"cannot read the upload form ({type(exc).__name__}): send "
                                 "multipart/form-data with the field 'files'") from None
    staging = c.studies.new_staging()
    try:
        files = [(f.filename, f.file) for f in form.getlist("files")
                 if isinstance(f, UploadFile)]
        staged = await run_in_threadpool(stage_upload, files, staging,
                                         max_unpacked_bytes=s.max_unpacked_bytes,
                                         max_zip_members=s.max_zip_members)
    except UploadError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        c.audit.append(user.name, "upload_refused", None, status=exc.status)
        raise HTTPException(exc.status, exc.detail) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        await form.close()
    return await run_in_threadpool(store_staged, c, staged, "upload", user, "upload")


@router.get("/studies/{key}")
def study_detail(key: str, user: User = Depends(current_user),
                 c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Worklist row, findings, image facts and review of one study."""
    folder = study_folder(c, key)
    meta = c.studies.meta(key)
    findings = folder / "findings.json"
    review = folder / "review.json"
    c.audit.append(user.name, "view", key)
    return {"study": StudyStore.summary(meta),
            "findings": read_json(findings) if findings.exists() else None,
            "image": {"width": meta["width"], "height": meta["height"], "kind": meta["kind"],
                      "bits": meta["bits"], "pixel_range": meta["pixel_range"],
                      "default_window": meta["default_window"]},
            "review": read_json(review) if review.exists() else None}


@router.get("/studies/{key}/image.png")
def study_image(key: str, center: float | None = None, width: float | None = None,
                user: User = Depends(current_user), c: AppContext = Depends(ctx)) -> Response:
    """The analysed slice as 8-bit PNG; with ``center`` and ``width`` windowed from the stored
    pixel values at full bit depth."""
    folder = study_folder(c, key)
    if center is None and width is None:
        return FileResponse(folder / "image.png", media_type="image/png")
    if center is None or width is None or not np.isfinite(center) or not np.isfinite(width) \
            or width <= 0:
        raise HTTPException(422, "give both center and width (width > 0)")
    gray = window_to_uint8(c.studies.pixels(key), center - width / 2, center + width / 2)
    return Response(png_bytes(gray), media_type="image/png")


def _output(c: AppContext, key: str, name: str) -> Path:
    path = study_folder(c, key) / name
    if not path.is_file():
        raise HTTPException(404, f"{name} does not exist yet: the study is not analysed")
    return path


@router.get("/studies/{key}/overlay.png")
def study_overlay(key: str, user: User = Depends(current_user),
                  c: AppContext = Depends(ctx)) -> FileResponse:
    """The findings overlay."""
    return FileResponse(_output(c, key, "overlay.png"), media_type="image/png")


@router.get("/studies/{key}/findings.json")
def study_findings(key: str, user: User = Depends(current_user),
                   c: AppContext = Depends(ctx)) -> FileResponse:
    """The ``findings.json`` file."""
    return FileResponse(_output(c, key, "findings.json"), media_type="application/json")


@router.get("/studies/{key}/report.html")
def study_report_html(key: str, user: User = Depends(current_user),
                      c: AppContext = Depends(ctx)) -> FileResponse:
    """The HTML report, shown under a sandbox CSP (it embeds its style and image)."""
    path = _output(c, key, "report.html")
    c.audit.append(user.name, "download_report", key, format="html")
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": REPORT_CSP})


@router.get("/studies/{key}/report.pdf")
def study_report_pdf(key: str, user: User = Depends(current_user),
                     c: AppContext = Depends(ctx)) -> FileResponse:
    """The PDF report, as an attachment."""
    path = _output(c, key, "report.pdf")
    c.audit.append(user.name, "download_report", key, format="pdf")
    return FileResponse(path, media_type="application/pdf", filename=f"lumbardx-{key}.pdf")


@router.get("/studies/{key}/patient")
def study_patient(key: str, user: User = Depends(current_user),
                  c: AppContext = Depends(ctx)) -> dict[str, str | None]:
    """Patient identity from the DICOM header (all null for PNG/JPEG); audited."""
    study_folder(c, key)
    try:
        header = c.studies.header(key)
    except InputError:
        raise HTTPException(409, "the stored DICOM header cannot be read") from None
    c.audit.append(user.name, "view_identity", key)
    fields = {"patient_name": "PatientName", "patient_id": "PatientID",
              "birth_date": "PatientBirthDate", "sex": "PatientSex", "study_date": "StudyDate",
              "study_description": "StudyDescription", "accession_number": "AccessionNumber"}
    if header is None:
        return dict.fromkeys(fields)
    c.redactor.register_header(header)
    out: dict[str, str | None] = {}
    for name, keyword in fields.items():
        value = header.get(keyword)
        out[name] = str(value) if value is not None and str(value) != "" else None
    return out


@router.post("/studies/{key}/analyse", status_code=202)
def study_analyse(key: str, user: User = Depends(current_user),
                  c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Analyse the study again (e.g. after ``failed``); refused once reviewed."""
    study_folder(c, key)
    meta = c.studies.meta(key)
    if meta["status"] == "reviewed":
        raise HTTPException(409, "the study is reviewed: its findings are no longer re-made")
    meta = c.studies.update(key, status="new", error=None)
    c.audit.append(user.name, "analyse", key)
    result = c.analyser.submit(key)
    return {"study": StudyStore.summary(result if isinstance(result, dict) else meta)}
