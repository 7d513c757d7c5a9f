"""HTTP security of the web app, as three ASGI middlewares (outermost first):

1. :class:`SecurityHeaders` -- security headers on every answer (docs/api.md, "Security
   model"), and a plain 500 answer (with the headers) for an unexpected error.
2. :class:`Authenticate` -- every request needs a live session cookie or a bearer token,
   except the login page, its assets and the two login API routes (:data:`PUBLIC`); a state-
   changing request with a session needs its CSRF token in ``X-CSRF-Token``. Unauthenticated:
   ``/api/...`` gets 401 JSON, every other path a 303 to ``/login``.
3. :class:`BodyLimit` -- request bodies above the limit get 413 (from ``Content-Length``
   before anything is read, and by counting the bytes of a chunked body), with
   ``Connection: close`` so that the server closes the connection instead of reading the rest
   of the body.

The authenticated :class:`~lumbardx.app.accounts.User` is put in ``scope["state"]["user"]``
(``request.state.user``), with ``auth`` (``"session"`` / ``"token"``) and ``session``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request

from lumbardx.app.accounts import UserStore
from lumbardx.app.sessions import SESSION_COOKIE, SessionStore

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
REPORT_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              "frame-ancestors 'none'; sandbox")
HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: (method, path) pairs served without authentication: the login page and its assets.
PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {(m, p) for m in ("GET", "HEAD") for p in (
        "/login", "/static/login.html", "/static/login.js", "/static/login.css",
        "/static/favicon.svg", "/api/auth/login-token")} | {("POST", "/api/auth/login")})


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class SecurityHeaders:
    """Adds the security headers to every HTTP answer; a route may set its own CSP (the
    stored HTML report does). ``https`` answers also get ``Strict-Transport-Security``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])]
                present = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", CSP.encode()))
                for name, value in HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                if scope.get("scheme") == "https":
                    headers.append((b"strict-transport-security",
                                    b"max-age=31536000; includeSubDomains"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:  # noqa: BLE001 - answer 500 with the headers, never a traceback
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send_with_headers, 500, {"detail": "internal error"})


class Authenticate:
    """Session or bearer-token authentication and CSRF checks (module docstring)."""

    def __init__(self, app: ASGIApp, users: UserStore, sessions: SessionStore) -> None:
        self.app, self.users, self.sessions = app, users, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        state = scope.setdefault("state", {})
        if (method, path) in PUBLIC:
            state.update(user=None, auth=None, session=None)
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        authorization = request.headers.get("authorization", "")
        user, auth, session = None, None, None
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer":
                user, auth = self.users.verify_token(token.strip()), "token"
        else:
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is not None:
                current = self.users.get(session.user.name)  # removed users lose access
                if current is None:
                    self.sessions.end(session.sid)
                    session = None
                else:
                    user, auth = current, "session"
        if user is None:
            if path.startswith("/api/"):
                await _send_json(send, 401, {"detail": "not signed in"},
                                 {"WWW-Authenticate": 'Bearer realm="lumbardx"'})
            else:
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/login"), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
            return
        if auth == "session" and method in UNSAFE_METHODS:
            sent = Headers(scope=scope).get(CSRF_HEADER, "")
            if not sent or not secrets.compare_digest(sent, session.csrf_token):  # type: ignore
                await _send_json(send, 403, {"detail": "CSRF token missing or invalid"})
                return
        state.update(user=user, auth=auth, session=session)
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body passes the limit; :class:`BodyLimit` answers 413.
    Handlers that catch broad exceptions while reading a body must let it through."""


#: Header of a 413 answer: the server then closes the connection (uvicorn does on this header)
#: rather than go on receiving, and discarding, an oversize body for as long as it is sent.
CLOSE = {"Connection": "close"}


class BodyLimit:
    """413 for request bodies above ``limit_for(path)`` bytes (with :data:`CLOSE`)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        detail = {"detail": f"upload larger than {limit / (1024 * 1024):g} MB"}
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                await _send_json(send, 400, {"detail": "bad Content-Length"})
                return
            if too_big:
                await _send_json(send, 413, detail, CLOSE)
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, detail, CLOSE)
