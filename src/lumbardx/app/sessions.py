"""Server-side login sessions and the login rate limiter.

A session is a random id kept in memory with its user, CSRF token and times; the browser holds
only the id, signed with :class:`itsdangerous.Signer` (key in ``DATA_DIR/secret.key``), in an
HttpOnly, SameSite=Strict cookie. A session ends ``idle_s`` seconds after its last request and
``max_s`` seconds after login, on logout, and when the server restarts. Times come from
:func:`time.monotonic` (an injectable ``clock``), so wall-clock changes do not extend sessions.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from itsdangerous import BadSignature, Signer

from lumbardx.app.accounts import User
from lumbardx.app.files import write_private

SESSION_COOKIE = "lumbardx_session"
LOGIN_CSRF_COOKIE = "lumbardx_login_csrf"


def load_secret(path: str | Path) -> bytes:
    """The cookie-signing key in ``path``, created (32 random bytes, mode 0600) when missing."""
    path = Path(path)
    if path.exists():
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    key = secrets.token_hex(32).encode()
    write_private(path, key)
    return key


@dataclass
class Session:
    """One signed-in browser. Times are ``clock()`` seconds."""

    sid: str
    user: User
    csrf_token: str
    created: float
    last_seen: float
    wall_created: float = field(default_factory=time.time)


class SessionStore:
    """In-memory sessions with idle and absolute expiry; thread-safe.

    Args:
        secret: signing key of the cookie value.
        idle_s: seconds without a request after which a session ends.
        max_s: seconds after login after which a session ends.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, secret: bytes, idle_s: float, max_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._signer = Signer(secret, salt="lumbardx.session")
        self._login_signer = Signer(secret, salt="lumbardx.login-csrf")
        self.idle_s, self.max_s, self.clock = idle_s, max_s, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> tuple[Session, str]:
        """A new session for ``user`` and the signed cookie value."""
        now = self.clock()
        sess = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._purge(now)
            self._sessions[sess.sid] = sess
        return sess, self._signer.sign(sess.sid.encode()).decode()

    def get(self, cookie: str | None) -> Session | None:
        """The live session of a cookie value (touching it), or ``None``."""
        if not cookie:
            return None
        try:
            sid = self._signer.unsign(cookie.encode()).decode()
        except (BadSignature, UnicodeError):
            return None
        now = self.clock()
        with self._lock:
            sess = self._sessions.get(sid)
            if sess is None:
                return None
            if now - sess.last_seen > self.idle_s or now - sess.created > self.max_s:
                del self._sessions[sid]
                return None
            sess.last_seen = now
            return sess

    def expires_in(self, sess: Session) -> float:
        """Seconds until ``sess`` ends if no other request comes."""
        now = self.clock()
        return max(0.0, min(sess.last_seen + self.idle_s, sess.created + self.max_s) - now)

    def end(self, sid: str) -> None:
        """Forget one session."""
        with self._lock:
            self._sessions.pop(sid, None)

    def end_user(self, name: str) -> None:
        """Forget every session of user ``name``."""
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if v.user.name == name]:
                del self._sessions[sid]

    def _purge(self, now: float) -> None:
        dead = [sid for sid, s in self._sessions.items()
                if now - s.last_seen > self.idle_s or now - s.created > self.max_s]
        for sid in dead:
            del self._sessions[sid]

    # -- login CSRF (double submit) -------------------------------------------------------------
    def new_login_token(self) -> tuple[str, str]:
        """``(token for the page, signed cookie value)`` of the login form's double submit."""
        token = secrets.token_urlsafe(32)
        return token, self._login_signer.sign(token.encode()).decode()

    def check_login_token(self, cookie: str | None, token: str | None) -> bool:
        """Whether the login form sent back the token matching its cookie."""
        if not cookie or not token:
            return False
        try:
            expected = self._login_signer.unsign(cookie.encode()).decode()
        except (BadSignature, UnicodeError):
            return False
        return secrets.compare_digest(expected, token)


class LoginLimiter:
    """Locks the account being attacked, not everyone behind the attacker's address.

    * **Per account** (user name, case-insensitive): after ``max_failures`` failed logins in a
      row (a run ends with a success, or when ``window_s`` passes without a failure before the
      lock), the account is locked for ``window_s`` seconds after the last failure; each further
      failure doubles the lock (back-off), up to ``max_lock_s``. A success clears the run.
    * **Per client address**: failed logins on any account within a sliding ``window_s`` are
      counted, and the address waits only when they reach ``address_factor`` x
      ``max_failures`` (password spraying across accounts), so colleagues behind one clinic
      address keep signing in while one account is locked.
    """

    def __init__(self, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic, address_factor: int = 10,
                 max_lock_s: float = 24 * 3600.0) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.address_limit = address_factor * max_failures
        self.max_lock_s = max_lock_s
        self._accounts: dict[str, tuple[int, float]] = {}  # user -> (failures in a row, last)
        self._addresses: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _account_wait(self, user: str, now: float) -> float:
        count, last = self._accounts.get(user, (0, -math.inf))
        if count < self.max_failures:
            return 0.0
        lock = min(self.window_s * 2.0 ** (count - self.max_failures), self.max_lock_s)
        return max(0.0, last + lock - now)

    def retry_after(self, username: str, client: str) -> float:
        """Seconds until a login to ``username`` from ``client`` may be tried (0: now)."""
        now = self.clock()
        with self._lock:
            wait = self._account_wait(username.lower(), now)
            q = self._addresses.get(client)
            if q:
                while q and now - q[0] > self.window_s:
                    q.popleft()
                if len(q) >= self.address_limit:
                    wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, username: str, client: str) -> None:
        """Record a failed login."""
        now = self.clock()
        user = username.lower()
        with self._lock:
            count, last = self._accounts.get(user, (0, -math.inf))
            if count < self.max_failures and now - last > self.window_s:
                count = 0  # an old run of failures that never locked the account
            self._accounts[user] = (count + 1, now)
            self._addresses.setdefault(client, deque()).append(now)

    def succeeded(self, username: str) -> None:
        """Clear the account's run of failures after a successful login."""
        with self._lock:
            self._accounts.pop(username.lower(), None)
