"""The clinic web app under concurrent use: ``lumbardx serve`` with N simultaneous readers.

What runs: ``python -m lumbardx serve`` as a real subprocess on a free loopback port, with a
temporary data folder (accounts created with the app's account store,
:class:`lumbardx.app.accounts.UserStore`, before the start), a private ``TMPDIR`` and the
shipped weights (or ``--weights``). N client threads (``httpx``, one cookie session each) then
work for ``--duration`` seconds: each signs in, and draws actions -- poll the worklist, open a
study, fetch its image, overlay, findings and reports, review it (accept or reject boxes,
complete the review). Uploads come from one shared, shuffled list spread over the first 70 %
of the run: synthetic PNG slices and small DICOM series (:mod:`lumbardx.synth`), some sent
twice on purpose, and invalid uploads on purpose (text named ``.dcm``, a broken DICOM, two PNGs
in one study, bodies above the upload limit with and without ``Content-Length``). One client
also tries a wrong password until the account lock answers 429. After the load, the analysis
queue is watched until every study is ``analysed``/``failed`` and every completed review is
written into the study's record (``findings.json``), within ``--drain-timeout``.

Every request is recorded (route, status, latency); each has the statuses it may get by design
(e.g. 413 for an oversize body, 404 for the overlay of a study still being analysed). Checked
and reported (``invariants``; the exit code is 1 when one fails):

* ``requests``: every request got an expected answer -- no 5xx, no connection error, no
  timeout, no unexpected 4xx;
* ``uploads``: every distinct valid upload is stored once (one 201), every repeat is answered
  ``duplicate: true`` (200) with the same study key, every invalid upload got its status;
* ``worklist``: the worklist holds exactly the stored studies, each once;
* ``queue``: every study reached ``analysed``/``failed`` and every completed review reached the
  record within the drain bound (the drain time is reported);
* ``audit``: the hash chain of ``audit.jsonl`` verifies and it holds one ``upload`` event per
  accepted upload;
* ``leftovers``: nothing is left in ``staging/`` or in the server's ``TMPDIR``;
* ``server_log``: the server logged no traceback;
* ``memory``: the server's resident memory (``/proc/<pid>/status`` ``VmRSS``, sampled; the
  kernel's peak ``VmHWM``) stays under ``--max-rss-mb`` and grows by at most
  ``--max-growth-mb`` from the start of the load to the end of the drain.

Reported per route: requests, requests/s over the load phase, statuses, and p50/p95/p99/max
latency in milliseconds.

Usage::

    python bench/load_test.py [--clients 20] [--duration 60] [--weights best.pt] \
        [--out bench/results/load_test.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
from machine_info import cpu_name  # bench/machine_info.py, beside this script

PASSWORD = "load-test-password"
INTRUDER = "mallory"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Seconds a request may take before it counts as lost.
REQUEST_TIMEOUT_S = 120.0
#: The analysis states a study can end in.
FINAL = ("analysed", "failed", "reviewed")


@dataclass(frozen=True)
class LoadParams:
    """What one run does.

    Attributes:
        clients: simultaneous readers (threads, one session each).
        duration_s: seconds of load (uploads are spread over the first 70 %).
        weights: detector checkpoint served; ``None``: the shipped weights.
        png, dicom: distinct valid studies uploaded as one PNG / as a DICOM series.
        dicom_slices: slices per DICOM series.
        duplicates: valid studies sent a second time.
        invalid: invalid uploads (the kinds of :data:`INVALID_KINDS` in turn).
        max_upload_mb: the server's upload limit (``--max-upload-mb``).
        think_ms: mean pause of a reader between two actions (uniform on 0..2x).
        drain_timeout_s: longest wait for the analysis queue after the load.
        max_rss_mb, max_growth_mb: memory bounds of the server (module docstring); the
            defaults are about twice the peak and the growth measured with the shipped weights
            (``bench/results/load_test.json``).
        seed: seeds the synthetic studies and the readers' choices.
    """

    clients: int = 20
    duration_s: float = 60.0
    weights: Path | None = None
    png: int = 16
    dicom: int = 8
    dicom_slices: int = 3
    duplicates: int = 8
    invalid: int = 10
    max_upload_mb: int = 2
    think_ms: float = 200.0
    drain_timeout_s: float = 300.0
    max_rss_mb: float = 3072.0
    max_growth_mb: float = 768.0
    seed: int = 0


# -- inputs -----------------------------------------------------------------------------------

FileSpec = tuple[str, bytes, str]


@dataclass(frozen=True)
class UploadItem:
    """One upload request of the run.

    Attributes:
        label: name in the report (``png-03``, ``dicom-01#2`` for its repeat, ``text-as-dcm``).
        study: the distinct study it sends (``None`` for invalid uploads).
        files: multipart ``files`` parts (name, bytes, content type).
        expect: statuses it may get.
        chunked: send the body without ``Content-Length`` (counted as it arrives).
    """

    label: str
    study: str | None
    files: tuple[FileSpec, ...]
    expect: frozenset[int]
    chunked: bool = False


INVALID_KINDS: tuple[str, ...] = ("text-as-dcm", "broken-dicom", "two-pngs", "oversize",
                                  "oversize-chunked")


def _png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an 8-bit grey image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_studies(params: LoadParams, folder: Path) -> dict[str, tuple[FileSpec, ...]]:
    """The distinct valid studies: ``png-NN`` (one 256x256 PNG slice) and ``dicom-NN`` (a
    sagittal series of ``dicom_slices`` files), each a different synthetic case."""
    from lumbardx.synth import SynthConfig, generate_case, write_dicom_series

    cfg = SynthConfig(image_sizes=(256,), dicom_slices=(params.dicom_slices,))
    studies: dict[str, tuple[FileSpec, ...]] = {}
    for i in range(params.png):
        case = generate_case(np.random.default_rng([params.seed, 1, i]), cfg)
        studies[f"png-{i:02d}"] = ((f"slice-{i}.png", _png_bytes(case.image), "image/png"),)
    for i in range(params.dicom):
        case = generate_case(np.random.default_rng([params.seed, 2, i]), cfg)
        paths = write_dicom_series(case, folder / f"dicom-{i:02d}", cfg)
        studies[f"dicom-{i:02d}"] = tuple((p.name, p.read_bytes(), "application/dicom")
                                          for p in paths)
    return studies


def invalid_upload(kind: str, n: int, limit: int, png: bytes) -> UploadItem:
    """An upload refused by design: ``kind`` from :data:`INVALID_KINDS`, ``limit`` the
    server's upload limit in bytes, ``png`` a valid PNG for the two-PNG upload."""
    label = f"{kind}-{n}"
    if kind == "text-as-dcm":
        return UploadItem(label, None, (("notes.dcm", b"referral notes\n" * 40,
                                         "application/dicom"),), frozenset({415}))
    if kind == "broken-dicom":  # DICOM magic, no readable dataset: quarantined
        data = b"\0" * 128 + b"DICM" + random.Random(n).randbytes(512)
        return UploadItem(label, None, (("broken.dcm", data, "application/dicom"),),
                          frozenset({422}))
    if kind == "two-pngs":
        return UploadItem(label, None, (("a.png", png, "image/png"), ("b.png", png, "image/png")),
                          frozenset({400}))
    big = PNG_MAGIC + b"\0" * (limit + 256 * 1024)
    return UploadItem(label, None, (("big.png", big, "image/png"),), frozenset({413}),
                      chunked=kind == "oversize-chunked")


def make_uploads(params: LoadParams, studies: dict[str, tuple[FileSpec, ...]]
                 ) -> list[UploadItem]:
    """Every upload of the run, shuffled: each study once, ``duplicates`` of them again, and
    ``invalid`` refused ones."""
    rng = random.Random(params.seed)
    valid = frozenset({200, 201})
    items = [UploadItem(name, name, files, valid) for name, files in studies.items()]
    names = sorted(studies)
    for name in rng.sample(names, min(params.duplicates, len(names))):
        items.append(UploadItem(f"{name}#2", name, studies[name], valid))
    some_png = next(files[0][1] for name, files in sorted(studies.items())
                    if name.startswith("png")) if params.png else PNG_MAGIC
    for n in range(params.invalid):
        kind = INVALID_KINDS[n % len(INVALID_KINDS)]
        items.append(invalid_upload(kind, n, params.max_upload_mb * 1024 * 1024, some_png))
    rng.shuffle(items)
    return items


# -- the server ---------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of process ``pid`` in MiB (current and peak resident memory)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024.0
    return values["VmRSS"], values["VmHWM"]


def disk_bytes(pid: int, folders: list[Path]) -> int:
    """Bytes of files under ``folders`` plus those of the files process ``pid`` holds open
    there (also unlinked ones: a spooled upload is an anonymous temporary file), each file
    counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    roots = [str(f.resolve()) for f in folders]

    def add(st: os.stat_result) -> None:
        nonlocal total
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size

    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                try:
                    add(os.lstat(os.path.join(dirpath, name)))
                except FileNotFoundError:
                    continue
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
            if any(target.startswith(root + os.sep) for root in roots):
                st = os.stat(fd)  # follows to the (possibly unlinked) file
                if stat.S_ISREG(st.st_mode):
                    add(st)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class ServerProcess:
    """``python -m lumbardx serve`` on ``127.0.0.1:<free port>``.

    Args:
        root: a fresh folder for the data folder (``data/``), ``TMPDIR`` (``tmp/``) and the
            server's log (``server.log``).
        weights: checkpoint to serve (``None``: the shipped weights).
        max_upload_mb: ``--max-upload-mb``.
    """

    def __init__(self, root: Path, weights: Path | None, max_upload_mb: int) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.tmp_dir = root / "tmp"
        self.log_path = root / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.weights, self.max_upload_mb = weights, max_upload_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_s: float | None = None

    def add_users(self, names: list[str], role: str = "clinician") -> None:
        """Create accounts in the data folder with the app's account store."""
        from lumbardx.app.accounts import UserStore
        from lumbardx.app.files import private_dir

        store = UserStore(private_dir(self.data_dir) / "users.json")
        for name in names:
            store.add(name, PASSWORD, role)

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the server and wait until it answers."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "lumbardx", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--max-upload-mb", str(self.max_upload_mb), "--backend", "torch"]
        if self.weights is not None:
            cmd += ["--weights", str(self.weights)]
        env = {**os.environ, "TMPDIR": str(self.tmp_dir), "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/auth/login-token", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"the server did not answer within {timeout_s:g} s")
            time.sleep(0.2)
        self.start_s = time.monotonic() - t0

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """Stop the server (SIGINT: uvicorn's graceful shutdown; killed after 30 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MemorySampler(threading.Thread):
    """Samples the resident memory of process ``pid`` every ``period_s`` seconds."""

    def __init__(self, pid: int, period_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float]] = []  # (monotonic s, MiB)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mb(self.pid)[0]))
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join(timeout=5)

    def now(self) -> float:
        """One sample taken now (MiB)."""
        return rss_mb(self.pid)[0]


# -- requests -----------------------------------------------------------------------------------

@dataclass
class Record:
    """One request: the route template, the status (``None``: no answer), latency, when it
    started (seconds since the load began), whether the status was one it may get, and why
    not when it was not."""

    route: str
    status: int | None
    ms: float
    t: float
    ok: bool
    phase: str
    problem: str | None = None


class Recorder:
    """Thread-safe list of :class:`Record` with the clock of the run."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.t0 = time.monotonic()
        self.phase = "load"
        self._lock = threading.Lock()

    def add(self, record: Record) -> None:
        """Keep one record."""
        with self._lock:
            self.records.append(record)


@dataclass
class Shared:
    """What the readers share: the upload list, the studies they know with their last known
    status, and the answers to the uploads."""

    uploads: deque[tuple[float, UploadItem]]
    status: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[UploadItem, int | None, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_upload(self, now: float | None) -> UploadItem | None:
        """The next upload, removed from the list, when its time (``time.monotonic()``) is
        not after ``now`` (``None``: whatever its time); else ``None``."""
        with self.lock:
            if self.uploads and (now is None or self.uploads[0][0] <= now):
                return self.uploads.popleft()[1]
        return None

    def learn(self, rows: list[dict[str, Any]]) -> None:
        """Note the status of worklist rows."""
        with self.lock:
            for row in rows:
                self.status[row["study_key"]] = row["status"]

    def pick(self, rng: random.Random, statuses: tuple[str, ...] | None = None) -> str | None:
        """A known study (with one of ``statuses``), or ``None``."""
        with self.lock:
            keys = [k for k, s in self.status.items() if statuses is None or s in statuses]
        return rng.choice(sorted(keys)) if keys else None

    def known(self, key: str) -> str:
        """The last known status of ``key``."""
        with self.lock:
            return self.status.get(key, "new")


def _multipart_chunks(files: tuple[FileSpec, ...], boundary: str) -> Iterator[bytes]:
    """A multipart body sent in 64 KiB pieces without ``Content-Length``."""
    for name, data, mime in files:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
               f"filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n").encode()
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


class Session:
    """One browser: an ``httpx`` client with its cookies and, once signed in, its CSRF token;
    every request it sends is recorded.

    Args:
        url: the server.
        recorder: where requests are recorded.
    """

    def __init__(self, url: str, recorder: Recorder) -> None:
        self.recorder = recorder
        self.client = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S)
        self.csrf: dict[str, str] = {}

    def call(self, route: str, method: str, url: str, expect: frozenset[int] | set[int],
             **kw: Any) -> httpx.Response | None:
        """Send one request and record it; ``None`` when no answer came."""
        t = time.monotonic()
        try:
            r = self.client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            ms = (time.monotonic() - t) * 1000
            self.recorder.add(Record(route, None, ms, t - self.recorder.t0, False,
                                     self.recorder.phase, f"{type(exc).__name__}: {exc}"))
            return None
        ms = (time.monotonic() - t) * 1000
        ok = r.status_code in expect
        problem = None if ok else f"{method} {url}: {r.status_code} {r.text[:200]}"
        self.recorder.add(Record(route, r.status_code, ms, t - self.recorder.t0, ok,
                                 self.recorder.phase, problem))
        return r

    def sign_in(self, user: str, password: str, expect: frozenset[int]) -> int | None:
        """Login CSRF token, then the login; returns the login status."""
        r = self.call("GET /api/auth/login-token", "GET", "/api/auth/login-token", {200})
        if r is None or r.status_code != 200:
            return None
        token = r.json()["csrf_token"]
        r = self.call("POST /api/auth/login", "POST", "/api/auth/login", expect,
                      json={"username": user, "password": password},
                      headers={"X-CSRF-Token": token})
        if r is not None and r.status_code == 200:
            self.csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        return None if r is None else r.status_code

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


class Reader(threading.Thread):
    """One simulated reader: signs in, then works until the deadline (module docstring).

    Args:
        n: reader number (its account is ``reader<n>``; reader 0 also tries a wrong password).
        url: the server.
        shared: the readers' shared state.
        recorder: where requests are recorded.
        deadline: ``time.monotonic()`` after which it stops (uploads still pending are sent).
        think_ms: mean pause between actions.
        seed: seeds its choices.
    """

    ACTIONS: tuple[tuple[str, float], ...] = (
        ("worklist", 3.0), ("detail", 3.0), ("image", 1.0), ("overlay", 1.5),
        ("findings", 1.0), ("report", 1.5), ("review", 2.5))

    def __init__(self, n: int, url: str, shared: Shared, recorder: Recorder, deadline: float,
                 think_ms: float, seed: int) -> None:
        super().__init__(daemon=True, name=f"reader{n}")
        self.n, self.shared = n, shared
        self.deadline, self.think_s = deadline, think_ms / 1000.0
        self.rng = random.Random(seed * 1000 + n)
        self.session = Session(url, recorder)
        self.error: BaseException | None = None

    # -- the reader's work ----------------------------------------------------------------------
    def run(self) -> None:
        try:
            if self.n == 0:  # a wrong password until the account lock answers
                for _ in range(6):
                    self.session.sign_in(INTRUDER, "not the password", frozenset({401, 429}))
            if self.session.sign_in(f"reader{self.n}", PASSWORD, frozenset({200})) != 200:
                return
            while time.monotonic() < self.deadline:
                if not self.upload_due():
                    name = self.rng.choices([a for a, _ in self.ACTIONS],
                                            [w for _, w in self.ACTIONS])[0]
                    getattr(self, f"do_{name}")()
                time.sleep(self.rng.uniform(0, 2 * self.think_s))
            while self.upload_due(wait=False):  # the list is sent in full
                pass
            self.session.call("POST /api/auth/logout", "POST", "/api/auth/logout", {204},
                              headers=self.session.csrf)
        except BaseException as exc:  # noqa: BLE001 - reported as a failure of the run
            self.error = exc
        finally:
            self.session.close()

    def upload_due(self, wait: bool = True) -> bool:
        """Send the next upload when its time has come (any time when ``wait`` is false);
        whether one was sent."""
        item = self.shared.next_upload(time.monotonic() if wait else None)
        if item is None:
            return False
        self.upload(item)
        return True

    def upload(self, item: UploadItem) -> None:
        """Send one upload and keep its answer."""
        if item.chunked:
            boundary = f"lumbardx-load-{self.rng.getrandbits(64):x}"
            headers = {**self.session.csrf,
                       "Content-Type": f"multipart/form-data; boundary={boundary}"}
            r = self.session.call("POST /api/studies", "POST", "/api/studies", item.expect,
                                  content=_multipart_chunks(item.files, boundary),
                                  headers=headers)
        else:
            r = self.session.call("POST /api/studies", "POST", "/api/studies", item.expect,
                                  files=[("files", f) for f in item.files],
                                  headers=self.session.csrf)
        body: dict[str, Any] = {}
        if r is not None:
            try:
                body = r.json()
            except ValueError:
                body = {}
        with self.shared.lock:
            self.shared.answers.append((item, None if r is None else r.status_code, body))
        if r is not None and r.status_code in (200, 201):
            self.shared.learn([body["study"]])

    def do_worklist(self) -> None:
        """Poll the worklist."""
        r = self.session.call("GET /api/studies", "GET", "/api/studies", {200})
        if r is not None and r.status_code == 200:
            self.shared.learn(r.json()["studies"])

    def do_detail(self) -> None:
        """Open a study."""
        key = self.shared.pick(self.rng)
        if key is None:
            return
        r = self.session.call("GET /api/studies/{key}", "GET", f"/api/studies/{key}", {200})
        if r is not None and r.status_code == 200:
            self.shared.learn([r.json()["study"]])

    def do_image(self) -> None:
        """The slice, as stored or windowed."""
        key = self.shared.pick(self.rng)
        if key is None:
            return
        params = {"center": 600, "width": 900} if self.rng.random() < 0.5 else None
        self.session.call("GET /api/studies/{key}/image.png", "GET",
                          f"/api/studies/{key}/image.png", {200}, params=params)

    def _output_expect(self, key: str) -> set[int]:
        """An analysis output exists once the study is analysed, never for a failed one."""
        status = self.shared.known(key)
        return {200} if status in ("analysed", "reviewed") else {404} if status == "failed" \
            else {200, 404}

    def do_overlay(self) -> None:
        """The findings overlay."""
        key = self.shared.pick(self.rng)
        if key is not None:
            self.session.call("GET /api/studies/{key}/overlay.png", "GET",
                              f"/api/studies/{key}/overlay.png", self._output_expect(key))

    def do_findings(self) -> None:
        """``findings.json``."""
        key = self.shared.pick(self.rng)
        if key is not None:
            self.session.call("GET /api/studies/{key}/findings.json", "GET",
                              f"/api/studies/{key}/findings.json", self._output_expect(key))

    def do_report(self) -> None:
        """The PDF or the HTML report."""
        key = self.shared.pick(self.rng)
        if key is not None:
            fmt = self.rng.choice(("pdf", "html"))
            self.session.call(f"GET /api/studies/{{key}}/report.{fmt}", "GET",
                              f"/api/studies/{key}/report.{fmt}", self._output_expect(key))

    def do_review(self) -> None:
        """Look at an analysed study's review, decide one pending box, sometimes complete."""
        key = self.shared.pick(self.rng, ("analysed",))
        if key is None:
            return
        base = f"/api/studies/{key}/review"
        r = self.session.call("GET /api/studies/{key}/review", "GET", base, {200})
        if r is None or r.status_code != 200:
            return
        review = r.json()
        if review["state"] == "complete":
            return
        pending = [b["id"] for b in review["boxes"] if b["decision"] == "pending"]
        if pending:
            action = self.rng.choice(("accept", "reject"))
            self.session.call(f"POST /api/studies/{{key}}/review/boxes/{{box_id}}/{action}",
                              "POST", f"{base}/boxes/{self.rng.choice(pending)}/{action}",
                              {200}, headers=self.session.csrf)
        if not pending or self.rng.random() < 0.35:
            r = self.session.call("POST /api/studies/{key}/review/complete", "POST",
                                  f"{base}/complete", {200}, json={"accept_pending": True},
                                  headers=self.session.csrf)
            if r is not None and r.status_code == 200:
                with self.shared.lock:
                    self.shared.status[key] = "reviewed"


# -- after the load -----------------------------------------------------------------------------

def _review_in_record(session: Session, key: str) -> bool:
    """Whether ``key``'s ``findings.json`` states its current review (the queued rewrite ran)."""
    review = session.call("GET /api/studies/{key}/review", "GET", f"/api/studies/{key}/review",
                          {200})
    record = session.call("GET /api/studies/{key}/findings.json", "GET",
                          f"/api/studies/{key}/findings.json", {200})
    if review is None or record is None or review.status_code != 200 \
            or record.status_code != 200:
        return False
    now, stated = review.json(), record.json().get("review") or {}

    def decisions(boxes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(b["id"], b["decision"], b["label"], [round(v, 2) for v in b["box"]])
                for b in boxes]

    return (stated.get("state") == now["state"] and stated.get("reviewed_at") == now["updated_at"]
            and decisions(stated.get("boxes", [])) == decisions(now["boxes"]))


def drain(url: str, user: str, recorder: Recorder, timeout_s: float) -> dict[str, Any]:
    """Wait until no study is ``new`` and every reviewed study's record states its review
    (requests recorded in ``recorder``'s current phase).

    Returns:
        ``drained``, ``drain_s`` (seconds until then, or until the timeout), the last
        worklist rows, and the keys still waiting when it timed out.
    """
    session = Session(url, recorder)
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        session.sign_in(user, PASSWORD, frozenset({200}))
        while True:
            r = session.call("GET /api/studies", "GET", "/api/studies", {200},
                             params={"limit": 1000})
            if r is not None and r.status_code == 200:
                rows = r.json()["studies"]
                waiting = [row["study_key"] for row in rows if row["status"] not in FINAL]
                if not waiting:
                    waiting = [row["study_key"] for row in rows if row["status"] == "reviewed"
                               and not _review_in_record(session, row["study_key"])]
            else:
                waiting = ["(worklist not answered)"]
            if not waiting or time.monotonic() - t0 > timeout_s:
                return {"drained": not waiting, "drain_s": time.monotonic() - t0,
                        "rows": rows, "waiting": waiting}
            time.sleep(0.5)
    finally:
        session.close()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies (ms), rounded to 0.1 ms."""
    a = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def timeline(records: list[Record], samples: list[tuple[float, float]], t0: float,
             bucket_s: float = 5.0) -> list[dict[str, Any]]:
    """Per ``bucket_s`` seconds of the run: requests started, their p95 latency, and the
    server's largest sampled resident memory (MiB)."""
    end = max([r.t for r in records] + [t - t0 for t, _ in samples] + [0.0])
    out = []
    for k in range(int(end // bucket_s) + 1):
        lo, hi = k * bucket_s, (k + 1) * bucket_s
        ms = [r.ms for r in records if lo <= r.t < hi]
        rss = [mb for t, mb in samples if lo <= t - t0 < hi]
        out.append({"t_s": lo, "requests": len(ms),
                    "p95_ms": round(float(np.percentile(ms, 95)), 1) if ms else None,
                    "rss_mb": round(max(rss), 1) if rss else None})
    return out


def route_stats(records: list[Record], seconds: float) -> dict[str, dict[str, Any]]:
    """Per route: requests, requests/s over ``seconds``, statuses, latency percentiles."""
    by_route: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        by_route[rec.route].append(rec)
    out = {}
    for route in sorted(by_route):
        recs = by_route[route]
        out[route] = {"requests": len(recs), "rps": round(len(recs) / seconds, 2),
                      "statuses": dict(sorted(Counter(str(r.status) for r in recs).items())),
                      "latency_ms": percentiles([r.ms for r in recs])}
    return out


def check_uploads(answers: list[tuple[UploadItem, int | None, dict[str, Any]]],
                  sent: int, planned: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Each distinct study stored once, repeats answered as duplicates of the same key, the
    invalid uploads refused as designed. Returns ``(check, study -> key)``."""
    problems: list[str] = []
    by_study: dict[str, list[tuple[int | None, dict[str, Any]]]] = defaultdict(list)
    refused: Counter[str] = Counter()
    for item, status, body in answers:
        if item.study is None:
            if status not in item.expect:
                problems.append(f"{item.label}: {status}, expected {sorted(item.expect)}")
            refused[str(status)] += 1
        else:
            by_study[item.study].append((status, body))
    keys: dict[str, str] = {}
    for study, got in sorted(by_study.items()):
        created = [b for s, b in got if s == 201 and b.get("duplicate") is False]
        repeats = [b for s, b in got if s == 200 and b.get("duplicate") is True]
        if len(created) != 1 or len(created) + len(repeats) != len(got):
            problems.append(f"{study}: answers {[s for s, _ in got]} (one 201, then 200 "
                            "duplicates expected)")
        study_keys = {b["study"]["study_key"] for b in created + repeats}
        if len(study_keys) != 1:
            problems.append(f"{study}: study keys {sorted(study_keys)}")
        elif created:
            keys[study] = study_keys.pop()
    if len(set(keys.values())) != len(keys):
        problems.append("two distinct studies were given one study key")
    if sent != planned:
        problems.append(f"{planned - sent} uploads were never sent")
    repeats_sent = sum(len(g) - 1 for g in by_study.values())
    return ({"ok": not problems, "distinct_studies": len(by_study), "stored": len(keys),
             "duplicates_sent": repeats_sent, "invalid_sent": sum(refused.values()),
             "invalid_statuses": dict(sorted(refused.items())), "problems": problems}, keys)


def check_audit(path: Path, accepted: int) -> dict[str, Any]:
    """The audit chain verifies and holds one ``upload`` event per accepted upload."""
    from lumbardx.app.audit import verify_audit

    check = verify_audit(path)
    actions = Counter(json.loads(line)["action"] for line in path.read_text().splitlines())
    return {"ok": check.ok and actions["upload"] == accepted, "chain_ok": check.ok,
            "lines": check.lines, "problem": check.problem, "upload_events": actions["upload"],
            "accepted_uploads": accepted, "actions": dict(sorted(actions.items()))}


def machine() -> dict[str, Any]:
    """The machine the run used."""
    import torch

    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def run(params: LoadParams) -> dict[str, Any]:
    """One load test (module docstring), in a temporary folder removed afterwards; returns
    the result document. Progress goes to stdout."""
    t_start = time.monotonic()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="lumbardx-load-"))
    try:
        studies = make_studies(params, root / "inputs")
        uploads = make_uploads(params, studies)
        server = ServerProcess(root / "server", params.weights, params.max_upload_mb)
        server.add_users([f"reader{n}" for n in range(params.clients)])
        print(f"{len(studies)} studies, {len(uploads)} uploads; starting the server")
        with server:
            server.start()
            print(f"server up in {server.start_s:.1f} s (pid {server.pid}); "
                  f"{params.clients} readers for {params.duration_s:g} s")
            result = _load(params, server, uploads)
            stopped = time.monotonic()
        result["server"]["stop_s"] = round(time.monotonic() - stopped, 1)
        result["server"]["start_s"] = round(server.start_s or 0.0, 1)
        log_text = server.log_path.read_text(errors="replace")
        tracebacks = log_text.count("Traceback (most recent call last)")
        result["invariants"]["server_log"] = {
            "ok": tracebacks == 0, "tracebacks": tracebacks,
            "error_lines": sum(1 for line in log_text.splitlines() if "ERROR" in line)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["invariants"]["ok"] = all(v["ok"] for v in result["invariants"].values()
                                     if isinstance(v, dict))
    result = {"what": "lumbardx serve under concurrent readers (bench/load_test.py)",
              "machine": info, "params": {**asdict(params), "weights": str(params.weights)
                                          if params.weights else "shipped default"},
              "wall_s": round(time.monotonic() - t_start, 1), **result}
    return result


def _load(params: LoadParams, server: ServerProcess, uploads: list[UploadItem]
          ) -> dict[str, Any]:
    """The load and drain phases against a started server; the result without machine and
    parameters."""
    recorder = Recorder()
    spread = 0.7 * params.duration_s
    shared = Shared(deque((recorder.t0 + spread * i / max(len(uploads), 1), item)
                          for i, item in enumerate(uploads)))
    sampler = MemorySampler(server.pid)
    rss_start = sampler.now()
    sampler.start()
    deadline = recorder.t0 + params.duration_s
    readers = [Reader(n, server.url, shared, recorder, deadline, params.think_ms, params.seed)
               for n in range(params.clients)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    load_s = time.monotonic() - recorder.t0
    rss_after_load = sampler.now()
    recorder.phase = "drain"
    print(f"load done in {load_s:.1f} s ({len(recorder.records)} requests); draining the queue")
    drained = drain(server.url, "reader0", recorder, params.drain_timeout_s)
    rss_end = sampler.now()
    sampler.stop()
    _, hwm = rss_mb(server.pid)
    leftovers = {"staging": sorted(p.name for p in (server.data_dir / "staging").iterdir()),
                 "tmpdir_bytes": disk_bytes(server.pid, [server.tmp_dir])}
    load_records = [r for r in recorder.records if r.phase == "load"]
    failures = [r for r in recorder.records if not r.ok]
    reader_errors = [f"reader{r.n}: {type(r.error).__name__}: {r.error}" for r in readers
                     if r.error is not None]
    planned = len(uploads)
    upload_check, keys = check_uploads(shared.answers, len(shared.answers), planned)
    rows = drained["rows"]
    listed = [row["study_key"] for row in rows]
    accepted = sum(1 for _, status, _ in shared.answers if status in (200, 201))
    statuses = Counter(row["status"] for row in rows)
    samples = [mb for _, mb in sampler.samples]
    peak = max(samples + [rss_start, rss_end])
    growth = rss_end - rss_start
    intruder = [r.status for r in recorder.records if r.route == "POST /api/auth/login"
                and r.status in (401, 429)]
    invariants: dict[str, Any] = {
        "requests": {"ok": not failures and not reader_errors, "failed": len(failures),
                     "no_answer": sum(1 for r in failures if r.status is None),
                     "server_errors": sum(1 for r in failures if (r.status or 0) >= 500),
                     "reader_errors": reader_errors,
                     "first_failures": [asdict(r) for r in failures[:20]]},
        "uploads": upload_check,
        "worklist": {"ok": len(listed) == len(set(listed)) and set(listed) == set(keys.values()),
                     "rows": len(listed), "distinct": len(set(listed)),
                     "stored": len(keys)},
        "queue": {"ok": drained["drained"], "drain_s": round(drained["drain_s"], 1),
                  "bound_s": params.drain_timeout_s, "statuses": dict(sorted(statuses.items())),
                  "waiting": drained["waiting"]},
        "login_lock": {"ok": intruder == [401] * 5 + [429], "wrong_password_answers": intruder},
        "audit": check_audit(server.data_dir / "audit.jsonl", accepted),
        "leftovers": {"ok": not leftovers["staging"] and leftovers["tmpdir_bytes"] == 0,
                      **leftovers},
        "memory": {"ok": max(peak, hwm) <= params.max_rss_mb and growth <= params.max_growth_mb,
                   "rss_start_mb": round(rss_start, 1),
                   "rss_after_load_mb": round(rss_after_load, 1),
                   "rss_end_mb": round(rss_end, 1), "rss_peak_sampled_mb": round(peak, 1),
                   "rss_peak_kernel_mb": round(hwm, 1), "growth_mb": round(growth, 1),
                   "bound_peak_mb": params.max_rss_mb, "bound_growth_mb": params.max_growth_mb,
                   "samples": len(samples)},
    }
    return {
        "load_s": round(load_s, 1),
        "server": {},
        "totals": {"requests": len(load_records),
                   "rps": round(len(load_records) / load_s, 2),
                   "latency_ms": percentiles([r.ms for r in load_records]),
                   "statuses": dict(sorted(Counter(str(r.status) for r in load_records).items())),
                   "drain_requests": len(recorder.records) - len(load_records)},
        "routes": route_stats(load_records, load_s),
        "timeline": timeline(recorder.records, sampler.samples, recorder.t0),
        "invariants": invariants,
    }


def main() -> None:
    """Command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = LoadParams()
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds of load")
    p.add_argument("--weights", type=Path, default=None,
                   help="checkpoint to serve (default: the shipped weights)")
    p.add_argument("--png", type=int, default=d.png, help="distinct PNG studies")
    p.add_argument("--dicom", type=int, default=d.dicom, help="distinct DICOM series")
    p.add_argument("--dicom-slices", type=int, default=d.dicom_slices)
    p.add_argument("--duplicates", type=int, default=d.duplicates)
    p.add_argument("--invalid", type=int, default=d.invalid)
    p.add_argument("--max-upload-mb", type=int, default=d.max_upload_mb)
    p.add_argument("--think-ms", type=float, default=d.think_ms)
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s)
    p.add_argument("--max-rss-mb", type=float, default=d.max_rss_mb)
    p.add_argument("--max-growth-mb", type=float, default=d.max_growth_mb)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=Path("bench/results/load_test.json"))
    a = p.parse_args()
    params = LoadParams(clients=a.clients, duration_s=a.duration, weights=a.weights, png=a.png,
                        dicom=a.dicom, dicom_slices=a.dicom_slices, duplicates=a.duplicates,
                        invalid=a.invalid, max_upload_mb=a.max_upload_mb, think_ms=a.think_ms,
                        drain_timeout_s=a.drain_timeout, max_rss_mb=a.max_rss_mb,
                        max_growth_mb=a.max_growth_mb, seed=a.seed)
    result = run(params)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    t = result["totals"]
    print(f"{t['requests']} requests in {result['load_s']} s: {t['rps']} req/s, "
          f"p50 {t['latency_ms']['p50']} ms, p95 {t['latency_ms']['p95']} ms, "
          f"p99 {t['latency_ms']['p99']} ms")
    for route, s in result["routes"].items():
        lat = s["latency_ms"]
        print(f"  {route:58s} {s['requests']:5d} {s['rps']:6.2f}/s  p50 {lat['p50']:8.1f}"
              f"  p95 {lat['p95']:8.1f}  p99 {lat['p99']:8.1f} ms")
    inv = result["invariants"]
    m, q = inv["memory"], inv["queue"]
    print(f"memory: start {m['rss_start_mb']} MiB, peak {m['rss_peak_kernel_mb']} MiB, "
          f"growth {m['growth_mb']} MiB; queue drained in {q['drain_s']} s ({q['statuses']})")
    for name, check in inv.items():
        if isinstance(check, dict):
            print(f"  {name}: {'ok' if check['ok'] else 'FAILED'}")
    print(f"wrote {a.out}")
    sys.exit(0 if inv["ok"] else 1)


if __name__ == "__main__":
    main()
