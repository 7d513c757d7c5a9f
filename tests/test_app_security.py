"""Web app security: authentication on every route, login, rate limit, CSRF, upload limits and
type checks, security headers, the hash-chained audit log, and no patient identifiers in logs.

The detector is a tiny random YOLOv5n checkpoint (as in tests/test_diagnose.py): which boxes it
finds is arbitrary, and no test here depends on them.
"""

from __future__ import annotations

import io
import json
import logging
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lumbardx.app import AppSettings, create_app, verify_audit
from lumbardx.app.phi import PhiFilter, PhiRedactor, identifiers
from lumbardx.app.sessions import LoginLimiter
from lumbardx.cli.serve import users_app

from checkpoints import tiny_checkpoint as make_checkpoint
from dicom_factory import write_mr

CLASSES = ["normal", "herniation", "spondylolisthesis"]
PASSWORD = "correct horse battery"
PATIENT_NAME, PATIENT_ID, ACCESSION = "Doe^Jane", "PID-998877", "ACC4455"
MAX_UPLOAD = 400 * 1024
REQUIRED_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
PUBLIC_PAGES = {"/login": "login.html", "/static/login.js": "login.js",
                "/static/login.css": "login.css"}
PARAMS = {"key": "0123456789abcdef", "box_id": "m0", "sid": "abc123", "index": "0"}


def tiny_checkpoint(folder: Path) -> Path:
    """A random YOLOv5n (image size 256) whose biases make it propose boxes."""
    return make_checkpoint(folder / "best.pt",
                           tag="app-test", training_data="synthetic test")


def assert_security_headers(response) -> None:  # noqa: ANN001 - httpx.Response
    for name, value in REQUIRED_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name)
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, response.url
    assert "'unsafe-inline'" not in csp or "sandbox" in csp, response.url


@pytest.fixture(scope="module")
def diagnoser(tmp_path_factory: pytest.TempPathFactory):
    from lumbardx.diagnosis import Diagnoser

    return Diagnoser(tiny_checkpoint(tmp_path_factory.mktemp("weights")), backend="torch")


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("static")
    for name in ("login.html", "login.js", "login.css", "index.html", "app.js"):
        (folder / name).write_text(f"/* {name} */\n", encoding="utf-8")
    return folder


def make_app(root: Path, diagnoser, static_dir: Path, **kw):  # noqa: ANN001, ANN201
    settings = AppSettings(data_dir=root, static_dir=static_dir, analyse_in_background=False,
                           max_upload_bytes=MAX_UPLOAD, max_unpacked_bytes=1024 * 1024, **kw)
    app = create_app(settings, diagnoser=diagnoser)
    users = app.state.ctx.users
    users.add("alice", PASSWORD, "clinician")
    users.add("root", PASSWORD, "admin")
    return app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, diagnoser, static_dir: Path):  # noqa: ANN001
    return make_app(tmp_path_factory.mktemp("data"), diagnoser, static_dir)


def login(client: TestClient, user: str = "alice", password: str = PASSWORD):  # noqa: ANN201
    token = client.get("/api/auth/login-token").json()["csrf_token"]
    return client.post("/api/auth/login", json={"username": user, "password": password},
                       headers={"X-CSRF-Token": token})


@pytest.fixture()
def alice(app) -> tuple[TestClient, dict[str, str]]:  # noqa: ANN001
    client = TestClient(app)
    r = login(client)
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


def routes(app) -> list[tuple[str, str]]:  # noqa: ANN001
    """Every (method, concrete path) of the API schema."""
    out = []
    for path, methods in app.openapi()["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path)
        out += [(m.upper(), concrete) for m in methods]
    return out


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sagittal MR slice (synthetic anatomy) with a known patient name and ID."""
    from lumbardx.synth import SynthConfig, generate_case

    case = generate_case(np.random.default_rng(11), SynthConfig(image_sizes=(256,)))
    path = tmp_path_factory.mktemp("dicom") / "slice.dcm"
    write_mr(path, case.raw, pixel_spacing=case.pixel_spacing, window=case.window)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
    ds.save_as(path, enforce_file_format=True)
    return path


# -- authentication everywhere ----------------------------------------------------------------

def test_every_route_refuses_unauthenticated_requests(app) -> None:  # noqa: ANN001
    client = TestClient(app, follow_redirects=False)
    listed = routes(app)
    assert len(listed) >= 30
    for method, path in listed:
        r = client.request(method, path, headers={"Authorization": "Bearer lxd_abcdef.junk"}
                           if path.endswith("/studies") else {})
        assert_security_headers(r)
        if (method, path) == ("GET", "/api/auth/login-token"):
            assert r.status_code == 200
        elif (method, path) == ("POST", "/api/auth/login"):
            assert r.status_code in (403, 422)  # no login CSRF pair / no body: never a session
            assert "set-cookie" not in r.headers or "lumbardx_session" not in r.headers[
                "set-cookie"]
        else:
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json() == {"detail": "not signed in"}
    for path in ("/", "/static/index.html", "/static/app.js", "/static/missing.js",
                 "/static/../users.json", "/users.json", "/docs", "/openapi.json"):
        r = client.get(path)
        assert (r.status_code, r.headers.get("location")) == (303, "/login"), path
        assert_security_headers(r)
    for path, name in PUBLIC_PAGES.items():
        r = client.get(path)
        assert r.status_code == 200 and f"/* {name} */" in r.text, path
        assert_security_headers(r)


def test_login_session_cookie_and_logout(app) -> None:  # noqa: ANN001
    client = TestClient(app)
    r = login(client)
    assert r.status_code == 200
    body = r.json()
    assert (body["user"], body["role"]) == ("alice", "clinician") and len(body["csrf_token"]) > 20
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("lumbardx_session"))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http test client
    info = client.get("/api/auth/session").json()
    assert info["user"] == "alice" and info["auth"] == "session"
    assert info["csrf_token"] == body["csrf_token"]
    assert client.get("/api/studies").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "index.html" in page.text
    assert client.post("/api/auth/logout").status_code == 403  # CSRF needed for logout too
    assert client.post("/api/auth/logout",
                       headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 204
    assert client.get("/api/studies").status_code == 401

    secure = TestClient(app, base_url="https://testserver")
    r = login(secure)
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("lumbardx_session"))
    assert "Secure" in cookie
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_login_needs_its_csrf_pair(app) -> None:  # noqa: ANN001
    client = TestClient(app)
    creds = {"username": "alice", "password": PASSWORD}
    assert client.post("/api/auth/login", json=creds).status_code == 403
    client.get("/api/auth/login-token")
    r = client.post("/api/auth/login", json=creds, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    other = TestClient(app).get("/api/auth/login-token").json()["csrf_token"]
    assert client.post("/api/auth/login", json=creds,
                       headers={"X-CSRF-Token": other}).status_code == 403


def test_session_expires_when_idle(app) -> None:  # noqa: ANN001
    sessions = app.state.ctx.sessions
    now = [1000.0]
    real_clock = sessions.clock
    sessions.clock = lambda: now[0]
    try:
        client = TestClient(app)
        assert login(client).status_code == 200
        now[0] += app.state.ctx.settings.session_idle_s - 5
        assert client.get("/api/studies").status_code == 200  # activity keeps it alive
        now[0] += app.state.ctx.settings.session_idle_s + 1
        assert client.get("/api/studies").status_code == 401
    finally:
        sessions.clock = real_clock


def test_bad_password_and_rate_limit(tmp_path: Path, diagnoser, static_dir: Path) -> None:  # noqa: ANN001
    app = make_app(tmp_path / "data", diagnoser, static_dir)
    now = [0.0]
    app.state.ctx.limiter = LoginLimiter(5, 900.0, clock=lambda: now[0])
    client = TestClient(app)
    r = login(client, password="wrong password!")
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    assert login(client, user="nobody", password="wrong password!").json()["detail"] == \
        "wrong user name or password"  # unknown users get the same answer
    for _ in range(4):
        assert login(client, password="wrong password!").status_code == 401
    r = login(client)  # 5 failures on this account: even the right password waits
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 901
    assert login(client, user="root").status_code == 200  # another account, same address
    assert "lumbardx_session" not in r.headers.get("set-cookie", "")
    now[0] += 901.0
    assert login(client).status_code == 200
    actions = [json.loads(x)["action"] for x in
               (tmp_path / "data" / "audit.jsonl").read_text().splitlines()]
    assert actions.count("login_failed") == 6 and "login_refused_rate_limit" in actions
    assert actions[-1] == "login"


def test_lockout_backs_off_per_account_and_spraying_blocks_the_address() -> None:
    now = [0.0]
    lim = LoginLimiter(3, 100.0, clock=lambda: now[0], address_factor=2)
    for _ in range(3):
        lim.failed("Alice", "10.0.0.1")
    assert lim.retry_after("alice", "10.0.0.2") == pytest.approx(100.0)  # the account is locked
    assert lim.retry_after("bob", "10.0.0.1") == 0.0  # a colleague behind the same address
    now[0] = 101.0
    assert lim.retry_after("alice", "10.0.0.1") == 0.0
    lim.failed("alice", "10.0.0.1")  # one more failure: the lock doubles
    assert lim.retry_after("alice", "10.0.0.1") == pytest.approx(200.0)
    now[0] = 400.0
    lim.succeeded("alice")
    lim.failed("alice", "10.0.0.1")  # a new run starts from one failure
    assert lim.retry_after("alice", "10.0.0.1") == 0.0
    lim.failed("bob", "10.0.0.9")
    now[0] = 600.0  # bob's single failure is older than the window: it does not add up
    lim.failed("bob", "10.0.0.9")
    lim.failed("bob", "10.0.0.9")
    assert lim.retry_after("bob", "10.0.0.9") == 0.0
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):  # spraying: 2 x 3 failures, 6 accounts
        lim.failed(user, "10.6.6.6")
    assert lim.retry_after("carol", "10.6.6.6") > 0  # the spraying address waits
    assert lim.retry_after("carol", "10.0.0.1") == 0.0


def test_csrf_token_required_for_state_changes(app, alice) -> None:  # noqa: ANN001
    client, csrf = alice
    unsafe = [(m, p) for m, p in routes(app) if m in ("POST", "PUT", "PATCH", "DELETE")
              and not p.startswith("/api/auth/login")]
    assert len(unsafe) >= 12
    for method, path in unsafe:
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 403, (method, path)
            assert r.json()["detail"] == "CSRF token missing or invalid"
    r = client.post("/api/teaching/sessions", json={"n_cases": 1, "seed": 1}, headers=csrf)
    assert r.status_code == 201


def test_bearer_tokens_are_hashed_exempt_from_csrf_and_revocable(app) -> None:  # noqa: ANN001
    users = app.state.ctx.users
    token = users.create_token("alice", label="script")
    stored = (app.state.ctx.settings.data_dir / "users.json").read_text()
    secret = token.split(".", 1)[1]
    assert secret not in stored and token.split(".")[0][4:] in stored
    client = TestClient(app)
    bearer = {"Authorization": f"Bearer {token}"}
    info = client.get("/api/auth/session", headers=bearer).json()
    assert info["auth"] == "token" and info["csrf_token"] is None
    r = client.post("/api/teaching/sessions", json={"n_cases": 1, "seed": 2}, headers=bearer)
    assert r.status_code == 201  # no CSRF header needed: no ambient credential
    forged = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    assert client.get("/api/studies", headers={"Authorization": f"Bearer {forged}"}
                      ).status_code == 401
    users.revoke_token("alice", token.split(".")[0][4:])
    assert client.get("/api/studies", headers=bearer).status_code == 401


def test_accounts_file_is_private_and_uses_argon2id(app) -> None:  # noqa: ANN001
    path = app.state.ctx.settings.data_dir / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["users"]["alice"]["password"].startswith("$argon2id$")
    assert PASSWORD not in path.read_text()
    assert stat.S_IMODE((app.state.ctx.settings.data_dir / "secret.key").stat().st_mode) == 0o600


def test_users_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    r = runner.invoke(users_app, ["add", "bob", *data], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert r.exit_code == 0, r.output
    assert PASSWORD not in r.output  # hidden prompt
    monkeypatch.setenv("NEW_PW", "another long password")
    r = runner.invoke(users_app, ["add", "carol", "--role", "admin", "--password-env", "NEW_PW",
                                  *data])
    assert r.exit_code == 0, r.output
    r = runner.invoke(users_app, ["add", "dave", "--password-env", "NEW_PW", "--role", "boss",
                                  *data])
    assert r.exit_code == 1 and "unknown role" in r.output
    r = runner.invoke(users_app, ["add", "erin", *data], input="short\nshort\n")
    assert r.exit_code == 1 and "too short" in r.output
    r = runner.invoke(users_app, ["token", "bob", "--label", "export", *data])
    assert r.exit_code == 0
    token = next(line for line in r.output.splitlines() if line.startswith("lxd_"))
    from lumbardx.app.accounts import UserStore

    store = UserStore(tmp_path / "users.json")
    assert store.verify_token(token).name == "bob"
    assert store.verify_password("carol", "another long password").role == "admin"
    r = runner.invoke(users_app, ["list", *data])
    assert "bob" in r.output and "carol" in r.output and "admin" in r.output
    r = runner.invoke(users_app, ["remove", "bob", *data])
    assert r.exit_code == 0 and store.get("bob") is None and store.verify_token(token) is None
    assert runner.invoke(users_app, ["remove", "bob", *data]).exit_code == 1


# -- uploads ----------------------------------------------------------------------------------

def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_upload_size_limit(app, alice) -> None:  # noqa: ANN001
    client, csrf = alice
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD
    r = client.post("/api/studies", files={"files": ("big.png", big, "image/png")},
                    headers=csrf)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert_security_headers(r)

    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\0" * 65536

    r = client.post("/api/studies", content=chunks(),
                    headers={**csrf, "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413
    assert not list((app.state.ctx.settings.data_dir / "studies").iterdir())


def test_upload_type_checks(app, alice, tmp_path: Path) -> None:  # noqa: ANN001
    client, csrf = alice
    data_dir = app.state.ctx.settings.data_dir
    r = client.post("/api/studies", files={"files": ("notes.dcm", b"patient notes\n" * 20,
                                                     "application/dicom")}, headers=csrf)
    assert r.status_code == 415
    assert "notes.dcm" in r.json()["detail"] and "text" in r.json()["detail"]
    r = client.post("/api/studies", headers=csrf, files=[
        ("files", ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "image/png")),
        ("files", ("b.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "image/png"))])
    assert r.status_code == 400 and "one PNG or JPEG" in r.json()["detail"]
    assert client.post("/api/studies", headers=csrf, data={"x": "1"}).status_code == 400

    dicm = b"\0" * 128 + b"DICM" + b"\0" * 64
    evil = _zip({"series/IM1.dcm": dicm, "../../escaped.dcm": dicm})
    r = client.post("/api/studies", files={"files": ("study.zip", evil, "application/zip")},
                    headers=csrf)
    assert r.status_code == 400 and "unsafe path" in r.json()["detail"]
    assert not list(data_dir.parent.rglob("escaped.dcm"))
    absolute = _zip({"/etc/lumbardx-escaped.dcm": dicm})
    r = client.post("/api/studies", files={"files": ("abs.zip", absolute, "application/zip")},
                    headers=csrf)
    assert r.status_code == 400 and not Path("/etc/lumbardx-escaped.dcm").exists()
    bomb = _zip({"big.dcm": dicm + b"\0" * (2 * 1024 * 1024)})
    assert len(bomb) < MAX_UPLOAD
    r = client.post("/api/studies", files={"files": ("bomb.zip", bomb, "application/zip")},
                    headers=csrf)
    assert r.status_code == 413 and "unpacks to more than" in r.json()["detail"]
    assert not list((data_dir / "staging").iterdir())  # nothing left half-unpacked

    r = client.post("/api/studies", files={"files": ("broken.dcm", dicm, "application/dicom")},
                    headers=csrf)
    assert r.status_code == 422
    qid = r.json()["quarantine_id"]
    reason = json.loads((data_dir / "quarantine" / qid / "reason.json").read_text())
    assert reason["user"] == "alice" and reason["reason"] == r.json()["detail"]
    assert "file-000.dcm" in reason["files"]
    assert not list((data_dir / "studies").iterdir())


# -- audit ------------------------------------------------------------------------------------

def test_audit_chain_verifies_and_tampering_is_detected(app, alice, dicom_file: Path,
                                                        tmp_path: Path) -> None:  # noqa: ANN001
    client, csrf = alice
    with dicom_file.open("rb") as fh:
        r = client.post("/api/studies", files={"files": ("x.dcm", fh, "application/dicom")},
                        headers=csrf)
    assert r.status_code in (200, 201)
    key = r.json()["study"]["study_key"]
    client.get(f"/api/studies/{key}")
    path = app.state.ctx.settings.data_dir / "audit.jsonl"
    lines = path.read_text().splitlines()
    events = [json.loads(x) for x in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    mine = [e for e in events if e["study_key"] == key]
    assert {"upload", "view"} <= {e["action"] for e in mine}
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", e["time"]) for e in events)
    assert verify_audit(path).ok and verify_audit(path).lines == len(lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    admin = TestClient(app)
    login(admin, "root")
    assert admin.get("/api/admin/audit/verify").json()["ok"] is True
    assert client.get("/api/admin/audit/verify").status_code == 403  # clinicians may not

    def copy(text: str) -> Path:
        target = tmp_path / f"audit{len(list(tmp_path.iterdir()))}.jsonl"
        target.write_text(text)
        head = path.with_name(path.name + ".head")
        target.with_name(target.name + ".head").write_text(head.read_text())
        return target

    edited = list(lines)
    k = len(edited) // 2
    edited[k] = edited[k].replace('"user":"alice"', '"user":"mallory"').replace(
        '"user":"root"', '"user":"mallory"').replace('"user":null', '"user":"mallory"')
    assert edited[k] != lines[k]
    check = verify_audit(copy("\n".join(edited) + "\n"))
    assert not check.ok and check.line == k + 2 and "chain broken" in check.problem
    check = verify_audit(copy("\n".join(lines[:k] + lines[k + 1:]) + "\n"))
    assert not check.ok and check.line == k + 1
    check = verify_audit(copy("\n".join(lines[:-1]) + "\n"))  # last line cut off
    assert not check.ok and "removed from the end" in check.problem
    check = verify_audit(copy("\n".join(lines[:-1] + [lines[-1].replace('"seq"', '"seq" ')])
                              + "\n"))
    assert not check.ok


# -- no patient identifiers in logs ----------------------------------------------------------

def test_identifiers_from_a_dicom_header() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.OtherPatientIDs = "Doe^Jane^Q", "ID-1", ["ALT-22", "X"]
    terms = identifiers(ds)
    assert {"Doe^Jane^Q", "Jane", "Doe", "Doe Jane Q", "Q Jane Doe", "ALT-22"} <= terms
    assert "Q" not in terms and "X" not in terms  # too short to redact safely
    red = PhiRedactor()
    red.register(terms)
    assert red.redact("patient DOE^JANE^Q (alt-22) seen") == "patient [redacted] ([redacted]) seen"
    try:  # a handler configured elsewhere: the filter also cleans the traceback
        raise ValueError("bad value for Doe^Jane^Q")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "reading %s", ("ID-1",),
                                   sys.exc_info())
    assert PhiFilter(red).filter(record)
    assert logging.Formatter().format(record).count("[redacted]") >= 2
    assert "Doe" not in logging.Formatter().format(record)


def test_uvicorn_access_log_keeps_working_with_redaction() -> None:
    """uvicorn's AccessFormatter unpacks ``record.args`` (client, method, path, version,
    status): redaction must keep that tuple, status an int, while removing identifiers."""
    import io

    from uvicorn.logging import AccessFormatter

    from lumbardx.app.phi import install

    red = PhiRedactor()
    red.register({"Doe^Jane", "ID-12345"})
    install(red)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s',
                                         use_colors=False))
    logger = logging.getLogger("test.uvicorn.access")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for path in ("/api/studies?q=Doe^Jane", "/api/studies/ID-12345", "/healthz"):
            logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, stream.getvalue()
    assert lines[0] == '127.0.0.1:5000 - "GET /api/studies?q=[redacted] HTTP/1.1" 200 OK'
    assert lines[1].endswith('"GET /api/studies/[redacted] HTTP/1.1" 200 OK')
    assert lines[2] == '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 200 OK'
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %d %s",
                               ("Doe^Jane", 3, Path("/data/Doe^Jane/a.dcm")), None)
    PhiFilter(red).filter(record)
    assert record.args == ("[redacted]", 3, "/data/[redacted]/a.dcm")
    assert record.getMessage() == "[redacted] 3 /data/[redacted]/a.dcm"


def test_no_patient_name_or_id_in_logs(app, alice, dicom_file: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    client, csrf = alice
    caplog.set_level(logging.DEBUG)
    with dicom_file.open("rb") as fh:
        r = client.post("/api/studies", headers=csrf,
                        files={"files": (f"{PATIENT_NAME}.dcm", fh, "application/dicom")})
    assert r.status_code in (200, 201), r.text
    key = r.json()["study"]["study_key"]
    assert client.post(f"/api/studies/{key}/analyse", headers=csrf).status_code == 202
    worklist = client.get("/api/studies").text
    detail = client.get(f"/api/studies/{key}").text
    identity = client.get(f"/api/studies/{key}/patient").json()
    assert identity["patient_name"] == PATIENT_NAME and identity["patient_id"] == PATIENT_ID
    assert identity["accession_number"] == ACCESSION
    logging.getLogger("lumbardx.app.test").warning("opened %s for %s", PATIENT_ID, PATIENT_NAME)
    assert "opened [redacted] for [redacted]" in caplog.text
    assert any(key in rec.getMessage() for rec in caplog.records)  # the app does log studies
    data_dir = app.state.ctx.settings.data_dir
    texts = {"logs": caplog.text, "worklist": worklist, "detail": detail,
             "audit": (data_dir / "audit.jsonl").read_text(),
             "meta": (data_dir / "studies" / key / "meta.json").read_text(),
             "findings": (data_dir / "studies" / key / "findings.json").read_text()}
    for where, text in texts.items():
        for term in (PATIENT_ID, ACCESSION):
            assert term.lower() not in text.lower(), (where, term)
        for name in ("Doe", "Jane"):  # whole words: "does" in a warning is not the name
            assert not re.search(rf"(?<![a-z]){name.lower()}(?![a-z])", text.lower()), \
                (where, name)
    assert not list((data_dir / "studies" / key / "original").glob("*Doe*"))
    events = [json.loads(x) for x in texts["audit"].splitlines()]
    assert any(e["action"] == "view_identity" and e["study_key"] == key for e in events)


def test_security_headers_on_every_kind_of_response(app, alice, dicom_file: Path) -> None:  # noqa: ANN001
    client, csrf = alice
    with dicom_file.open("rb") as fh:
        key = client.post("/api/studies", files={"files": ("x.dcm", fh, "application/dicom")},
                          headers=csrf).json()["study"]["study_key"]
    responses = [client.get("/api/studies"), client.get(f"/api/studies/{key}"),
                 client.get(f"/api/studies/{key}/image.png"),
                 client.get(f"/api/studies/{key}/image.png?center=500&width=800"),
                 client.get(f"/api/studies/{key}/overlay.png"),
                 client.get(f"/api/studies/{key}/report.pdf"),
                 client.get("/api/studies/ffffffffffffffff"), client.get("/static/app.js"),
                 client.get("/"), client.get("/api/pacs"),
                 client.post("/api/pacs/search", json={"patient_id": "X1"}, headers=csrf),
                 TestClient(app, follow_redirects=False).get("/")]
    statuses = {r.status_code for r in responses}
    assert {200, 303, 404, 503} <= statuses
    for r in responses:
        assert_security_headers(r)
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
    report = client.get(f"/api/studies/{key}/report.html")
    assert report.status_code == 200
    assert_security_headers(report)
    csp = report.headers["content-security-policy"]
    assert "sandbox" in csp and "script-src" not in csp and csp.startswith("default-src 'none'")


def test_unexpected_errors_answer_500_with_headers_and_no_details(
        tmp_path: Path, diagnoser, static_dir: Path) -> None:  # noqa: ANN001
    app = make_app(tmp_path / "data", diagnoser, static_dir)

    def broken() -> None:
        raise RuntimeError("secret internal state")

    app.add_api_route("/api/broken", broken)
    client = TestClient(app)
    assert client.get("/api/broken").status_code == 401  # still behind authentication
    login(client)
    r = client.get("/api/broken")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert "secret" not in r.text
    assert_security_headers(r)


def test_serve_binds_loopback_and_warns_for_other_hosts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from lumbardx.cli.serve import serve

    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append({"app": app, **kw}))
    weights = tiny_checkpoint(tmp_path)
    cli = typer_app(serve)
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "--weights", str(weights),
                                 "--backend", "torch"])
    assert r.exit_code == 0, r.output
    assert started[-1]["host"] == "127.0.0.1" and started[-1]["port"] == 8000
    assert "warning" in r.output and "no accounts" in r.output
    assert "not loopback" not in r.output
    settings = started[-1]["app"].state.ctx.settings
    assert settings.max_upload_bytes == 200 * 1024 * 1024 and settings.weights == weights
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "--weights", str(weights),
                                 "--backend", "torch", "--host", "0.0.0.0", "--port", "8443",
                                 "--max-upload-mb", "50"])
    assert r.exit_code == 0 and "not loopback" in r.output
    assert (started[-1]["host"], started[-1]["port"]) == ("0.0.0.0", 8443)
    assert started[-1]["app"].state.ctx.settings.max_upload_bytes == 50 * 1024 * 1024
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"),
                                 "--weights", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and "missing.pt" in r.output and len(started) == 2


def typer_app(command):  # noqa: ANN001, ANN201
    import typer

    app = typer.Typer()
    app.command()(command)
    return app
