"""The benchmark driver: ``make bench`` (``python -m bench.run``).

Starts real ``issuer serve`` processes on 127.0.0.1 (SQLite; PostgreSQL when it
answers; 1 and 2 workers), drives them with wrk, measures the ceilings in the same run,
and writes ``results.md``, ``results.json`` and ``results.png`` under
``bench/results/<UTC timestamp>/``. Knobs (environment):

* ``BENCH_DURATION`` seconds per wrk run (default 15), ``BENCH_RUNS`` runs per row
  (default 3, the median is reported), ``BENCH_QUICK=1`` for 2 s x 1 run (smoke test);
* ``BENCH_ROWS``: comma-separated row names or patterns (``refresh-*,jwks-1w``);
* ``BENCH_RESULTS_DIR``: where the timestamped folder goes (default ``bench/results``);
* ``BENCH_POSTGRES_URL``: the PostgreSQL database for the PostgreSQL rows (default
  ``postgresql://postgres@127.0.0.1:5432/test``; each instance gets its own schema,
  dropped at the end).

Every server it starts is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import inprocess, procstat, report
from bench.servers import (
    REPO,
    IssuerInstance,
    IssuerSpec,
    ServerProcess,
    clean_env,
    free_port,
    http,
    postgres_answers,
    stop_all,
)
from bench.wrk import WrkResult, WrkRun, run_wrk, wrk_path

ALGS = ("HS256", "RS256", "ES256", "EdDSA")
CONNECTIONS = 8  # the load: 8 connections unless a row says otherwise
STORM_CONNECTIONS = 32
STORM_LEAD_S = 2.0  # the storm runs alone this long before the measured run starts
LOGIN_ROUNDS = 3  # a login run lasts long enough for each connection to finish this many
MAX_LOGIN_RUN_S = 60.0


@dataclass(frozen=True)
class Knobs:
    seconds: float
    runs: int
    rows: tuple[str, ...]  # patterns; empty = every row

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Knobs:
        quick = env.get("BENCH_QUICK", "") not in ("", "0")
        seconds = float(env.get("BENCH_DURATION") or (2 if quick else 15))
        runs = int(env.get("BENCH_RUNS") or (1 if quick else 3))
        if not 1 <= seconds <= 600 or not 1 <= runs <= 20:
            raise SystemExit("BENCH_DURATION must be 1..600 seconds and BENCH_RUNS 1..20")
        patterns = tuple(p.strip() for p in env.get("BENCH_ROWS", "").split(",") if p.strip())
        return cls(seconds, runs, patterns)

    def selects(self, name: str) -> bool:
        return not self.rows or any(fnmatch.fnmatchcase(name, p) for p in self.rows)


@dataclass
class RowResult:
    """One row of the table: medians over the runs, and what the server spent."""

    name: str
    title: str
    group: str  # "ceiling" | "in-process" | "http" | "storm" | "cli"
    unit: str  # "req/s", "ops/s", "s"
    value: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    non_2xx: int = 0
    cpu_cores: float | None = None  # server CPU seconds per wall second (all processes)
    # Server CPU per request: steadier than req/s on a machine shared with other work.
    cpu_us_per_request: float | None = None
    rss_mb: list[float] = field(default_factory=list)  # peak RSS of each server process
    server: str = ""
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    runs: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Row:
    name: str
    title: str
    spec: IssuerSpec | None  # the issuer instance the row needs, if any
    measure: Callable[[Bench], RowResult]


class Bench:
    """Shared state of one benchmark run: knobs, instances, results so far."""

    def __init__(self, knobs: Knobs, workdir: Path) -> None:
        self.knobs = knobs
        self.workdir = workdir
        self.instances: dict[IssuerSpec, IssuerInstance] = {}
        self.results: dict[str, RowResult] = {}
        self.postgres_url = os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        )
        self.postgres_problem: str | None = None
        self.bcrypt_threads = os.cpu_count() or 1

    def instance(self, spec: IssuerSpec) -> IssuerInstance:
        if spec not in self.instances:
            name = f"{spec.alg}-{spec.db}-{spec.workers}w".lower()
            instance = IssuerInstance(spec, self.workdir / name, self.postgres_url)
            self.instances[spec] = instance
            instance.setup()
            instance.start()
        return self.instances[spec]

    def login_seconds(self, connections: int) -> float:
        """How long a run of logins must last to mean something.

        Concurrent bcrypt checks share the cores fairly, so ``connections`` logins finish
        together, in rounds; a run of one or two rounds counts 0 or ``connections``
        logins. So a run lasts at least ``LOGIN_ROUNDS`` rounds at the bcrypt ceiling
        measured in this run (capped), or ``BENCH_DURATION`` if that is longer.
        """
        ceiling = self.results.get("ceiling-bcrypt")
        if ceiling is None or ceiling.value <= 0:
            return self.knobs.seconds
        rounds = LOGIN_ROUNDS * connections / ceiling.value
        return max(self.knobs.seconds, min(rounds, MAX_LOGIN_RUN_S))

    def release(self, spec: IssuerSpec) -> None:
        instance = self.instances.pop(spec, None)
        if instance is not None:
            instance.stop()

    def stop_all(self) -> None:
        for spec in list(self.instances):
            self.release(spec)


# -- measuring over HTTP ---------------------------------------------------------


def wrk_row(
    bench: Bench,
    *,
    name: str,
    title: str,
    group: str,
    pids: Callable[[], list[int]],
    run_once: Callable[[], tuple[WrkResult, dict[str, float]]],
    server: str,
) -> RowResult:
    """``runs`` wrk runs (each after the server is idle again); medians, CPU and RSS."""
    runs: list[dict[str, float]] = []
    results: list[WrkResult] = []
    for _ in range(bench.knobs.runs):
        procstat.wait_idle(pids())
        watched = pids()
        cpu_before, began = procstat.total_cpu(watched), time.monotonic()
        result, extra = run_once()
        wall = time.monotonic() - began
        cpu = procstat.total_cpu(watched) - cpu_before
        results.append(result)
        runs.append(
            {
                "rps": result.rps,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "errors": result.errors,
                "non_2xx": result.status_errors,
                "cpu_cores": cpu / wall if wall else 0.0,
                "cpu_us_per_request": cpu / result.requests * 1e6 if result.requests else 0.0,
                **{k: float(v) for k, v in result.extra.items()},
                **extra,
            }
        )
    summarized = ("rps", "p50_ms", "p99_ms", "errors", "non_2xx", "cpu_cores", "cpu_us_per_request")
    extras = {
        key: statistics.median(r[key] for r in runs) for key in runs[0] if key not in summarized
    }
    value = statistics.median(r["rps"] for r in runs)
    return RowResult(
        name=name,
        title=title,
        group=group,
        unit="req/s",
        value=value,
        notes="" if value else "no request completed within the run (machine overloaded?)",
        p50_ms=statistics.median(r["p50_ms"] for r in runs),
        p99_ms=statistics.median(r["p99_ms"] for r in runs),
        errors=sum(int(r["errors"]) for r in runs),
        non_2xx=sum(int(r["non_2xx"]) for r in runs),
        cpu_cores=statistics.median(r["cpu_cores"] for r in runs),
        cpu_us_per_request=statistics.median(r["cpu_us_per_request"] for r in runs),
        rss_mb=[round(procstat.peak_rss_mb(pid), 1) for pid in pids()],
        server=server,
        extra=extras,
        runs=runs,
    )


def static_env(
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    expect: int | None = None,
) -> dict[str, str]:
    env = {"BENCH_METHOD": method}
    if body is not None:
        env["BENCH_BODY"] = body
    if headers:
        env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
    if expect is not None:
        env["BENCH_EXPECT"] = str(expect)
    return env


def issuer_static_row(
    name: str,
    title: str,
    spec: IssuerSpec,
    path: str,
    *,
    connections: int = CONNECTIONS,
    env: Callable[[IssuerInstance], dict[str, str]] = lambda _: static_env(),
    logins: bool = False,
) -> Row:
    def measure(bench: Bench) -> RowResult:
        instance = bench.instance(spec)
        wrk_env = env(instance)
        seconds = bench.login_seconds(connections) if logins else bench.knobs.seconds

        def once() -> tuple[WrkResult, dict[str, float]]:
            result = run_wrk(
                instance.url + path,
                "static.lua",
                connections=connections,
                seconds=seconds,
                env=wrk_env,
            )
            return result, {}

        return wrk_row(
            bench,
            name=name,
            title=title,
            group="http",
            pids=instance.pids,
            run_once=once,
            server=spec.label,
        )

    return Row(name, title, spec, measure)


def seed_file(instance: IssuerInstance, count: int, tag: str) -> Path:
    """``count`` fresh sessions' refresh tokens, one a line, for refresh.lua (0600)."""
    path = instance.workdir / f"seeds-{tag}.txt"
    tokens = [t["refresh_token"] for t in instance.logins(count)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(tokens) + "\n")
    return path


def refresh_env(instance: IssuerInstance, seeds: Path) -> dict[str, str]:
    return {"BENCH_TOKENS": str(seeds), "BENCH_AUTH": instance.basic_auth}


def refresh_once(
    bench: Bench, instance: IssuerInstance, connections: int = CONNECTIONS
) -> WrkResult:
    seeds = seed_file(instance, connections, "refresh")
    result = run_wrk(
        instance.url + "/oauth/token",
        "refresh.lua",
        connections=connections,
        threads=connections,  # one chain per wrk thread (see refresh.lua)
        seconds=bench.knobs.seconds,
        env=refresh_env(instance, seeds),
    )
    seeds.unlink()
    return result


def refresh_row(spec: IssuerSpec) -> Row:
    name = f"refresh-{spec.alg.lower()}-{spec.db}-{spec.workers}w"
    title = f"refresh grant (rotating), {spec.label}"

    def measure(bench: Bench) -> RowResult:
        instance = bench.instance(spec)
        return wrk_row(
            bench,
            name=name,
            title=title,
            group="http",
            pids=instance.pids,
            run_once=lambda: (refresh_once(bench, instance), {}),
            server=spec.label,
        )

    return Row(name, title, spec, measure)


def password_env(instance: IssuerInstance) -> dict[str, str]:
    headers = {"Authorization": instance.basic_auth}
    return static_env("POST", instance.password_form, headers)


def storm_row(name: str, title: str, spec: IssuerSpec, victim: str) -> Row:
    """``victim`` (refresh or jwks) measured while 32 logins are in flight."""

    def measure(bench: Bench) -> RowResult:
        instance = bench.instance(spec)

        def once() -> tuple[WrkResult, dict[str, float]]:
            seeds = seed_file(instance, CONNECTIONS, "storm") if victim == "refresh" else None
            storm = WrkRun(
                instance.url + "/oauth/token",
                "static.lua",
                connections=STORM_CONNECTIONS,
                threads=2,
                seconds=max(
                    bench.knobs.seconds + STORM_LEAD_S + 1, bench.login_seconds(STORM_CONNECTIONS)
                ),
                env=password_env(instance),
            )
            try:
                time.sleep(STORM_LEAD_S)
                if seeds is not None:
                    result = run_wrk(
                        instance.url + "/oauth/token",
                        "refresh.lua",
                        connections=CONNECTIONS,
                        threads=CONNECTIONS,
                        seconds=bench.knobs.seconds,
                        env=refresh_env(instance, seeds),
                    )
                    seeds.unlink()
                else:
                    result = run_wrk(
                        instance.url + "/.well-known/jwks.json",
                        "static.lua",
                        connections=CONNECTIONS,
                        seconds=bench.knobs.seconds,
                        env=static_env(),
                    )
                logins = storm.result()
            finally:
                storm.kill()
            return result, {
                "storm_logins_per_s": logins.rps,
                "storm_errors": float(logins.errors),
                "storm_p50_ms": logins.p50_ms,
            }

        return wrk_row(
            bench,
            name=name,
            title=title,
            group="storm",
            pids=instance.pids,
            run_once=once,
            server=spec.label,
        )

    return Row(name, title, spec, measure)


# -- ceilings and in-process figures ------------------------------------------------


def bcrypt_row(bench: Bench) -> RowResult:
    seconds = min(bench.knobs.seconds, 10.0)
    ceiling = inprocess.bcrypt_ceiling(seconds, bench.knobs.runs, bench.bcrypt_threads)
    return RowResult(
        name="ceiling-bcrypt",
        title=f"bcrypt cost 12, {ceiling.threads} threads (one per core)",
        group="ceiling",
        unit="checks/s",
        value=ceiling.checks_per_s,
        p50_ms=ceiling.check_ms,
        notes=f"one check alone: {ceiling.check_ms:.0f} ms",
        extra={"check_ms": ceiling.check_ms, "threads": float(ceiling.threads)},
    )


def asgi_row(name: str, method: str, workers: int) -> Row:
    title = f"bare ASGI {method} on uvicorn, {workers}w (ceiling)"

    def measure(bench: Bench) -> RowResult:
        port = free_port()
        workdir = bench.workdir / name
        workdir.mkdir()
        server = ServerProcess(
            [
                sys.executable,
                "-m",
                "bench.asgi_ceiling",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            clean_env(),
            REPO,
            workdir / "server.log",
        )
        url = f"http://127.0.0.1:{port}/"
        server.start(url)
        # A POST body about the size of a refresh grant's.
        body = "grant_type=refresh_token&refresh_token=" + "x" * 600
        env = static_env("POST", body) if method == "POST" else static_env()
        try:
            return wrk_row(
                bench,
                name=name,
                title=title,
                group="ceiling",
                pids=server.pids,
                run_once=lambda: (
                    run_wrk(
                        url,
                        "static.lua",
                        connections=CONNECTIONS,
                        seconds=bench.knobs.seconds,
                        env=env,
                    ),
                    {},
                ),
                server=f"bare ASGI {workers}w",
            )
        finally:
            server.stop()

    return Row(name, title, None, measure)


def verify_row(alg: str) -> Row:
    name = f"verify-{alg.lower()}"
    title = f"in-process verify_token, {alg}"

    def measure(bench: Bench) -> RowResult:
        seconds = min(bench.knobs.seconds, 5.0)
        figures = inprocess.verify_figures(alg, seconds, bench.knobs.runs, bench.workdir / name)
        return RowResult(
            name=name,
            title=title,
            group="in-process",
            unit="ops/s",
            value=figures.issuer_per_s,
            notes=(
                f"joserfc decode+claims {figures.joserfc_per_s:,.0f}/s "
                f"({figures.issuer_per_s / figures.joserfc_per_s:.2f}x); "
                f"PyJWT {figures.pyjwt_per_s:,.0f}/s "
                f"({figures.issuer_per_s / figures.pyjwt_per_s:.2f}x)"
            ),
            extra={"joserfc_per_s": figures.joserfc_per_s, "pyjwt_per_s": figures.pyjwt_per_s},
        )

    return Row(name, title, None, measure)


def ready_row(bench: Bench) -> RowResult:
    """Fresh ``issuer serve`` (HS256, SQLite, 1 worker) until /readyz answers 200."""
    spec = IssuerSpec("sqlite", "HS256", 1)
    instance = IssuerInstance(spec, bench.workdir / "ready", None)
    instance.setup()
    times = []
    for _ in range(max(bench.knobs.runs, 3)):
        times.append(instance.start())
        instance.stop()
    return RowResult(
        name="serve-ready",
        title="issuer serve: start to /readyz 200 (HS256, SQLite, 1w)",
        group="cli",
        unit="s",
        value=statistics.median(times),
        runs=[{"seconds": t} for t in times],
    )


def users_list_row(bench: Bench) -> RowResult:
    instance = bench.instance(IssuerSpec("sqlite", "HS256", 1))
    times = []
    for _ in range(max(bench.knobs.runs, 3)):
        began = time.monotonic()
        instance.cli("users", "list")
        times.append(time.monotonic() - began)
    return RowResult(
        name="users-list",
        title="issuer users list: wall time",
        group="cli",
        unit="s",
        value=statistics.median(times),
        runs=[{"seconds": t} for t in times],
    )


# -- the rows, in order --------------------------------------------------------------


def all_rows(postgres: bool) -> list[Row]:
    hs_1w = IssuerSpec("sqlite", "HS256", 1)
    rs_1w, rs_2w = IssuerSpec("sqlite", "RS256", 1), IssuerSpec("sqlite", "RS256", 2)
    rows = [
        Row("ceiling-bcrypt", "bcrypt ceiling", None, bcrypt_row),
        asgi_row("ceiling-asgi-get-1w", "GET", 1),
        asgi_row("ceiling-asgi-post-1w", "POST", 1),
        asgi_row("ceiling-asgi-get-2w", "GET", 2),
        *(verify_row(alg) for alg in ALGS),
    ]
    for connections in (1, 8, 32):
        rows.append(
            issuer_static_row(
                f"password-c{connections}",
                f"password grant, c = {connections}, {hs_1w.label}",
                hs_1w,
                "/oauth/token",
                connections=connections,
                env=password_env,
                logins=True,
            )
        )
    dbs = ("sqlite", "postgres") if postgres else ("sqlite",)
    for db in dbs:
        rows.append(refresh_row(IssuerSpec(db, "HS256", 1)))
        rows.append(refresh_row(IssuerSpec(db, "HS256", 2)))
        rows.extend(refresh_row(IssuerSpec(db, alg, 1)) for alg in ALGS[1:])
    for spec in (rs_1w, rs_2w):
        w = f"{spec.workers}w"
        jwks = "/.well-known/jwks.json"
        rows.append(issuer_static_row(f"jwks-{w}", f"JWKS GET, {spec.label}", spec, jwks))
        rows.append(
            issuer_static_row(
                f"jwks-inm-{w}",
                f"JWKS GET with If-None-Match (304), {spec.label}",
                spec,
                jwks,
                env=lambda inst: static_env(headers={"If-None-Match": jwks_etag(inst)}, expect=304),
            )
        )
    rows += [
        issuer_static_row(
            "discovery-1w",
            f"discovery GET, {rs_1w.label}",
            rs_1w,
            "/.well-known/openid-configuration",
        ),
        issuer_static_row(
            "introspect-1w",
            f"introspection (active token), {hs_1w.label}",
            hs_1w,
            "/oauth/introspect",
            env=introspect_env,
        ),
        issuer_static_row(
            "userinfo-1w",
            f"/userinfo, {hs_1w.label}",
            hs_1w,
            "/userinfo",
            env=lambda inst: static_env(
                headers={"Authorization": "Bearer " + inst.login()["access_token"]}
            ),
        ),
        storm_row(
            "storm-refresh-1w",
            f"refresh during a c = 32 login storm, {hs_1w.label}",
            hs_1w,
            "refresh",
        ),
        storm_row(
            "storm-jwks-1w", f"JWKS during a c = 32 login storm, {rs_1w.label}", rs_1w, "jwks"
        ),
        Row("serve-ready", "issuer serve time to ready", None, ready_row),
        Row("users-list", "issuer users list", hs_1w, users_list_row),
    ]
    return rows


def jwks_etag(instance: IssuerInstance) -> str:
    status, headers, _ = http("GET", instance.url + "/.well-known/jwks.json")
    etag = {k.lower(): v for k, v in headers.items()}.get("etag")
    if status != 200 or not etag:
        raise RuntimeError("the JWKS has no ETag")
    return etag


def introspect_env(instance: IssuerInstance) -> dict[str, str]:
    token = instance.login()["access_token"]
    headers = {"Authorization": instance.basic_auth}
    status, _, body = http(
        "POST", instance.url + "/oauth/introspect", form={"token": token}, headers=headers
    )
    if status != 200 or b'"active":true' not in body:
        raise RuntimeError(f"introspection of a fresh token is not active: {status}")
    return static_env("POST", "token=" + token, headers)


# -- main ----------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk_version = subprocess.run(
        [wrk_path(), "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "wrk": " ".join(wrk_version[0].split()[:2]) if wrk_version else "",
    }


def main() -> int:
    knobs = Knobs.from_env(dict(os.environ))
    wrk_path()  # fail now, not after the ceilings
    signal.signal(signal.SIGTERM, _terminate)
    base = Path(os.environ.get("BENCH_RESULTS_DIR") or REPO / "bench" / "results")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = base / stamp
    out.mkdir(parents=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="issuer-bench-") as tmp:
        bench = Bench(knobs, Path(tmp))
        rows = [r for r in all_rows(postgres=True) if knobs.selects(r.name)]
        if any("postgres" in r.name for r in rows):
            bench.postgres_problem = postgres_answers(bench.postgres_url)
            if bench.postgres_problem:
                print(f"skipping PostgreSQL rows: {bench.postgres_problem}", file=sys.stderr)
                rows = [r for r in rows if "postgres" not in r.name]
        if not rows:
            raise SystemExit(f"BENCH_ROWS={','.join(knobs.rows)} selects no row")
        info = machine()
        try:
            for index, row in enumerate(rows):
                print(f"[{index + 1}/{len(rows)}] {row.name}", file=sys.stderr, flush=True)
                result = row.measure(bench)
                bench.results[row.name] = result
                print("    " + report.summary_line(result), file=sys.stderr, flush=True)
                if row.spec is not None and all(r.spec != row.spec for r in rows[index + 1 :]):
                    bench.release(row.spec)
        finally:
            bench.stop_all()
            stop_all()
        info["load_average_end"] = os.getloadavg()
        info["seconds_total"] = round(time.monotonic() - started, 1)
        info["knobs"] = {"duration_s": knobs.seconds, "runs": knobs.runs, "rows": knobs.rows}
        if any("postgres" in name for name in bench.results):
            info["postgres"] = "used"
        else:
            info["postgres"] = bench.postgres_problem or "not selected"
        report.write(out, bench.results, info)
        results = list(bench.results.values())
    print((out / "results.md").read_text())
    print(f"results: {out}", file=sys.stderr)
    faulty = [f"{r.name} ({r.errors} errors, {r.non_2xx} non-2xx)" for r in results if r.errors]
    if faulty:
        print("rows with errors: " + ", ".join(faulty), file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        print("interrupted: every server stopped", file=sys.stderr)
        sys.exit(130)
