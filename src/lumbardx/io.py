"""Atomic file writes: a reader never sees half a file, a failure never destroys the old one.

Every writer here puts the data in a temporary file in the target's folder
(``.<name>.<random>.tmp``, hidden), flushes it to disk (``fsync``), then moves it over the
target with :func:`os.replace`, which is atomic when both names lie on one file system (the
reason the temporary file sits beside the target). A failure at any step -- an exception while
writing, a full disk, Ctrl-C -- removes the temporary file and leaves the previous target, if
any, untouched. The target's folder is created when missing.

Permissions: ``mode=None`` gives the new file the permissions a plain ``open(path, "wb")`` would
(``0o666`` less the process umask); an explicit ``mode`` (``0o644`` for files meant to be shared,
``0o600`` for private ones) is set exactly, whatever the umask, before any data is written.

Every lumbardx output that may be read while it is written, or must survive an interrupted run
(checkpoints, exported models, converted datasets, reports, DICOM objects, run records), goes
through this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_copy", "atomic_save", "atomic_write_bytes", "atomic_write_text"]

_TEMP_TRIES = 100


def _create_temp(path: Path, mode: int | None) -> tuple[int, Path]:
    """Create an empty, new temporary file beside ``path``; returns ``(fd, temp path)``.

    Opened with ``O_EXCL`` (never an existing file). Without ``mode`` it is created ``0o666``
    so that the umask decides the permissions (not a fixed ``0o600`` as with
    :func:`tempfile.mkstemp`); with ``mode`` it gets exactly ``mode`` before any data is
    written, so a private file is never readable by others, not even while written.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666 if mode is None else mode)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.chmod(tmp, mode)  # exact, whatever the umask
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def _replacing(path: str | Path, mode: int | None) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield ``(binary file, temp path)`` of a new temporary file with ``mode``
    (:func:`_create_temp`); on a clean exit fsync, close and move it over ``path``; on any
    exception remove the temporary file and re-raise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh, tmp
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(path: str | Path, write: Callable[[BinaryIO], object],
                mode: int | None = None) -> Path:
    """Write ``path`` atomically through ``write(file)``, which writes bytes into the open
    binary ``file`` (e.g. ``lambda f: torch.save(state, f)``). Returns ``path`` as a Path.

    Raises:
        Whatever ``write`` or the file system raises; the previous file is then untouched and
        no temporary file is left.
    """
    with _replacing(path, mode) as (fh, _):
        write(fh)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a Path."""
    return atomic_save(path, lambda fh: fh.write(data), mode)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8",
                      mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding``, line ends as given
    (no ``\\n`` -> ``\\r\\n`` translation on any platform); returns ``path`` as a Path."""
    return atomic_write_bytes(path, text.encode(encoding), mode)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a dataset text file (annotations, class lists: UTF-8, line ends as given, mode
    ``0o644`` so that other tools and users can read it) atomically: :func:`atomic_write_text`."""
    atomic_write_text(path, text, mode=0o644)


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy the file ``src`` to ``dst`` atomically, with its permission bits and times
    (as :func:`shutil.copy2`); returns ``dst`` as a Path.

    Raises:
        FileNotFoundError / OSError: ``src`` cannot be read or ``dst`` written (``dst`` is then
            untouched).
    """
    with _replacing(dst, None) as (fh, tmp), Path(src).open("rb") as source:
        shutil.copyfileobj(source, fh, 1 << 20)
        fh.flush()
        shutil.copystat(src, tmp)  # after the last write, so the times stay the source's
    return Path(dst)
