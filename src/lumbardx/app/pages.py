"""The page: ``/login`` (public), ``/`` and ``/static/...`` (signed in; the login assets are
public). Files come from :attr:`AppSettings.static_dir`; authentication is enforced by
:class:`lumbardx.app.security.Authenticate` before these handlers run."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

router = APIRouter()


def _page(request: Request, name: str) -> FileResponse:
    folder: Path = request.app.state.ctx.settings.static_dir
    path = folder / name
    if not path.is_file():
        raise HTTPException(404, f"page {name} is not installed")
    return FileResponse(path, media_type="text/html; charset=utf-8")


@router.get("/", include_in_schema=False)
def index(request: Request) -> FileResponse:
    """The viewer (worklist, study, corrections, PACS, teaching)."""
    return _page(request, "index.html")


@router.get("/login", include_in_schema=False)
def login_page(request: Request) -> FileResponse:
    """The sign-in page."""
    return _page(request, "login.html")
