"""The FastAPI application factory of ``lumbardx serve``.

>>> app = create_app(AppSettings(data_dir=Path("/srv/lumbardx"), weights=Path("best.pt")))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lumbardx.app import phi
from lumbardx.app.accounts import UserStore
from lumbardx.app.analysis import Analyser
from lumbardx.app.audit import AuditLog
from lumbardx.app.context import AppContext
from lumbardx.app.corrections import CorrectionsWriter
from lumbardx.app.files import private_dir
from lumbardx.app.security import Authenticate, BodyLimit, SecurityHeaders
from lumbardx.app.sessions import LoginLimiter, SessionStore, load_secret
from lumbardx.app.settings import MB, AppSettings
from lumbardx.app.studies import StudyStore
from lumbardx.app.teaching import TeachingStore

log = logging.getLogger(__name__)

#: Body limit of every request but a study upload (JSON bodies are small).
SMALL_BODY_BYTES = 1 * MB


def build_context(settings: AppSettings, diagnoser: Any = None) -> AppContext:
    """Create the data folder's stores (folders 0700, secret key on first start)."""
    root = private_dir(settings.data_dir)
    secret = load_secret(root / "secret.key")
    studies = StudyStore(root)
    for leftover in studies.staging_root.iterdir():  # uploads cut off by a restart
        shutil.rmtree(leftover, ignore_errors=True)
    audit = AuditLog(root / "audit.jsonl")

    def analysed(key: str, meta: dict[str, Any]) -> None:
        audit.append(None, "analysed" if meta["status"] == "analysed" else "analysis_failed",
                     key, n_findings=meta.get("n_findings"))

    redactor = phi.PhiRedactor()
    phi.install(redactor)
    return AppContext(
        settings=settings, secret=secret, users=UserStore(root / "users.json"),
        sessions=SessionStore(secret, settings.session_idle_s, settings.session_max_s),
        limiter=LoginLimiter(settings.login_max_failures, settings.login_window_s),
        audit=audit, redactor=redactor, studies=studies,
        analyser=Analyser(settings, studies, diagnoser, on_done=analysed),
        corrections=CorrectionsWriter(root / "corrections", secret),
        teaching=TeachingStore(root / "teaching", settings.teaching_folders,
                               settings.teaching_max_cases))


def create_app(settings: AppSettings, *, diagnoser: Any = None) -> FastAPI:
    """The web app.

    Args:
        settings: data folder, model, PACS, limits.
        diagnoser: an already loaded :class:`lumbardx.diagnosis.Diagnoser` (else loaded from
            ``settings`` when the first study is analysed).
    """
    from lumbardx import __version__
    from lumbardx.app import (pages, routes_auth, routes_pacs, routes_review, routes_slices,
                              routes_studies, routes_teaching)

    context = build_context(settings, diagnoser)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        context.analyser.shutdown()

    app = FastAPI(title="lumbardx", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.ctx = context
    for module in (routes_auth, routes_studies, routes_slices, routes_review, routes_pacs,
                   routes_teaching, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=settings.static_dir, check_dir=False),
              name="static")

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/api/studies":
            return settings.max_upload_bytes
        return SMALL_BODY_BYTES

    # add_middleware puts each new one outside the previous: the order below is inner first.
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(Authenticate, users=context.users, sessions=context.sessions)
    app.add_middleware(SecurityHeaders)
    return app
