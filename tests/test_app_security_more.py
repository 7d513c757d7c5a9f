"""Web app security checks beyond tests/test_app_security.py: every route the app serves
(walked from its router, schema or not) refuses missing, forged, ended and revoked
credentials; state-changing requests from a foreign origin are refused and no CORS grant is
made; cookie flags with the ``secure_cookies`` setting and ``serve --certfile``; uploaded file
names never choose where files go; an oversize upload is cut off over a real socket before
more than the limit reaches the disk.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastapi.routing
import httpx
import numpy as np
import pytest
from bench_scripts import load_bench
from live_server import live_server as serve_app
from fastapi import FastAPI
from fastapi.testclient import TestClient
from itsdangerous import Signer
from test_app_security import (  # noqa: F401 (fixtures)
    PASSWORD,
    diagnoser,
    login,
    make_app,
    static_dir,
    tiny_checkpoint,
    typer_app,
)
from typer.testing import CliRunner

from lumbardx.app import AppSettings, create_app
from lumbardx.app.security import PUBLIC
from lumbardx.app.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE

if TYPE_CHECKING:
    from lumbardx.diagnosis import Diagnoser

EVIL = "https://evil.example"
FOREIGN = {"Origin": EVIL, "Referer": f"{EVIL}/page.html", "Sec-Fetch-Site": "cross-site",
           "Sec-Fetch-Mode": "navigate"}
KEYLIKE = "0123456789abcdef"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
MiB = 1024 * 1024


def served_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every ``(method, path)`` the app serves, in the API schema or not, path parameters
    filled with a well-formed study key; the static mount as a GET and a HEAD of a file in it.
    Included routers are walked (recent FastAPI versions nest them in ``app.routes``)."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    out = []
    for route in (walk(app.routes) if walk is not None else app.routes):
        path = re.sub(r"\{[^}]+\}", KEYLIKE, route.path)
        if route.methods:
            out += [(m, path) for m in sorted(route.methods)]
        else:  # a mount
            out += [("GET", f"{path}/app.js"), ("HEAD", f"{path}/index.html")]
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, diagnoser: Diagnoser,  # noqa: F811
        static_dir: Path) -> FastAPI:  # noqa: F811
    app = make_app(tmp_path_factory.mktemp("data"), diagnoser, static_dir)
    app.state.ctx.users.add("bob", PASSWORD)
    return app


def signed_in(app: FastAPI, user: str = "alice") -> tuple[TestClient, dict[str, str]]:
    """A client signed in as ``user`` and its CSRF header."""
    client = TestClient(app, follow_redirects=False)
    r = login(client, user)
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


def set_cookie(response: httpx.Response, name: str) -> str:
    """The ``Set-Cookie`` header of cookie ``name``."""
    return next(v for v in response.headers.get_list("set-cookie") if v.startswith(f"{name}="))


def cookie_value(header: str) -> str:
    """The value in a ``Set-Cookie`` header."""
    return header.split(";", 1)[0].split("=", 1)[1]


# -- every route, every kind of bad credential -----------------------------------------------

def bad_credentials(app: FastAPI) -> dict[str, dict[str, Any]]:
    """Name -> request keywords (``headers``, ``cookies``) of credentials that must not work."""
    users = app.state.ctx.users
    ended, _ = signed_in(app, "bob")
    ended_cookie = ended.cookies[SESSION_COOKIE]
    assert ended.post("/api/auth/logout", headers={
        "X-CSRF-Token": ended.get("/api/auth/session").json()["csrf_token"]}).status_code == 204
    users.add("carol", PASSWORD)
    carol, _ = signed_in(app, "carol")
    carol_token = users.create_token("carol", "script")
    removed_cookie = carol.cookies[SESSION_COOKIE]
    users.remove("carol")
    revoked = users.create_token("bob", "old script")
    users.revoke_token("bob", revoked.split(".")[0][4:])
    login_csrf = TestClient(app).get("/api/auth/login-token").cookies[LOGIN_CSRF_COOKIE]
    foreign_key = Signer(b"k" * 64, salt="lumbardx.session").sign(b"made-up-session").decode()
    bearer = {
        "malformed token": "Bearer lxd_abcdef.junk",
        "unknown token": f"Bearer lxd_abcdefgh.{'A' * 43}",
        "revoked token": f"Bearer {revoked}",
        "removed user's token": f"Bearer {carol_token}",
        "password as Basic": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
        "session cookie as bearer": f"Bearer {ended_cookie}",
    }
    cookies = {
        "garbage cookie": "garbage",
        "cookie signed with another key": foreign_key,
        "ended session": ended_cookie,
        "removed user's session": removed_cookie,
        "login CSRF cookie as session": login_csrf,
    }
    out: dict[str, dict[str, Any]] = {"nothing": {}}
    out.update({k: {"headers": {"Authorization": v}} for k, v in bearer.items()})
    out.update({k: {"cookies": {SESSION_COOKIE: v}} for k, v in cookies.items()})
    return out


def test_every_served_route_refuses_missing_and_bad_credentials(app: FastAPI) -> None:
    listed = served_routes(app)
    schema = {(m.upper(), re.sub(r"\{\w+\}", KEYLIKE, p))
              for p, methods in app.openapi()["paths"].items() for m in methods}
    assert schema < set(listed) and ("GET", "/") in listed and ("GET", "/login") in listed
    public = {(m, p) for m, p in listed if (m, p) in PUBLIC}
    assert public == {("GET", "/login"), ("GET", "/api/auth/login-token"),
                      ("POST", "/api/auth/login")}
    variants = bad_credentials(app)
    live, _ = signed_in(app)  # the same ways of sending credentials do work with good ones
    good = {"cookies": {SESSION_COOKIE: live.cookies[SESSION_COOKIE]}}, {"headers": {
        "Authorization": f"Bearer {app.state.ctx.users.create_token('alice', 'check')}"}}
    for creds in good:
        client = TestClient(app, cookies=creds.get("cookies"))
        assert client.get("/api/studies", headers=creds.get("headers")).status_code == 200
    for name, creds in variants.items():
        client = TestClient(app, follow_redirects=False, cookies=creds.get("cookies"))
        for method, path in listed:
            if (method, path) in public:
                continue
            r = client.request(method, path, headers=creds.get("headers"))
            if path.startswith("/api/"):
                assert r.status_code == 401, (name, method, path, r.status_code)
                assert r.json() == {"detail": "not signed in"}, (name, method, path)
            else:
                assert (r.status_code, r.headers.get("location")) == (303, "/login"), \
                    (name, method, path, r.status_code)
            assert SESSION_COOKIE not in r.headers.get("set-cookie", ""), (name, method, path)


# -- cross-site requests -------------------------------------------------------------------

def test_state_changes_from_a_foreign_origin_are_refused(app: FastAPI) -> None:
    client, _ = signed_in(app)
    _, bob_csrf = signed_in(app, "bob")
    data_dir = app.state.ctx.settings.data_dir
    studies_before = sorted(p.name for p in (data_dir / "studies").iterdir())
    audit_before = (data_dir / "audit.jsonl").read_text().count("\n")
    bodies = {  # what a page on another site can send without a preflight
        "form": ("application/x-www-form-urlencoded", b"accept_pending=true"),
        "multipart": ("multipart/form-data; boundary=b",
                      (b"--b\r\nContent-Disposition: form-data; name=\"files\"; "
                       b"filename=\"a.png\"\r\n\r\n\x89PNG\r\n\x1a\n\0\0\r\n--b--\r\n")),
        "text": ("text/plain", b'{"accept_pending": true}'),
    }
    unsafe = [(m, p) for m, p in served_routes(app) if m in UNSAFE
              and (m, p) not in PUBLIC]
    assert ("POST", "/api/studies") in unsafe and ("POST", "/api/auth/logout") in unsafe
    for method, path in unsafe:
        for kind, (ctype, body) in bodies.items():
            for token in ({}, bob_csrf):  # none, or another session's
                r = client.request(method, path, content=body,
                                   headers={**FOREIGN, **token, "Content-Type": ctype})
                assert r.status_code == 403, (method, path, kind, token, r.status_code)
                assert r.json()["detail"] == "CSRF token missing or invalid"
                assert "access-control-allow-origin" not in r.headers
    creds = json.dumps({"username": "alice", "password": PASSWORD}).encode()
    for ctype, refused in (("text/plain", (403, 422)), ("application/json", (403,))):
        r = TestClient(app).post("/api/auth/login", content=creds,  # no login CSRF pair
                                 headers={**FOREIGN, "Content-Type": ctype})
        assert r.status_code in refused and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert client.get("/api/auth/session").status_code == 200  # logout was refused
    assert sorted(p.name for p in (data_dir / "studies").iterdir()) == studies_before
    assert (data_dir / "audit.jsonl").read_text().count("\n") == audit_before

    for path in ("/api/studies", "/api/auth/session"):  # no CORS grant: the page cannot read
        r = client.get(path, headers={"Origin": EVIL})
        assert r.status_code == 200
        assert not [h for h in r.headers if h.startswith("access-control-")], path
        for c in (client, TestClient(app)):  # a preflight, with and without the cookie
            r = c.options(path, headers={"Origin": EVIL, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "x-csrf-token"})
            assert r.status_code >= 400
            assert not [h for h in r.headers if h.startswith("access-control-")], path


# -- cookie flags ---------------------------------------------------------------------------

def test_login_csrf_cookie_flags(app: FastAPI) -> None:
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        r = TestClient(app, base_url=base).get("/api/auth/login-token")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{LOGIN_CSRF_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Path=/api/auth" in cookie and "Max-Age=3600" in cookie
        assert ("Secure" in cookie) is secure


def test_secure_cookies_setting_marks_every_cookie_secure_over_http(
        tmp_path: Path, diagnoser: Diagnoser, static_dir: Path) -> None:  # noqa: F811
    app = make_app(tmp_path / "data", diagnoser, static_dir, secure_cookies=True)
    client = TestClient(app, base_url="http://testserver")  # e.g. behind a TLS proxy
    token = client.get("/api/auth/login-token")
    pair = set_cookie(token, LOGIN_CSRF_COOKIE)
    assert "Secure" in pair
    # a Secure cookie is not sent back over http by the client: send it by hand
    r = client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD},
                    headers={"X-CSRF-Token": token.json()["csrf_token"],
                             "Cookie": f"{LOGIN_CSRF_COOKIE}={cookie_value(pair)}"})
    assert r.status_code == 200
    session = set_cookie(r, SESSION_COOKIE)
    assert all(f in session for f in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"))
    cleared = set_cookie(r, LOGIN_CSRF_COOKIE)
    assert "Secure" in cleared and "Max-Age=0" in cleared
    r = client.post("/api/auth/logout",
                    headers={"X-CSRF-Token": r.json()["csrf_token"],
                             "Cookie": f"{SESSION_COOKIE}={cookie_value(session)}"})
    assert r.status_code == 204
    gone = set_cookie(r, SESSION_COOKIE)
    assert all(f in gone for f in ("Secure", "HttpOnly", "SameSite=strict", "Max-Age=0"))


def test_serve_over_https_or_behind_a_proxy_sets_secure_cookies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from lumbardx.cli.serve import serve

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append({"app": app, **kw}))
    weights = tiny_checkpoint(tmp_path)
    cli = typer_app(serve)
    base = ["--data-dir", str(tmp_path / "d"), "--weights", str(weights), "--backend", "torch"]
    for extra, secure in (([], False), (["--secure-cookies"], True),
                          (["--certfile", str(tmp_path / "c.pem"),
                            "--keyfile", str(tmp_path / "k.pem")], True)):
        r = CliRunner().invoke(cli, base + extra)
        assert r.exit_code == 0, r.output
        assert started[-1]["app"].state.ctx.settings.secure_cookies is secure, extra
    assert started[-1]["ssl_certfile"] == str(tmp_path / "c.pem")
    assert "https://" in r.output


# -- uploaded file names ------------------------------------------------------------------------

def multipart(parts: list[tuple[str, bytes]], boundary: str = "lumbardx-names") -> tuple[
        bytes, str]:
    """A multipart body whose ``filename`` parameters are sent byte for byte as given."""
    body = b""
    for name, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                 f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 ).encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_uploaded_file_names_never_choose_where_files_go(
        tmp_path: Path, diagnoser: Diagnoser, static_dir: Path) -> None:  # noqa: F811
    from PIL import Image

    from lumbardx.synth import SynthConfig, generate_case, write_dicom_series

    cfg = SynthConfig(image_sizes=(256,), dicom_slices=(3,))
    png = tmp_path / "in" / "slice.png"
    png.parent.mkdir()
    Image.fromarray(generate_case(np.random.default_rng(5), cfg).image).save(png)
    series = write_dicom_series(generate_case(np.random.default_rng(6), cfg), tmp_path / "in" / "s",
                                cfg)
    root = tmp_path / "a" / "b" / "c"  # escapes with ../ would land in these ancestors
    data_dir = root / "data"
    app = make_app(data_dir, diagnoser, static_dir)
    client, csrf = signed_in(app)
    before = tree(tmp_path)
    hostile_png = "../../../../../escaped-png.png"
    hostile_dicom = ["../../../../escaped-a.dcm", f"{tmp_path}/escaped-b.dcm",
                     "..\\..\\..\\..\\escaped-c.dcm"]
    body, ctype = multipart([(hostile_png, png.read_bytes())])
    r = client.post("/api/studies", content=body, headers={**csrf, "Content-Type": ctype})
    assert r.status_code == 201, r.text
    png_key = r.json()["study"]["study_key"]
    body, ctype = multipart(list(zip(hostile_dicom, (p.read_bytes() for p in series))))
    r = client.post("/api/studies", content=body, headers={**csrf, "Content-Type": ctype})
    assert r.status_code == 201, r.text
    dicom_key = r.json()["study"]["study_key"]
    body, ctype = multipart([(f"../../{tmp_path}/secret/notes.dcm", b"referral notes\n" * 20)])
    r = client.post("/api/studies", content=body, headers={**csrf, "Content-Type": ctype})
    assert r.status_code == 415 and r.json()["detail"].startswith("notes.dcm: ")
    assert str(tmp_path) not in r.text

    studies = data_dir / "studies"
    assert sorted(p.name for p in (studies / png_key / "original").iterdir()) == ["file-000.png"]
    assert sorted(p.name for p in (studies / dicom_key / "original").iterdir()) == [
        "file-000.dcm", "file-001.dcm", "file-002.dcm"]
    new = tree(tmp_path) - before
    assert new and all(data_dir in p.parents for p in new), sorted(
        str(p) for p in new if data_dir not in p.parents)
    assert not [p for p in tree(tmp_path) if "escaped" in p.name or "notes" in p.name]
    assert not list((data_dir / "staging").iterdir())
    for path in [*(studies / png_key).glob("*.json"), *(studies / dicom_key).glob("*.json"),
                 data_dir / "audit.jsonl"]:
        assert "escaped" not in path.read_text(), path


# -- oversize uploads over a real socket -------------------------------------------------------

@pytest.fixture()
def live_server(tmp_path: Path, static_dir: Path,  # noqa: F811
                monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The app on uvicorn (a thread, a free loopback port), upload limit 3 MiB, with its own
    temporary folder for spooled uploads; signed in as alice."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    data_dir = tmp_path / "data"
    app = create_app(AppSettings(data_dir=data_dir, static_dir=static_dir,
                                 max_upload_bytes=3 * MiB))
    app.state.ctx.users.add("alice", PASSWORD)
    with serve_app(app) as base:
        port = int(base.rsplit(":", 1)[1])
        client = httpx.Client(base_url=base)
        token = client.get("/api/auth/login-token").json()["csrf_token"]
        r = client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD},
                        headers={"X-CSRF-Token": token})
        yield {"port": port, "data_dir": data_dir, "spool": spool, "limit": 3 * MiB,
               "client": client, "csrf": r.json()["csrf_token"],
               "cookie": client.cookies[SESSION_COOKIE]}
        client.close()


def _request_head(srv: dict[str, Any], framing: str) -> bytes:
    return (f"POST /api/studies HTTP/1.1\r\nHost: 127.0.0.1:{srv['port']}\r\n"
            f"Cookie: {SESSION_COOKIE}={srv['cookie']}\r\nX-CSRF-Token: {srv['csrf']}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n").encode()


class _Answer(threading.Thread):
    """Reads what the server sends on ``sock`` until it closes the connection (or 10 s
    pass), while the test goes on sending: ``data`` once joined."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.data = sock, b""
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and (chunk := self.sock.recv(65536)):
                self.data += chunk
        except OSError:  # reset, or closed by the test
            pass

    def wait(self) -> bytes:
        """The answer, once the server has closed the connection."""
        self.join(12)
        return self.data


def test_an_oversize_upload_is_cut_off_before_it_reaches_the_disk(
        live_server: dict[str, Any]) -> None:
    lt = load_bench("load_test")
    srv = live_server
    watched = [srv["spool"], srv["data_dir"] / "staging", srv["data_dir"] / "studies"]
    assert lt.disk_bytes(os.getpid(), watched) == 0

    # declared too large: refused from the headers, before a byte of the body is read
    with socket.create_connection(("127.0.0.1", srv["port"])) as sock:
        sock.settimeout(10)
        sock.sendall(_request_head(srv, f"Content-Length: {1024 * MiB}\r\n"))
        answer = _Answer(sock).wait()  # the server closes without waiting for the body
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower()

    # streamed without a length: counted as it arrives, cut off at the limit
    peak, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], lt.disk_bytes(os.getpid(), watched))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    total, sent, cut = 64 * MiB, 0, None
    piece = b"\0" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", srv["port"])) as sock:
        sock.settimeout(10)
        sock.sendall(_request_head(srv, "Transfer-Encoding: chunked\r\n"))
        reader = _Answer(sock)
        first = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
                 b"\r\n\x89PNG\r\n\x1a\n")
        sock.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(piece)
                time.sleep(0.001)  # a real network's pace; lets the sampler see the spool
        except (BrokenPipeError, ConnectionResetError) as exc:
            cut = exc
        answer = reader.wait()
    sampling.set()
    sampler.join(5)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"larger than 3 MB" in answer, answer[:300]
    assert cut is not None and sent < total / 2, (sent, cut)  # the connection was closed
    assert MiB < peak[0] <= srv["limit"] + 256 * 1024, peak[0]  # the spool, never more
    time.sleep(0.2)
    assert lt.disk_bytes(os.getpid(), watched) == 0  # and nothing left behind
    assert srv["client"].get("/api/studies").json() == {"studies": []}
