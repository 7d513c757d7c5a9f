"""A real Orthanc PACS (with its DICOMweb plugin) for tests, on free loopback ports.

Import the fixture into a test module with ``from orthanc import orthanc``. It needs the Debian
packages ``orthanc`` and ``orthanc-dicomweb`` (``scripts/install-test-deps.sh``) and skips,
saying so, when they are missing.

The server stores into a temporary folder, accepts HTTP from loopback only
(``RemoteAccessAllowed`` false), requires HTTP Basic authentication, and refuses DICOM network
requests from unknown peers (Orthanc 1.10 has no bind-address option for its DICOM port). It
is stopped at the end of the session; on Linux it also receives SIGTERM if the test process
dies, so no Orthanc outlives the tests.
"""

from __future__ import annotations

import ctypes
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
USER = "lumbardx-test"


class OrthancServer(NamedTuple):
    """A running test Orthanc; ``url`` is its DICOMweb root,
    ``http://127.0.0.1:<port>/dicom-web``."""

    url: str
    user: str
    password: str

    @property
    def rest_url(self) -> str:
        """Root of Orthanc's own REST API (``/system``, ``/instances``, ``/tools/find``)."""
        return self.url.rsplit("/dicom-web", 1)[0]

    def rest(self, path: str) -> object:
        """GET ``rest_url + path`` with the test credentials; the decoded JSON answer."""
        r = requests.get(self.rest_url + path, auth=(self.user, self.password), timeout=10)
        r.raise_for_status()
        return r.json()


def orthanc_binary() -> str | None:
    """Path of the ``Orthanc`` executable (Debian installs it in /usr/sbin), or ``None``."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin shared library, from ``dpkg -L orthanc-dicomweb`` or the
    usual install folders; ``None`` when it is not installed."""
    candidates: list[str] = []
    if shutil.which("dpkg"):
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True,
                                 text=True, check=False)
        candidates += [line for line in listing.stdout.splitlines()
                       if "OrthancDicomWeb.so" in line]
    candidates += glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*")
    candidates += glob("/usr/lib/orthanc/libOrthancDicomWeb.so*")
    candidates += glob("/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*")
    return next((c for c in candidates if Path(c).is_file()), None)


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, plugin: str, password: str) -> tuple[int, int]:
    """Write ``folder/orthanc.json``; returns ``(http_port, dicom_port)``."""
    http_port, dicom_port = free_loopback_port(), free_loopback_port()
    while dicom_port == http_port:
        dicom_port = free_loopback_port()
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "lumbardx-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "LUMBARDXTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "ExecuteLuaEnabled": False,
        "SaveJobs": False,
        "HttpThreadsCount": 8,
        "ConcurrentJobs": 1,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": f"127.0.0.1:{http_port}", "Ssl": False},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return http_port, dicom_port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to send SIGTERM to the child when the test process dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _tail(log: Path, n: int = 2000) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-n:] if log.exists() else ""


def _start(folder: Path, binary: str, plugin: str, password: str
           ) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start Orthanc on fresh ports and wait (bounded) until ``/system`` answers with auth."""
    http_port, _ = write_config(folder, plugin, password)
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, str(folder / "orthanc.json")], cwd=folder, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc, http_port, log
        try:
            r = requests.get(f"http://127.0.0.1:{http_port}/system", auth=(USER, password),
                             timeout=2)
            if r.status_code == 200:
                return proc, http_port, log
        except requests.RequestException:
            pass
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"Orthanc did not answer on port {http_port} within "
                       f"{START_TIMEOUT_S:.0f} s; log:\n{_tail(log)}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A running Orthanc with DICOMweb; yields ``OrthancServer(url, user, password)``."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None:
        pytest.skip("Orthanc is not installed (run scripts/install-test-deps.sh)")
    if plugin is None:
        pytest.skip("the Orthanc DICOMweb plugin is not installed "
                    "(run scripts/install-test-deps.sh)")
    password = secrets.token_urlsafe(16)
    proc = None
    for attempt in range(3):  # a port taken between choosing and binding: retry on new ports
        folder = tmp_path_factory.mktemp(f"orthanc{attempt}")
        try:
            proc, port, log = _start(folder, binary, plugin, password)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        if proc.poll() is None:
            break
        proc = None
    if proc is None:
        pytest.fail(f"Orthanc exited at start three times; last log:\n{_tail(log)}")
    try:
        yield OrthancServer(f"http://127.0.0.1:{port}/dicom-web", USER, password)
    finally:
        _stop(proc)
