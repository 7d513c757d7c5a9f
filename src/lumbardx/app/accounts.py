"""User accounts of the web app: argon2id password hashes and hashed API tokens in
``DATA_DIR/users.json`` (mode 0600, written atomically).

File layout::

    {"schema": "lumbardx.users/1",
     "users": {"alice": {"role": "clinician", "password": "$argon2id$v=19$...",
                         "created_at": "2025-03-01T09:15:02Z",
                         "tokens": {"k3J9x2": {"sha256": "<hex>", "label": "nightly export",
                                               "created_at": "..."}}}}}

Passwords are hashed with argon2-cffi's :class:`argon2.PasswordHasher` (argon2id, the library's
RFC 9106 "low memory" parameters). API tokens are 256-bit random secrets; only their sha256 is
stored (a secret of that entropy needs no slow hash), and a token reads
``lxd_<id>.<secret>`` so that the server finds the entry without scanning. The file is read
again whenever it changed on disk, so ``lumbardx users ...`` takes effect on a running server.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from lumbardx.app.files import read_json, write_json
from lumbardx.data.errors import LumbardxError

SCHEMA = "lumbardx.users/1"
ROLES: tuple[str, ...] = ("clinician", "admin")
MIN_PASSWORD_LENGTH = 10
#: Password hashes computed at once at sign-in; more wait their turn. argon2id's "low memory"
#: parameters take 64 MiB and several threads per hash, so a burst of sign-ins (or of an
#: attacker's guesses) would otherwise take 64 MiB and the CPU per request in flight.
CONCURRENT_HASHES = 2
TOKEN_PREFIX = "lxd_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN = re.compile(r"^lxd_([A-Za-z0-9_-]{6,32})\.([A-Za-z0-9_-]{20,128})$")


class AccountError(LumbardxError, ValueError):
    """An account operation that cannot be done (unknown user, weak password, ...)."""


@dataclass(frozen=True)
class User:
    """A signed-in person: ``name`` and ``role`` (``"clinician"`` or ``"admin"``)."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        """Whether the user may use admin-only routes."""
        return self.role == "admin"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds and ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_name(name: str) -> str:
    """``name`` when it is a valid user name (letters, digits, ``. _ -``, at most 64)."""
    if not _NAME.match(name or ""):
        raise AccountError(f"invalid user name {name!r}: use letters, digits, '.', '_' or '-' "
                           "(at most 64, starting with a letter or digit)")
    return name


def check_password(password: str) -> str:
    """``password`` when it is long enough."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")
    return password


class UserStore:
    """Accounts in one ``users.json``; every method is thread-safe.

    Args:
        path: the ``users.json`` file (created on the first :meth:`add`).
        hasher: argon2 hasher (argon2id by default).
    """

    def __init__(self, path: str | Path, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher(type=Type.ID)
        self._lock = threading.RLock()
        self._hashing = threading.BoundedSemaphore(CONCURRENT_HASHES)
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))  # equal time, unknown users

    # -- file ---------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {"schema": SCHEMA, "users": {}}
        if self._cache is not None and self._cache[0] == mtime:
            return self._cache[1]
        try:
            doc = read_json(self.path)
        except (OSError, ValueError) as exc:
            raise AccountError(f"{self.path}: cannot read the accounts file ({exc})") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(
                doc.get("users"), dict):
            raise AccountError(f"{self.path}: not a lumbardx accounts file ({SCHEMA})")
        self._cache = (mtime, doc)
        return doc

    def _save(self, doc: dict[str, Any]) -> None:
        write_json(self.path, doc)
        self._cache = None

    # -- accounts -----------------------------------------------------------------------------
    def users(self) -> list[User]:
        """Every account, sorted by name."""
        with self._lock:
            users = self._load()["users"]
            return [User(n, u.get("role", "clinician")) for n, u in sorted(users.items())]

    def get(self, name: str) -> User | None:
        """The account ``name``, or ``None``."""
        with self._lock:
            entry = self._load()["users"].get(name)
            return None if entry is None else User(name, entry.get("role", "clinician"))

    def add(self, name: str, password: str, role: str = "clinician") -> User:
        """Create an account. Raises :class:`AccountError` when it exists or is invalid."""
        check_name(name)
        check_password(password)
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        with self._lock:
            doc = self._load()
            if name in doc["users"]:
                raise AccountError(f"user {name!r} exists already")
            doc = {"schema": SCHEMA, "users": dict(doc["users"])}
            doc["users"][name] = {"role": role, "password": self.hasher.hash(password),
                                  "created_at": utc_now(), "tokens": {}}
            self._save(doc)
        return User(name, role)

    def set_password(self, name: str, password: str) -> None:
        """Replace the password of ``name``."""
        check_password(password)
        with self._lock:
            doc = self._load()
            entry = self._entry(doc, name)
            entry["password"] = self.hasher.hash(password)
            self._save(doc)

    def remove(self, name: str) -> None:
        """Delete the account and its tokens."""
        with self._lock:
            doc = self._load()
            self._entry(doc, name)
            del doc["users"][name]
            self._save(doc)

    def _entry(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        entry = doc["users"].get(name)
        if entry is None:
            raise AccountError(f"no user named {name!r}")
        return entry

    def verify_password(self, name: str, password: str) -> User | None:
        """The user when ``password`` is right, else ``None`` (same work for unknown names).
        A hash made with weaker parameters than the hasher's is upgraded.

        The slow hash runs without the store's lock: every authenticated request reads the
        store (:meth:`get`), and holding the lock through a hash would stall them all while
        anyone signs in. At most :data:`CONCURRENT_HASHES` hashes run at once."""
        with self._lock:
            entry = self._load()["users"].get(name)
            stored = entry["password"] if entry else self._dummy
        with self._hashing:
            try:
                self.hasher.verify(stored, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
            if entry is None:
                return None
            upgraded = (self.hasher.hash(password) if self.hasher.check_needs_rehash(stored)
                        else None)
        with self._lock:  # the account may have been removed or its password changed meanwhile
            doc = self._load()
            current = doc["users"].get(name)
            if current is None or current["password"] != stored:
                return None
            if upgraded is not None:
                current["password"] = upgraded
                self._save(doc)
            return User(name, current.get("role", "clinician"))

    # -- API tokens ---------------------------------------------------------------------------
    def create_token(self, name: str, label: str = "") -> str:
        """A new API token for ``name``; the returned text is the only copy of the secret."""
        token_id = secrets.token_urlsafe(6).replace("-", "x").replace("_", "y")
        secret = secrets.token_urlsafe(32)
        with self._lock:
            doc = self._load()
            entry = self._entry(doc, name)
            entry.setdefault("tokens", {})[token_id] = {
                "sha256": hashlib.sha256(secret.encode()).hexdigest(), "label": label,
                "created_at": utc_now()}
            self._save(doc)
        return f"{TOKEN_PREFIX}{token_id}.{secret}"

    def tokens(self, name: str) -> dict[str, dict[str, str]]:
        """Token id -> ``{"label", "created_at"}`` of ``name`` (no hashes)."""
        with self._lock:
            entry = self._entry(self._load(), name)
            return {k: {"label": v.get("label", ""), "created_at": v.get("created_at", "")}
                    for k, v in entry.get("tokens", {}).items()}

    def revoke_token(self, name: str, token_id: str) -> None:
        """Delete one token of ``name``."""
        with self._lock:
            doc = self._load()
            tokens = self._entry(doc, name).get("tokens", {})
            if token_id not in tokens:
                raise AccountError(f"user {name!r} has no token {token_id!r}")
            del tokens[token_id]
            self._save(doc)

    def verify_token(self, token: str) -> User | None:
        """The token's user, or ``None`` for a malformed, unknown or revoked token."""
        match = _TOKEN.match(token or "")
        if match is None:
            return None
        token_id, secret = match.groups()
        digest = hashlib.sha256(secret.encode()).hexdigest()
        with self._lock:
            for name, entry in self._load()["users"].items():
                stored = entry.get("tokens", {}).get(token_id)
                if stored is not None and hmac.compare_digest(stored["sha256"], digest):
                    return User(name, entry.get("role", "clinician"))
        return None
