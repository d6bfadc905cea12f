"""How long the ``issuer`` command takes to start: ``python -m bench.cli_startup``.

Runs each command several times in a fresh interpreter against a throwaway SQLite
database and prints the best and median wall-clock times, and the best CPU time (user +
system) of the process. The best run is the figure to compare; on a busy machine the
CPU time is the steadier one, the median shows how loaded it was. Not a test: timings
belong here, not in ``make test``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: tuple[tuple[str, ...], ...] = (("--help",), ("users", "list"), ("clients", "list"))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run of ``argv``."""
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, _children_cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "ISSUER_DATABASE_URL": f"sqlite:///{home / 'issuer.db'}",
            "ISSUER_KEYS_DIR": str(home / "keys"),
        }
        env.pop("ISSUER_CONFIG", None)
        issuer = [args.python, "-m", "issuer"]
        subprocess.run([*issuer, "init"], env=env, cwd=home, check=True, capture_output=True)
        print(f"{'command':<24} {'best':>8} {'median':>8} {'cpu':>8}  ({args.runs} runs)")
        for command in COMMANDS:
            runs = [timed([*issuer, *command], env, home) for _ in range(args.runs)]
            wall = [w for w, _ in runs]
            name = "issuer " + " ".join(command)
            print(
                f"{name:<24} {min(wall):>7.3f}s {statistics.median(wall):>7.3f}s "
                f"{min(c for _, c in runs):>7.3f}s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
