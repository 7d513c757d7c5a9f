"""Sign-in, sign-out and session routes (docs/api.md, "Authentication API"), and the audit
check for administrators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from lumbardx.app.accounts import User
from lumbardx.app.audit import verify_audit
from lumbardx.app.context import AppContext, admin_user, ctx, current_user
from lumbardx.app.security import CSRF_HEADER
from lumbardx.app.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE

router = APIRouter(prefix="/api")


class LoginBody(BaseModel):
    """User name and password."""

    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


def _secure(request: Request, c: AppContext) -> bool:
    return c.settings.secure_cookies or request.url.scheme == "https"


def _expires_at(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    t = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@router.get("/auth/login-token")
def login_token(request: Request, response: Response,
                c: AppContext = Depends(ctx)) -> dict[str, str]:
    """A CSRF token for the login form, paired with an HttpOnly cookie (double submit)."""
    token, cookie = c.sessions.new_login_token()
    response.set_cookie(LOGIN_CSRF_COOKIE, cookie, httponly=True, samesite="strict",
                        secure=_secure(request, c), path="/api/auth", max_age=3600)
    return {"csrf_token": token}


@router.post("/auth/login")
def login(body: LoginBody, request: Request, response: Response,
          c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Check the password and start a session (failures lock the account, with back-off;
    an address spraying many accounts waits)."""
    if not c.sessions.check_login_token(request.cookies.get(LOGIN_CSRF_COOKIE),
                                        request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "CSRF token missing or invalid: reload the login page")
    client = request.client.host if request.client else "unknown"
    wait = c.limiter.retry_after(body.username, client)
    if wait > 0:
        c.audit.append(body.username[:64], "login_refused_rate_limit")
        raise HTTPException(429, "too many failed sign-ins: try again later",
                            headers={"Retry-After": str(int(wait) + 1)})
    user = c.users.verify_password(body.username, body.password)
    if user is None:
        c.limiter.failed(body.username, client)
        c.audit.append(body.username[:64], "login_failed")
        raise HTTPException(401, "wrong user name or password")
    c.limiter.succeeded(body.username)
    session, cookie = c.sessions.create(user)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict",
                        secure=_secure(request, c), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/api/auth", httponly=True,
                           samesite="strict", secure=_secure(request, c))
    c.audit.append(user.name, "login")
    return {"user": user.name, "role": user.role, "csrf_token": session.csrf_token,
            "expires_at": _expires_at(c.sessions.expires_in(session))}


@router.post("/auth/logout", status_code=204)
def logout(request: Request, response: Response, user: User = Depends(current_user),
           c: AppContext = Depends(ctx)) -> Response:
    """End the session."""
    session = request.state.session
    if session is not None:
        c.sessions.end(session.sid)
    c.audit.append(user.name, "logout")
    out = Response(status_code=204)
    out.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                      secure=_secure(request, c))
    return out


@router.get("/auth/session")
def session_info(request: Request, user: User = Depends(current_user),
                 c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Who is signed in, how, and the CSRF token of the session."""
    session = request.state.session
    return {"user": user.name, "role": user.role, "auth": request.state.auth,
            "csrf_token": session.csrf_token if session else None,
            "expires_at": _expires_at(c.sessions.expires_in(session)) if session else None}


@router.get("/admin/audit/verify")
def audit_verify(user: User = Depends(admin_user),
                 c: AppContext = Depends(ctx)) -> dict[str, Any]:
    """Check the audit log's hash chain (administrators)."""
    check = verify_audit(c.audit.path)
    return {"ok": check.ok, "lines": check.lines, "problem": check.problem, "line": check.line}
