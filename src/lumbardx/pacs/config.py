"""Connection settings for a DICOMweb PACS: URL, user, password, TLS verification.

Where credentials come from, first match wins:

* password: an explicit ``password`` argument (library use only; the command line never takes
  a password as an argument), then the environment variable named by ``password_env``
  (default ``LUMBARDX_PACS_PASSWORD``), then a netrc-format credentials file;
* user: an explicit ``user``, then the credentials file;
* credentials file: ``credentials_file`` when given, else ``$NETRC``, else ``~/.netrc`` when it
  exists. Entries are looked up by ``machine host:port``, then ``machine host``, then
  ``default`` (standard netrc syntax: ``machine pacs.example.org login ai password s3cret``).
  A file that other users can read is refused (``chmod 600`` it).

Credentials never appear in a URL, a log record, a ``repr`` or an error message: a URL holding
``user:password@`` is refused with a message that shows it without them.
"""

from __future__ import annotations

import ipaddress
import netrc
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lumbardx.data.errors import InputError

DEFAULT_PASSWORD_ENV = "LUMBARDX_PACS_PASSWORD"
DEFAULT_TIMEOUT_S = 30.0


def redact_url(url: str) -> str:
    """``url`` without user information, query and fragment (safe to print or log)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class PacsSettings:
    """How to reach one DICOMweb service.

    Attributes:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (no credentials, no query;
            a trailing ``/`` is removed).
        user, password: HTTP Basic credentials, or ``None`` for an open service. The password
            is left out of ``repr``.
        verify: TLS certificate check for ``https``: ``True`` (system CAs), ``False`` (off; see
            :meth:`transport_warnings`), or the path of a CA bundle (PEM).
        timeout_s: seconds to wait for a connection and for each answer.
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        safe = redact_url(self.url)
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            raise InputError(None, f"PACS URL {safe!r} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise InputError(None, f"PACS URL {safe!r} must start with http:// or https://")
        if not parts.hostname:
            raise InputError(None, f"PACS URL {safe!r} has no host name")
        if parts.username is not None or parts.password is not None:
            raise InputError(None, f"PACS URL {safe!r} holds a user name or password; put them "
                                   "in an environment variable or a netrc file instead")
        if parts.query or parts.fragment:
            raise InputError(None, f"PACS URL {safe!r} must not have a query (?...) or "
                                   "fragment (#...)")
        if port == 0:
            raise InputError(None, f"PACS URL {safe!r} has port 0")
        if isinstance(self.verify, str) and not Path(self.verify).is_file():
            raise InputError(self.verify, "CA bundle for TLS verification does not exist")
        if not self.timeout_s > 0:
            raise InputError(None, f"PACS timeout must be positive, got {self.timeout_s}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @property
    def host(self) -> str:
        """Host name or address of the service."""
        return urlsplit(self.url).hostname or ""

    @property
    def auth(self) -> tuple[str, str] | None:
        """``(user, password)`` for HTTP Basic authentication, or ``None``."""
        if self.user is None:
            return None
        return (self.user, self.password or "")

    def transport_warnings(self) -> list[str]:
        """Plain-language warnings about how credentials and images travel (no secrets)."""
        out = []
        scheme = urlsplit(self.url).scheme
        if scheme == "http" and self.user is not None and not _is_loopback(self.host):
            out.append(f"{self.url}: credentials and images travel unencrypted over http to "
                       f"{self.host}; use https")
        if scheme == "https" and self.verify is False:
            out.append(f"{self.url}: TLS certificate verification is off")
        return out


def _default_credentials_file(environ: Mapping[str, str]) -> Path | None:
    if environ.get("NETRC"):
        return Path(environ["NETRC"])
    home = Path(environ.get("HOME") or Path.home())
    candidate = home / ".netrc"
    return candidate if candidate.is_file() else None


def read_credentials_file(path: str | Path, url: str) -> tuple[str | None, str | None]:
    """``(login, password)`` for ``url``'s host from a netrc-format file, ``(None, None)``
    when the file has no entry for it.

    Raises:
        InputError: naming the file: missing, readable by other users, or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "credentials file does not exist")
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise InputError(path, "credentials file can be read by other users; restrict it with "
                               "'chmod 600'")
    try:
        entries = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise InputError(path, f"credentials file is not in netrc format{where}") from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    keys = ([f"{host}:{parts.port}"] if parts.port else []) + [host]
    for key in keys:
        if key in entries.hosts:
            login, _, password = entries.hosts[key]
            return login or None, password or None
    found = entries.authenticators(host)  # falls back to the 'default' entry
    if found is None:
        return None, None
    return found[0] or None, found[2] or None


def resolve_settings(
    url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    password_env: str | None = DEFAULT_PASSWORD_ENV,
    credentials_file: str | Path | None = None,
    verify: bool | str = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> PacsSettings:
    """Settings for ``url`` with credentials found as the module docstring describes.

    ``password`` stays ``None`` when no source has one; the caller may then ask for it (the
    command line prompts with hidden input) or connect without authentication. Callers show
    :meth:`PacsSettings.transport_warnings` to the user (unencrypted credentials, TLS off).

    Raises:
        InputError: a bad URL, a missing CA bundle, or an unusable credentials file.
    """
    env = os.environ if environ is None else environ
    base = PacsSettings(url=url, verify=verify, timeout_s=timeout_s)  # validates the URL first
    if password is None and password_env and env.get(password_env):
        password = env[password_env]
    if user is None or password is None:
        file = Path(credentials_file) if credentials_file is not None else (
            _default_credentials_file(env))
        if file is not None:
            file_user, file_password = read_credentials_file(file, base.url)
            if user is None:
                user = file_user
            if password is None and file_password is not None and user == file_user:
                password = file_password
    return PacsSettings(url=base.url, user=user, password=password, verify=verify,
                        timeout_s=timeout_s)
