"""Atomic writes (:mod:`lumbardx.io`): complete new file or the untouched old one, never a
temporary file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lumbardx.io import atomic_copy, atomic_save, atomic_write_bytes, atomic_write_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_bytes_creates_folder_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(target, b"first") == target
    assert target.read_bytes() == b"first"
    atomic_write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["out.bin"]


def test_crash_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    atomic_write_bytes(target, b"old complete file")

    def crash(fh) -> None:
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(target, crash)
    assert target.read_bytes() == b"old complete file"
    assert os.listdir(tmp_path) == ["last.pt"]

    def interrupted(fh) -> None:
        fh.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is cleaned up the same way
        atomic_save(target, interrupted)
    assert target.read_bytes() == b"old complete file"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_failed_replace_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    atomic_write_text(target, "old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="cross-device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.html"]


def test_first_write_that_fails_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.json"

    def refuse(fh) -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        atomic_save(target, refuse)
    assert not target.exists() and os.listdir(tmp_path) == []


def test_text_encoding_and_line_ends(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "names.txt", "Bandscheibe\nL5–S1\n")
    assert path.read_bytes() == "Bandscheibe\nL5–S1\n".encode()  # no \r\n on any platform
    atomic_write_text(path, "é", encoding="latin-1")
    assert path.read_bytes() == b"\xe9"


def test_permissions_follow_umask_or_mode(tmp_path: Path) -> None:
    plain = atomic_write_bytes(tmp_path / "plain", b"x")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~_umask()  # like open(), not 0600
    shared = atomic_write_bytes(tmp_path / "shared", b"x", mode=0o640)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    seen: list[int] = []

    def write(fh) -> None:
        seen.append(stat.S_IMODE(os.fstat(fh.fileno()).st_mode))
        fh.write(b"secret")

    private = atomic_save(tmp_path / "private", write, mode=0o600)
    assert seen == [0o600]  # private while it is written, too
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_copy_keeps_data_times_and_mode(tmp_path: Path) -> None:
    src = tmp_path / "src.png"
    src.write_bytes(os.urandom(3 << 20))  # more than one copy block
    os.chmod(src, 0o640)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    dst = tmp_path / "out" / "copy.png"
    dst.parent.mkdir()
    dst.write_bytes(b"older")
    assert atomic_copy(src, dst) == dst
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mtime == src.stat().st_mtime == 1_000_000_000
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    assert os.listdir(dst.parent) == ["copy.png"]


def test_copy_of_missing_source_keeps_target(tmp_path: Path) -> None:
    dst = tmp_path / "copy.png"
    dst.write_bytes(b"older")
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.png", dst)
    assert dst.read_bytes() == b"older" and os.listdir(tmp_path) == ["copy.png"]
