"""What a server process tree costs, read from /proc: CPU seconds and peak RSS."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants (uvicorn's supervisor and its workers)."""
    pids, queue = [], [root]
    while queue:
        pid = queue.pop()
        if not (PROC / str(pid)).exists():
            continue
        pids.append(pid)
        for task in (PROC / str(pid) / "task").glob("*"):
            try:
                queue.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 once it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may hold spaces, inside parentheses).
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had, in MB (0 once it is gone)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_idle(pids: list[int], *, limit_s: float = 30.0, step_s: float = 0.25) -> None:
    """Wait (bounded) until the processes stop using CPU, e.g. logins a finished wrk
    run abandoned are still hashing; the next measurement must not pay for them."""
    deadline = time.monotonic() + limit_s
    before = total_cpu(pids)
    while time.monotonic() < deadline:
        time.sleep(step_s)
        after = total_cpu(pids)
        if after - before < 0.1 * step_s:
            return
        before = after
