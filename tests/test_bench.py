"""The benchmark harness (``make bench``) in quick mode: it produces its results files
with sane numbers, every refresh chain rotates, and no server outlives it (also on
Ctrl-C). No timing is asserted: the figures depend on the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def _wrk_problem() -> str | None:
    return None if shutil.which("wrk") else "wrk is not installed (apt-get install wrk)"


def bench_env(tmp_path: Path, rows: str) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISSUER_", "BENCH_"))}
    env.update(
        {
            "BENCH_QUICK": "1",
            "BENCH_DURATION": "1",
            "BENCH_ROWS": rows,
            "BENCH_RESULTS_DIR": str(tmp_path / "results"),
            "TMPDIR": str(tmp_path / "tmp"),  # every server's directory lives under it
        }
    )
    return env


def processes_under(directory: Path) -> list[int]:
    """Live processes whose working directory is inside ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(int(proc.name))
    return found


def test_quick_run_writes_sane_results_and_stops_every_server(tmp_path: Path) -> None:
    require_service("wrk", _wrk_problem)
    result = subprocess.run(
        [sys.executable, "-m", "bench.run"],
        cwd=REPO,
        env=bench_env(tmp_path, "verify-hs256,refresh-hs256-sqlite-1w"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [out] = list((tmp_path / "results").iterdir())
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in data["rows"]}
    assert set(rows) == {"verify-hs256", "refresh-hs256-sqlite-1w"}

    refresh = rows["refresh-hs256-sqlite-1w"]
    assert refresh["unit"] == "req/s"
    assert refresh["value"] > 0
    assert refresh["errors"] == 0
    assert refresh["non_2xx"] == 0
    assert refresh["extra"]["rotations"] > 0
    assert refresh["extra"]["failures"] == 0
    assert refresh["extra"]["chains_without_rotation"] == 0  # every chain moved
    assert 0 < refresh["p50_ms"] <= refresh["p99_ms"]
    assert refresh["cpu_cores"] > 0
    assert refresh["rss_mb"]
    assert all(mb > 10 for mb in refresh["rss_mb"])

    verify = rows["verify-hs256"]
    assert verify["value"] > 0
    assert verify["extra"]["joserfc_per_s"] > 0
    assert verify["extra"]["pyjwt_per_s"] > 0

    targets = {t["goal"]: t for t in data["targets"]}
    chain = targets["refresh: zero errors, every chain rotating"]
    assert chain["met"] is True, chain
    assert targets["JWKS 2w >= 35,000 req/s"]["met"] is None  # not measured, not invented

    table = (out / "results.md").read_text()
    assert "refresh grant (rotating), HS256 sqlite 1w" in table
    assert "## Targets (issue 13)" in table
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")
    assert data["machine"]["cores"] >= 1
    assert processes_under(tmp_path) == []


def test_ctrl_c_stops_every_server(tmp_path: Path) -> None:
    require_service("wrk", _wrk_problem)
    env = bench_env(tmp_path, "jwks-1w")
    env["BENCH_DURATION"] = "60"
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait (bounded) until wrk drives the server (not `wrk -v`: a load script named).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and bench.poll() is None:
            if any(b"static.lua" in _cmdline(pid) for pid in _children(bench.pid)):
                break
            time.sleep(0.2)
        running = bench.poll() is None
        servers = processes_under(tmp_path / "tmp")
        bench.send_signal(signal.SIGINT)
        _, stderr = bench.communicate(timeout=60)
        assert running, stderr[-3000:]
        assert servers, "no server was started:\n" + stderr[-3000:]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, stderr[-2000:]
    assert "every server stopped" in stderr
    assert processes_under(tmp_path) == [], stderr[-2000:]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
