"""Private files of the data folder: folders with mode 0700, files written atomically with
mode 0600 (temporary file in the same folder, ``fsync``, :func:`os.replace`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lumbardx.io import atomic_write_bytes


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 when missing; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600 (readers never see half a file)."""
    path = Path(path)
    private_dir(path.parent)
    return atomic_write_bytes(path, data, mode=0o600)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON with :func:`write_private`."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    return write_private(path, text.encode("utf-8"))


def read_json(path: str | Path) -> Any:
    """The JSON object in ``path`` (``OSError`` / ``ValueError`` on failure)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
