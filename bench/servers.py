"""Real server processes for the benchmark: ``issuer serve`` set up through its own CLI
in a temporary directory (SQLite file or a throw-away PostgreSQL schema), and the bare
ASGI ceiling app. Every process started here is stopped by :func:`stop_all`."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import procstat

REPO = Path(__file__).resolve().parent.parent
READY_LIMIT_S = 60.0
USERNAME = "bench"
CLIENT_ID = "bench"

_LIVE: list[ServerProcess] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    method: str,
    url: str,
    *,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the standard library; (status, headers, body), also for 4xx/5xx."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


class ServerProcess:
    """A server in its own process group on 127.0.0.1; ``start()`` returns seconds to ready."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.argv, self.env, self.cwd, self.log_path = argv, env, cwd, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str) -> float:
        with self.log_path.open("ab") as log:
            began = time.monotonic()
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one group: stop() reaches uvicorn's workers too
            )
        _LIVE.append(self)
        while time.monotonic() - began < READY_LIMIT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http("GET", ready_url)[0] == 200:
                    return time.monotonic() - began
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"server not ready in {READY_LIMIT_S:.0f} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return procstat.tree(self.process.pid) if self.process else []

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        # Workers the supervisor failed to reap would still be in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if self in _LIVE:
            _LIVE.remove(self)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def stop_all() -> None:
    """Stop every server this process started (called on exit, Ctrl-C and errors)."""
    for server in list(_LIVE):
        server.stop()


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without inherited ISSUER_* variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    env.update(settings)
    return env


@dataclass(frozen=True)
class IssuerSpec:
    """Which issuer a row needs: database kind, signing algorithm, uvicorn workers."""

    db: str  # "sqlite" | "postgres"
    alg: str
    workers: int

    @property
    def label(self) -> str:
        return f"{self.alg} {self.db} {self.workers}w"


class PostgresSchema:
    """A fresh schema in the benchmark's PostgreSQL database, dropped by ``drop()``."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = "bench_" + uuid.uuid4().hex[:12]
        self._engine = create_engine(
            "postgresql+psycopg://" + admin_url.removeprefix("postgresql://"),
            connect_args={"connect_timeout": 3},
        )
        with self._engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))

    @property
    def url(self) -> str:
        sep = "&" if "?" in self.admin_url else "?"
        return f"{self.admin_url}{sep}options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._engine.dispose()


def postgres_answers(admin_url: str) -> str | None:
    """None if PostgreSQL at ``admin_url`` accepts a schema, else why not."""
    host = urllib.parse.urlsplit(admin_url)
    try:
        with socket.create_connection((host.hostname or "127.0.0.1", host.port or 5432), 1):
            pass
        PostgresSchema(admin_url).drop()
    except Exception as exc:
        return (
            f"PostgreSQL at {host.hostname}:{host.port or 5432} unusable ({exc.__class__.__name__})"
        )
    return None


class IssuerInstance:
    """``issuer init``, a user and a client through the CLI, then ``issuer serve``."""

    def __init__(self, spec: IssuerSpec, workdir: Path, postgres_url: str | None) -> None:
        self.spec = spec
        self.workdir = workdir
        workdir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.schema = (
            PostgresSchema(postgres_url) if spec.db == "postgres" and postgres_url else None
        )
        if spec.db == "postgres" and self.schema is None:
            raise RuntimeError("a PostgreSQL row without a PostgreSQL URL")
        database = self.schema.url if self.schema else f"sqlite:///{workdir / 'issuer.db'}"
        config = workdir / "issuer.toml"
        config.write_text("[issuer]\n")  # defaults only: nothing from config/issuer.toml
        settings = {
            "ISSUER_CONFIG": str(config),
            "ISSUER_URL": self.url,
            "ISSUER_DATABASE_URL": database,
            "ISSUER_KEYS_DIR": str(workdir / "keys"),
            "ISSUER_SIGNING_ALG": spec.alg,
            "ISSUER_WORKERS": str(spec.workers),
            # The bench measures bcrypt and the grants, not the login limiter: one user
            # logging in from one address on 32 connections holds 32 places in flight
            # (places are taken before bcrypt), which the real budgets answer with 429.
            "ISSUER_LOGIN_FAILURES_PER_USER_ADDRESS": "1000000/minute",
            "ISSUER_LOGIN_FAILURES_PER_ADDRESS": "1000000/minute",
            "ISSUER_LOGIN_FAILURES_PER_USER": "1000000/minute",
        }
        if spec.alg == "HS256":  # production HS256: the operator's secret, not keys/
            settings["ISSUER_SECRET_KEY"] = secrets.token_urlsafe(48)
        self.env = clean_env(**settings)
        self.password = "Bench-" + secrets.token_urlsafe(12) + "!1a"
        self.server = ServerProcess(
            [sys.executable, "-m", "issuer", "serve", "--port", str(self.port)],
            self.env,
            workdir,
            workdir / "server.log",
        )
        self.client_secret = ""
        self.ready_s = 0.0

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "issuer", *args],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"issuer {args[0]} {args[1] if len(args) > 1 else ''} failed: {result.stderr}"
            )
        return result

    def setup(self) -> None:
        self.cli("init")
        self.cli(
            "users",
            "add",
            USERNAME,
            "--role",
            "engineer",
            "--password-stdin",
            stdin=self.password + "\n",
        )
        out = self.cli("clients", "add", CLIENT_ID).stdout
        self.client_secret = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("client_secret:")
        )

    def start(self) -> float:
        self.ready_s = self.server.start(self.url + "/readyz")
        return self.ready_s

    def stop(self) -> None:
        self.server.stop()
        if self.schema is not None:
            self.schema.drop()
            self.schema = None

    # -- what the load scripts need ------------------------------------------

    @property
    def basic_auth(self) -> str:
        pair = f"{CLIENT_ID}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    @property
    def password_form(self) -> str:
        return urllib.parse.urlencode(
            {"grant_type": "password", "username": USERNAME, "password": self.password}
        )

    def login(self) -> dict[str, Any]:
        status, _, body = http(
            "POST",
            self.url + "/oauth/token",
            form={"grant_type": "password", "username": USERNAME, "password": self.password},
            headers={"Authorization": self.basic_auth},
        )
        if status != 200:
            raise RuntimeError(f"login failed with {status}: {body[:200]!r}")
        token: dict[str, Any] = json.loads(body)
        return token

    def logins(self, count: int) -> list[dict[str, Any]]:
        """``count`` independent sessions (each a bcrypt check on the server)."""
        with ThreadPoolExecutor(max_workers=min(count, 8)) as pool:
            return list(pool.map(lambda _: self.login(), range(count)))

    def pids(self) -> list[int]:
        return self.server.pids()
