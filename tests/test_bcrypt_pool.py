"""bcrypt runs on its own threads: at most one check per core, at a lower OS priority.

A login storm used to run one bcrypt per login on the request threads, all at once, and
every other request waited behind them for the cores (``make bench``: refresh p99 1.7 s
during a c = 32 storm). These tests watch where and how many checks run.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from issuer import passwords

STORM = 32


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """bcrypt.checkpw wrapped to record its threads, their priority and peak concurrency."""
    seen: dict[str, Any] = {"threads": set(), "nice": set(), "running": 0, "peak": 0}
    lock = threading.Lock()
    real = passwords.bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        with lock:
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
            seen["threads"].add(threading.current_thread().name)
            if sys.platform.startswith("linux"):
                seen["nice"].add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        try:
            return bool(real(password, hashed))
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(passwords.bcrypt, "checkpw", checkpw)
    return seen


def test_a_storm_of_checks_runs_at_most_one_per_core(watched: dict[str, Any]) -> None:
    hashed = passwords.hash_password("Correct-horse-1", rounds=4)
    with ThreadPoolExecutor(max_workers=STORM) as storm:
        results = list(
            storm.map(lambda _: passwords.verify_password("Correct-horse-1", hashed), range(STORM))
        )
    assert results == [True] * STORM
    assert 1 <= watched["peak"] <= (os.cpu_count() or 1)
    assert all(name.startswith("bcrypt") for name in watched["threads"])


def test_failed_and_dummy_checks_use_the_bcrypt_threads_too(watched: dict[str, Any]) -> None:
    hashed = passwords.hash_password("Correct-horse-1", rounds=4)
    assert not passwords.verify_password("wrong", hashed)
    assert not passwords.verify_password("Correct-horse-1", None, rounds=4)  # unknown user
    assert watched["threads"] and all(n.startswith("bcrypt") for n in watched["threads"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux")
def test_bcrypt_threads_run_at_a_lower_priority_than_request_threads(
    watched: dict[str, Any],
) -> None:
    request_thread = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    hashed = passwords.hash_password("Correct-horse-1", rounds=4)
    assert passwords.verify_password("Correct-horse-1", hashed)
    expected = min(request_thread + passwords.BCRYPT_NICENESS, 19)
    assert watched["nice"] == {expected}
    # The caller's own priority is untouched.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == request_thread
