"""The web app under concurrent readers, at small scale: ``bench/load_test.py`` (a real
``lumbardx serve`` subprocess, readers on threads) with 4 readers for about 10 seconds, and its
invariants -- no request lost or failed except by design, no study lost or stored twice,
duplicates answered as duplicates, the analysis queue drained, the audit chain intact, nothing
left in staging, the server's memory bounded.

Also the account store's behaviour that the load test exposed: a sign-in's slow password hash
must not hold the store's lock, which every authenticated request takes, and a burst of
sign-ins hashes a few at a time (each argon2id hash takes 64 MiB).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type
from bench_scripts import load_bench
from checkpoints import tiny_checkpoint

from lumbardx.app.accounts import CONCURRENT_HASHES, User, UserStore

lt = load_bench("load_test")
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random YOLOv5n whose biases make it propose boxes (so reviews have boxes)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt",
                           tag="load-test", training_data="none (random test weights)")


def test_concurrent_readers_lose_nothing(weights: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out = tmp_path / "load.json"
    monkeypatch.setattr(sys, "argv", [
        "load_test.py", "--clients", "4", "--duration", "10", "--weights", str(weights),
        "--png", "3", "--dicom", "1", "--duplicates", "2", "--invalid", "5",
        "--drain-timeout", "60", "--out", str(out)])
    with pytest.raises(SystemExit) as ended:
        lt.main()
    result = json.loads(out.read_text())
    inv = result["invariants"]
    failed = {name: check for name, check in inv.items()
              if isinstance(check, dict) and not check["ok"]}
    assert not failed, json.dumps(failed, indent=1)[:6000]
    assert inv["ok"] and ended.value.code == 0

    uploads = inv["uploads"]
    assert (uploads["distinct_studies"], uploads["stored"], uploads["duplicates_sent"]) == (4, 4, 2)
    assert uploads["invalid_statuses"] == {"400": 1, "413": 2, "415": 1, "422": 1}
    assert inv["worklist"]["rows"] == inv["worklist"]["distinct"] == 4
    assert sum(inv["queue"]["statuses"].values()) == 4
    assert set(inv["queue"]["statuses"]) <= {"analysed", "reviewed", "failed"}
    assert inv["requests"]["failed"] == 0 and inv["requests"]["server_errors"] == 0
    assert inv["login_lock"]["wrong_password_answers"] == [401] * 5 + [429]
    assert inv["audit"]["chain_ok"] and inv["audit"]["upload_events"] == 6
    assert inv["memory"]["rss_peak_kernel_mb"] >= inv["memory"]["rss_start_mb"] > 50

    routes = result["routes"]
    assert {"POST /api/auth/login", "POST /api/studies", "GET /api/studies",
            "GET /api/studies/{key}", "POST /api/auth/logout"} <= set(routes)
    assert routes["POST /api/studies"]["requests"] == 4 + 2 + 5
    for stats in routes.values():
        lat = stats["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["totals"]["rps"] > 0 and result["machine"]["cpu"]
    assert result["params"]["clients"] == 4 and result["wall_s"] > 10


def test_the_upload_check_catches_lost_doubled_and_misanswered_uploads() -> None:
    valid = frozenset({200, 201})
    a = lt.UploadItem("png-00", "png-00", (), valid)
    a2 = lt.UploadItem("png-00#2", "png-00", (), valid)  # the same study sent again
    b = lt.UploadItem("png-01", "png-01", (), valid)
    bad = lt.UploadItem("oversize-0", None, (), frozenset({413}))

    def row(key: str, duplicate: bool) -> dict[str, object]:
        return {"study": {"study_key": key}, "duplicate": duplicate}

    good = [(a, 201, row("k" * 16, False)), (a2, 200, row("k" * 16, True)),
            (b, 201, row("j" * 16, False)), (bad, 413, {})]
    check, keys = lt.check_uploads(good, 4, 4)
    assert check["ok"] and keys == {"png-00": "k" * 16, "png-01": "j" * 16}
    cases = {
        "stored twice": [(a, 201, row("k" * 16, False)), (a2, 201, row("k" * 16, False))],
        "repeat not a duplicate": [(a, 201, row("k" * 16, False)), (a2, 200, row("k" * 16, False))],
        "repeat under another key": [(a, 201, row("k" * 16, False)),
                                     (a2, 200, row("m" * 16, True))],
        "lost": [(a, None, {}), (a2, 200, row("k" * 16, True))],
        "two studies, one key": [(a, 201, row("k" * 16, False)), (b, 201, row("k" * 16, False))],
        "oversize accepted": [(bad, 201, row("k" * 16, False))],
    }
    for name, answers in cases.items():
        assert not lt.check_uploads(answers, len(answers), len(answers))[0]["ok"], name
    assert not lt.check_uploads(good, 4, 5)[0]["ok"]  # one never sent


class _GatedHasher(PasswordHasher):
    """A fast argon2id whose ``verify`` waits until the test opens ``gate``: a sign-in caught
    in the middle of its hash (``entered`` is set once it is there)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
        self.entered, self.gate = threading.Event(), threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.entered.set()
        assert self.gate.wait(10)
        return super().verify(hash, password)


class _SignIn(threading.Thread):
    """``store.verify_password(name, password)`` on its own thread, started and waited for
    until it is inside the hash; ``user`` is its answer once joined."""

    def __init__(self, store: UserStore, hasher: _GatedHasher, name: str) -> None:
        super().__init__(daemon=True)
        self.store, self.name_ = store, name
        self.user: User | None = None
        hasher.entered.clear()
        hasher.gate.clear()
        self.start()
        assert hasher.entered.wait(10)

    def run(self) -> None:
        self.user = self.store.verify_password(self.name_, PASSWORD)


def _two_accounts(tmp_path: Path) -> tuple[UserStore, _GatedHasher]:
    """A store with alice and bob whose password checks wait for ``hasher.gate``."""
    hasher = _GatedHasher()
    store = UserStore(tmp_path / "users.json", hasher=hasher)
    store.add("alice", PASSWORD)
    store.add("bob", PASSWORD)
    return store, hasher


def test_a_sign_in_does_not_hold_the_account_store(tmp_path: Path) -> None:
    store, hasher = _two_accounts(tmp_path)
    sign_in = _SignIn(store, hasher, "alice")
    t = time.monotonic()
    assert store.get("bob") is not None  # what every authenticated request does
    assert store.verify_token("lxd_abcdefgh." + "x" * 43) is None
    assert time.monotonic() - t < 1.0
    hasher.gate.set()
    sign_in.join(10)
    assert sign_in.user is not None and sign_in.user.name == "alice"


def test_an_account_changed_during_its_sign_in_is_not_signed_in(tmp_path: Path) -> None:
    store, hasher = _two_accounts(tmp_path)
    removed = _SignIn(store, hasher, "alice")
    store.remove("alice")
    hasher.gate.set()
    removed.join(10)
    assert removed.user is None
    changed = _SignIn(store, hasher, "bob")
    store.set_password("bob", "a new long password")
    hasher.gate.set()
    changed.join(10)
    assert changed.user is None  # checked against the password it had: refused


class _CountingHasher(PasswordHasher):
    """A fast argon2id that notes how many ``verify`` calls run at once (each lasts 50 ms)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
        self.running = self.most = 0
        self.lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return super().verify(hash, password)


def test_sign_ins_hash_a_few_at_a_time(tmp_path: Path) -> None:
    hasher = _CountingHasher()
    store = UserStore(tmp_path / "users.json", hasher=hasher)
    store.add("alice", PASSWORD)
    answers: list[User | None] = []
    threads = [threading.Thread(target=lambda n=n: answers.append(store.verify_password(
        "alice" if n % 2 else "nobody", PASSWORD))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(answers) == 8 and sum(a is not None for a in answers) == 4
    assert 1 <= hasher.most <= CONCURRENT_HASHES


def test_a_weak_hash_is_upgraded_at_sign_in(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    UserStore(path, hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1,
                                          type=Type.ID)).add("alice", PASSWORD)
    weak = json.loads(path.read_text())["users"]["alice"]["password"]
    store = UserStore(path)
    assert store.verify_password("alice", PASSWORD).name == "alice"
    strong = json.loads(path.read_text())["users"]["alice"]["password"]
    assert strong != weak and not store.hasher.check_needs_rehash(strong)
    assert store.verify_password("alice", PASSWORD) is not None
    assert store.verify_password("alice", "wrong password!") is None
