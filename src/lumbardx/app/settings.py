"""Settings of the clinic web app (``lumbardx serve``); one frozen dataclass, no globals.

Sizes are in bytes, times in seconds unless a name says otherwise. Defaults suit one reading
room on one workstation: loopback only, 200 MB per uploaded study, 30 minutes idle sessions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

MB = 1024 * 1024
STATIC_DIR = Path(__file__).resolve().parent / "static"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) is a loopback address."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AppSettings:
    """Everything :func:`lumbardx.app.create_app` needs.

    Attributes:
        data_dir: where accounts, studies, audit log, corrections and teaching sessions live
            (created with mode 0700).
        weights: detector checkpoint (``.pt``) or ONNX file; ``None`` uses the shipped weights.
        model: shipped weights choice when ``weights`` is ``None`` (``"default"``, ``"best"``,
            ``"single"``).
        single_slice_weights: for a detector trained on T1/T2 pairs, the model that reads
            studies without a co-registered pair (``None``: the shipped ``"single"`` choice
            with shipped weights, else the pair model alone).
        backend: ``"auto"``, ``"torch"`` or ``"onnx"`` (see :class:`lumbardx.diagnosis.Diagnoser`).
        pacs_url: DICOMweb root of the PACS (``None``: PACS routes answer 503).
        pacs_credentials_file: netrc-format file with the PACS credentials (else ``$NETRC`` /
            ``~/.netrc`` and ``LUMBARDX_PACS_PASSWORD``, see :mod:`lumbardx.pacs.config`).
        static_dir: the page's files (``login.html``, ``index.html``, .js, .css).
        max_upload_bytes: largest request body of one study upload.
        max_unpacked_bytes: largest total size of the members of an uploaded ZIP.
        max_zip_members: most members of an uploaded ZIP.
        session_idle_s: a session ends after this long without a request.
        session_max_s: a session ends this long after login whatever happens.
        secure_cookies: always mark cookies ``Secure`` (else only for https requests, e.g.
            behind a TLS proxy started with ``--proxy-headers``).
        login_max_failures: failed logins in a row that lock an account (429 with
            Retry-After; the lock doubles with each further failure); a client address waits
            after ten times as many failures on any accounts within ``login_window_s``
            (:class:`lumbardx.app.sessions.LoginLimiter`).
        login_window_s: the first lock's length and the address window.
        analyse_in_background: run the detector after answering the upload (the worklist shows
            ``new`` meanwhile); ``False`` analyses before answering (scripts, tests).
        teaching_folders: name -> labelled folder offered in teaching mode.
        teaching_max_cases: most cases in one quiz session.
        device: torch device for the detector.
    """

    data_dir: Path
    weights: Path | None = None
    model: str = "default"
    single_slice_weights: Path | None = None
    backend: str = "auto"
    pacs_url: str | None = None
    pacs_credentials_file: Path | None = None
    static_dir: Path = STATIC_DIR
    max_upload_bytes: int = 200 * MB
    max_unpacked_bytes: int = 2048 * MB
    max_zip_members: int = 20_000
    session_idle_s: float = 30 * 60.0
    session_max_s: float = 12 * 3600.0
    secure_cookies: bool = False
    login_max_failures: int = 5
    login_window_s: float = 15 * 60.0
    analyse_in_background: bool = True
    teaching_folders: dict[str, Path] = field(default_factory=dict)
    teaching_max_cases: int = 50
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.max_upload_bytes <= 0 or self.max_unpacked_bytes <= 0:
            raise ValueError("upload limits must be positive")
        if self.session_idle_s <= 0 or self.session_max_s <= 0:
            raise ValueError("session lifetimes must be positive")
        if self.login_max_failures < 1:
            raise ValueError("login_max_failures must be at least 1")
