"""bcrypt runs at most one check per core; checks with company run on niced threads.

A login storm used to run one bcrypt per login on the request threads, all at once, and
every other request waited behind them for the cores (``make bench``: refresh p99 1.7 s
during a c = 32 storm). A lone check runs on its caller's thread at the caller's priority
(a niced thread only made a login alone wait for other processes). These tests watch
where, how many and at what priority checks run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from issuer import passwords

STORM = 32
CORES = os.cpu_count() or 1


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """bcrypt.checkpw wrapped to record its threads, their priority and peak concurrency."""
    seen: dict[str, Any] = {
        "threads": set(),
        "nice": set(),
        "running": 0,
        "peak": 0,
        "calls": [],  # (thread name, nice value) of each check, in order
        "hold_first": None,  # a threading.Event the first check waits for, when set
        "first_started": threading.Event(),
    }
    lock = threading.Lock()
    real = passwords.bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        with lock:
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
            seen["threads"].add(threading.current_thread().name)
            nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            seen["nice"].add(nice)
            first = not seen["calls"]
            seen["calls"].append((threading.current_thread().name, nice))
        if first and seen["hold_first"] is not None:
            seen["first_started"].set()
            assert seen["hold_first"].wait(30)
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
    assert 1 <= watched["peak"] <= CORES
    # Only a check that found none other in flight may run off the bcrypt threads.
    off_pool = [name for name, _ in watched["calls"] if not name.startswith("bcrypt")]
    assert len(off_pool) < STORM // 2


def test_a_lone_check_runs_on_its_callers_thread_at_the_callers_priority(
    watched: dict[str, Any],
) -> None:
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    hashed = passwords.hash_password("Correct-horse-1", rounds=4)
    watched["calls"].clear()
    assert passwords.verify_password("Correct-horse-1", hashed)
    assert not passwords.verify_password("wrong", hashed)
    assert not passwords.verify_password("Correct-horse-1", None, rounds=4)  # unknown user
    if CORES > 1:  # another core is left to request work: nothing to protect
        assert watched["calls"] == [(threading.current_thread().name, caller)] * 3
    else:  # the one core: even a lone check yields to request work
        assert all(name.startswith("bcrypt") for name, _ in watched["calls"])
        assert {nice for _, nice in watched["calls"]} == {niced(caller)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


def test_checks_with_company_run_niced_on_the_bcrypt_threads_within_the_core_bound(
    watched: dict[str, Any],
) -> None:
    """One check held in flight; right, wrong and unknown-user checks that arrive meanwhile
    all run on niced bcrypt threads, and never more than one per core in all."""
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    hashed = passwords.hash_password("Correct-horse-1", rounds=4)
    watched["calls"].clear()
    watched["peak"] = 0
    watched["hold_first"] = release = threading.Event()
    with ThreadPoolExecutor(max_workers=8) as requests:
        first = requests.submit(passwords.verify_password, "Correct-horse-1", hashed)
        assert watched["first_started"].wait(30)
        company = [
            requests.submit(passwords.verify_password, password, stored, 4)
            for password, stored in [("Correct-horse-1", hashed), ("wrong", hashed)] * 3
            + [("Correct-horse-1", None)]
        ]
        if CORES > 1:  # the free cores take every company check while the first is held
            deadline = time.monotonic() + 30
            while len(watched["calls"]) < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
        release.set()
        assert first.result(30)
        assert [f.result(30) for f in company] == [True, False] * 3 + [False]
    later = watched["calls"][1:]
    assert len(later) == 7
    assert all(name.startswith("bcrypt") for name, _ in later)
    assert {nice for _, nice in later} == {niced(caller)}
    assert 1 <= watched["peak"] <= CORES
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


def niced(priority: int) -> int:
    """The nice value of a bcrypt thread started by a thread of ``priority``."""
    if not sys.platform.startswith("linux"):
        return priority
    return min(priority + passwords.BCRYPT_NICENESS, 19)
