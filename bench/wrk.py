"""Running wrk with the Lua scripts in ``bench/lua`` and reading their summary line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LUA_DIR = Path(__file__).parent / "lua"
# Generous: a login waits behind up to 32 others (~5 s at 6 logins/s); a request that
# takes longer is a real problem and is counted as a timeout error.
REQUEST_TIMEOUT_S = 30
MARKER = "BENCH_JSON "


class WrkError(RuntimeError):
    """wrk failed or printed no summary."""


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed: apt-get install wrk (make bench does it as root)")
    return found


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles and every kind of error."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int  # connect + read + write + timeout
    status_errors: int  # responses >= 400 (wrk's "Non-2xx or 3xx")
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors + self.extra.get("unexpected", 0)

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        line = next((ln for ln in output.splitlines() if ln.startswith(MARKER)), None)
        if line is None:
            raise WrkError("wrk printed no summary:\n" + output[-2000:])
        data = json.loads(line.removeprefix(MARKER))
        known = {
            "requests",
            "duration_us",
            "connect",
            "read",
            "write",
            "status",
            "timeout",
            "p50_us",
            "p99_us",
            "max_us",
        }
        return cls(
            requests=int(data["requests"]),
            seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1e3,
            p99_ms=data["p99_us"] / 1e3,
            max_ms=data["max_us"] / 1e3,
            socket_errors=int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
            status_errors=int(data["status"]),
            extra={k: int(v) for k, v in data.items() if k not in known},
        )


class WrkRun:
    """A wrk process started in the background; ``result()`` waits for it."""

    def __init__(
        self,
        url: str,
        script: str,
        *,
        connections: int,
        threads: int,
        seconds: float,
        env: dict[str, str] | None = None,
    ) -> None:
        self.seconds = seconds
        argv = [
            wrk_path(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={REQUEST_TIMEOUT_S}s",
            "--latency",
            "-s",
            str(LUA_DIR / script),
            url,
        ]
        self.process = subprocess.Popen(
            argv,
            cwd=LUA_DIR,  # the scripts require("common") from here
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result(self) -> WrkResult:
        try:
            output, _ = self.process.communicate(timeout=self.seconds + REQUEST_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise WrkError("wrk did not finish in time") from None
        if self.process.returncode != 0:
            raise WrkError(f"wrk exited with {self.process.returncode}:\n{output[-2000:]}")
        return WrkResult.parse(output)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def run_wrk(
    url: str,
    script: str,
    *,
    connections: int,
    threads: int | None = None,
    seconds: float,
    env: dict[str, str] | None = None,
) -> WrkResult:
    run = WrkRun(
        url,
        script,
        connections=connections,
        threads=threads or min(connections, 2),
        seconds=seconds,
        env=env,
    )
    try:
        return run.result()
    finally:
        run.kill()
