"""The objects one running app shares between its routes (``app.state.ctx``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from lumbardx.app.accounts import User, UserStore
from lumbardx.app.analysis import Analyser
from lumbardx.app.audit import AuditLog
from lumbardx.app.corrections import CorrectionsWriter
from lumbardx.app.phi import PhiRedactor
from lumbardx.app.sessions import LoginLimiter, SessionStore
from lumbardx.app.settings import AppSettings
from lumbardx.app.studies import StudyStore
from lumbardx.app.teaching import TeachingStore


@dataclass
class AppContext:
    """Settings and stores of one app instance."""

    settings: AppSettings
    secret: bytes
    users: UserStore
    sessions: SessionStore
    limiter: LoginLimiter
    audit: AuditLog
    redactor: PhiRedactor
    studies: StudyStore
    analyser: Analyser
    corrections: CorrectionsWriter
    teaching: TeachingStore


def ctx(request: Request) -> AppContext:
    """The app's context (FastAPI dependency)."""
    return request.app.state.ctx


def current_user(request: Request) -> User:
    """The authenticated user (set by :class:`lumbardx.app.security.Authenticate`)."""
    user = getattr(request.state, "user", None)
    if user is None:  # only reachable if a public route asks for a user
        raise HTTPException(401, "not signed in")
    return user


def admin_user(request: Request) -> User:
    """The authenticated user, who must be an admin (403 otherwise)."""
    user = current_user(request)
    if not user.is_admin:
        raise HTTPException(403, "administrators only")
    return user
