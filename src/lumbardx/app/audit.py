"""Append-only, hash-chained audit log: ``DATA_DIR/audit.jsonl``.

Each line is one JSON object (keys sorted, no spaces)::

    {"action": "view", "detail": {}, "prev": "<sha256 hex of the previous line>", "seq": 7,
     "study_key": "3f9a0c1d2e4b5a69", "time": "2025-03-01T09:15:02.123Z", "user": "alice"}

``prev`` is the sha256 of the previous line's bytes (without its newline); the first line has
64 zeros. Changing, inserting or deleting a line breaks the chain at the next line, which
:func:`verify_audit` reports. ``audit.head`` (written atomically after each append) holds the
number of lines and the hash of the last one, so cutting lines off the end is detected too.
Lines never hold patient names or IDs: studies are named by ``study_key`` and ``detail`` carries
only de-identified facts (box ids, labels, counts).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lumbardx.app.files import private_dir, write_private

GENESIS = "0" * 64
HEAD_SUFFIX = ".head"


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _now() -> str:
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AuditCheck:
    """Result of :func:`verify_audit`: ``ok``, the number of ``lines`` read, and for a broken
    chain the 1-based ``line`` where it breaks and the ``problem`` in words."""

    ok: bool
    lines: int
    problem: str | None = None
    line: int | None = None


class AuditLog:
    """Appends chained lines to one audit file; thread-safe within a process.

    Args:
        path: the ``audit.jsonl`` file (created when missing, mode 0600).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + HEAD_SUFFIX)
        private_dir(self.path.parent)
        self._lock = threading.Lock()
        self._prev, self._seq = self._tail()

    def _tail(self) -> tuple[str, int]:
        if not self.path.exists():
            return GENESIS, 0
        prev, seq = GENESIS, 0
        with self.path.open("rb") as fh:
            for raw in fh:
                line = raw.rstrip(b"\n")
                if line:
                    prev, seq = _digest(line), seq + 1
        return prev, seq

    def append(self, user: str | None, action: str, study_key: str | None = None,
               **detail: Any) -> dict[str, Any]:
        """Append one event and return it. ``detail`` values must be JSON-serialisable and
        free of patient identifiers."""
        with self._lock:
            event = {"time": _now(), "user": user, "action": action, "study_key": study_key,
                     "detail": detail, "seq": self._seq + 1, "prev": self._prev}
            line = json.dumps(event, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=True).encode("ascii")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._prev, self._seq = _digest(line), self._seq + 1
            write_private(self.head_path, json.dumps(
                {"lines": self._seq, "last_sha256": self._prev}).encode("ascii"))
            return event


def verify_audit(path: str | Path) -> AuditCheck:
    """Check the chain of an audit file (and its ``.head`` file when present).

    Returns:
        ``AuditCheck(ok=True, lines=n)`` when every line is valid JSON whose ``prev`` is the
        sha256 of the line before and whose ``seq`` counts up from 1; otherwise ``ok=False``
        with the first broken line and the problem.
    """
    path = Path(path)
    if not path.exists():
        return AuditCheck(False, 0, f"{path.name}: file does not exist", None)
    prev, n = GENESIS, 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return AuditCheck(False, n, "last line is incomplete (no newline)", n)
            line = raw[:-1]
            try:
                event = json.loads(line)
            except ValueError:
                return AuditCheck(False, n, "line is not valid JSON", n)
            if not isinstance(event, dict) or event.get("prev") != prev:
                return AuditCheck(False, n, "chain broken: 'prev' is not the hash of the line "
                                            "before (a line was changed, removed or inserted)", n)
            if event.get("seq") != n:
                return AuditCheck(False, n, f"sequence number {event.get('seq')!r}, expected {n}",
                                  n)
            prev = _digest(line)
    head = path.with_name(path.name + HEAD_SUFFIX)
    if head.exists():
        try:
            expected = json.loads(head.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return AuditCheck(False, n, f"{head.name} is unreadable", None)
        if expected.get("lines") != n or expected.get("last_sha256") != prev:
            return AuditCheck(False, n, f"{head.name} records {expected.get('lines')} lines "
                                        f"ending in another hash: lines were removed from "
                                        "the end or the last line changed", None)
    return AuditCheck(True, n)
