"""Shared fixtures: settings built from a plain dict, stores on SQLite and PostgreSQL,
an app with a TestClient, and factories that take cleartext.

PostgreSQL tests use ``ISSUER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test gets its own schema. Where
the server is unreachable they skip, saying why, unless ``ISSUER_TEST_REQUIRE_SERVICES=1``
(CI sets it), where they fail instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import Components, build_components
from issuer.models import AuthMethod, Client, Role, User, hash_client_secret
from issuer.passwords import hash_password
from issuer.settings import Settings, load_settings
from issuer.store import migrate
from issuer.store.memory import MemoryStore
from issuer.store.sql import SqlStore, make_engine

pytest_plugins = ["tests.keystore_support"]

TEST_ROUNDS = 4
PASSWORD = "Corr3ct-Horse!"
POSTGRES_URL = os.environ.get(
    "ISSUER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("ISSUER_TEST_REQUIRE_SERVICES") == "1"


def _postgres_problem() -> str | None:
    try:
        engine = create_engine(
            "postgresql+psycopg://" + POSTGRES_URL.removeprefix("postgresql://"),
            connect_args={"connect_timeout": 3},
        )
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL unreachable at {POSTGRES_URL}: {exc.__class__.__name__}"
    return None


_SERVICE_PROBLEMS: dict[str, str | None] = {}


def require_service(name: str, probe: Callable[[], str | None]) -> None:
    """Skip (locally) or fail (CI) when a service ``probe`` finds unreachable; probed once."""
    if name not in _SERVICE_PROBLEMS:
        _SERVICE_PROBLEMS[name] = probe()
    problem = _SERVICE_PROBLEMS[name]
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(problem + " (ISSUER_TEST_REQUIRE_SERVICES=1)")
        pytest.skip(problem)


def require_postgres() -> None:
    """Skip (locally) or fail (CI) when PostgreSQL is not reachable."""
    require_service("postgresql", _postgres_problem)


def require_marker(request: pytest.FixtureRequest, marker: str, because: str) -> None:
    """Fail a test that ``because`` but lacks ``marker``, so ``make test-fast`` stays fast."""
    if request.node.get_closest_marker(marker) is None:
        pytest.fail(
            f"{request.node.nodeid} {because}: mark it @pytest.mark.{marker} "
            f"(a module: pytestmark = pytest.mark.{marker}; a parameter: pytest.param(…, "
            f"marks=pytest.mark.{marker}))"
        )


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    require_marker(request, "postgres", "uses PostgreSQL")
    require_postgres()
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'issuer.db'}"


@pytest.fixture
def secret_key() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture
def make_settings(tmp_path: Path, sqlite_url: str, secret_key: str) -> Callable[..., Settings]:
    """Settings from defaults plus ``overrides`` (setting names, plain values).

    Uses a low bcrypt cost, a tmp SQLite file, a tmp keys dir and an HS256 secret from
    the "environment" unless overridden (``secret_key=None`` drops it).
    """

    def factory(**overrides: Any) -> Settings:
        env: dict[str, str] = {
            "ISSUER_DATABASE_URL": sqlite_url,
            "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
            "ISSUER_BCRYPT_ROUNDS": str(TEST_ROUNDS),
            "ISSUER_CONFIG": str(Path(__file__).parent / "empty.toml"),
        }
        secret = overrides.pop("secret_key", secret_key)
        if secret is not None:
            env["ISSUER_SECRET_KEY"] = secret
        for name, value in overrides.items():
            text_value = " ".join(value) if isinstance(value, (list, tuple)) else str(value)
            env["ISSUER_" + name.upper()] = text_value
        return load_settings(env)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def migrated_store(database_url: str) -> SqlStore:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    return SqlStore(engine)


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session, for tests to copy."""
    path = tmp_path_factory.mktemp("template") / "issuer.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()  # the last connection closing checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


def migrate_database(database_url: str, template: Path) -> None:
    """Bring ``database_url`` to head: a copy of the template for a new SQLite file
    (Alembic per test cost more than most tests), real migrations otherwise."""
    database = make_url(database_url).database if database_url.startswith("sqlite") else None
    if database and database != ":memory:" and not Path(database).exists():
        shutil.copyfile(template, database)
        Path(database).chmod(0o600)
        return
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture
def components(settings: Settings, migrated_sqlite_template: Path) -> Iterator[Components]:
    """Built components over a migrated database."""
    migrate_database(settings.database_url, migrated_sqlite_template)
    parts = build_components(settings)
    yield parts
    parts.close()


@pytest.fixture
def client(components: Components) -> Iterator[TestClient]:
    """A TestClient on the app (base URL = the configured issuer URL)."""
    app = create_app(components=components)
    with TestClient(app, base_url=components.settings.url) as test_client:
        yield test_client


TOKEN_PATH = "/oauth/token"


def password_form(username: str = "alice", password: str = PASSWORD, **form: str) -> dict[str, str]:
    """A password grant's form: alice's right password unless told otherwise."""
    return {"grant_type": "password", "username": username, "password": password, **form}


def login(
    http: Any,
    auth: Any = None,
    username: str = "alice",
    password: str = PASSWORD,
    *,
    ok: bool = False,
    **form: str,
) -> Any:
    """The password grant through ``http`` with client credentials ``auth`` (Basic, or None
    for a public client's form ``client_id``). The suite's one login helper.

    ``http`` is anything with ``post(path, data=..., auth=...)`` answering an httpx-style
    response: a TestClient, an httpx client, or the protocol core's harness
    (``tests.test_oauth_server.Core``). ``form`` adds or overrides parameters. Returns the
    response, whatever it is; with ``ok=True`` the login must succeed (200) and the token
    response body is returned.
    """
    response = http.post(TOKEN_PATH, data=password_form(username, password, **form), auth=auth)
    if not ok:
        return response
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def add_user(
    store: Any,
    username: str = "alice",
    password: str = PASSWORD,
    role: Role = Role.ENGINEER,
    *,
    active: bool = True,
) -> User:
    """Create a user from a cleartext password (test bcrypt cost)."""
    user: User = store.add_user(username, hash_password(password, TEST_ROUNDS), role)
    if not active:
        user = store.set_active(username, False)
    return user


def add_client(
    store: Any,
    client_id: str = "webapp",
    *,
    method: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC,
    grants: tuple[str, ...] = ("password", "refresh_token"),
    scopes: tuple[str, ...] = (),
    introspect: bool = False,
) -> str | None:
    """Register a client; returns its cleartext secret (None for a public client)."""
    secret = None if method is AuthMethod.NONE else secrets.token_urlsafe(32)
    store.add_client(
        Client(
            client_id=client_id,
            auth_method=method,
            grant_types=grants,
            scopes=scopes,
            secret_hash=hash_client_secret(secret) if secret else None,
            created_at=int(time.time()),
            may_introspect=introspect,
        )
    )
    return secret


@pytest.fixture
def alice(components: Components) -> User:
    """An engineer named alice with the password PASSWORD."""
    return add_user(components.store, "alice")


@pytest.fixture
def basic(components: Components) -> tuple[str, str | None]:
    """A confidential client_secret_basic client: its (id, secret) for ``auth=``."""
    return ("webapp", add_client(components.store, "webapp"))


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


# -- a real server -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``issuer serve`` in a subprocess on 127.0.0.1, with its own env and directory."""

    def __init__(
        self, workdir: Path, env: dict[str, str], before_start: Callable[[], None] | None = None
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.url = env["ISSUER_URL"]
        self.log_path = workdir / "server.log"
        self.process: Any = None
        self.before_start = before_start

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        """Run ``python -m issuer ARGS`` with the server's environment."""
        result = subprocess.run(
            [sys.executable, "-m", "issuer", *args],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"issuer {' '.join(args)} failed: {result.stderr}")
        return result

    def start(self) -> LiveServer:
        if self.before_start is not None:
            self.before_start()
        port = str(urlsplit(self.url).port)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "issuer", "serve", "--port", port],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # Generous: a loaded machine (CI, parallel jobs) took 17 s to boot two workers.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("server exited early:\n" + self.log_path.read_text())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def server_env(workdir: Path, **overrides: Any) -> dict[str, str]:
    """The environment of a test server in ``workdir``: no inherited ISSUER_* variables,
    a free loopback port, SQLite and keys in ``workdir``, bcrypt cost 4, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    env.update(
        {
            "ISSUER_URL": f"http://127.0.0.1:{free_port()}",
            "ISSUER_DATABASE_URL": f"sqlite:///{workdir / 'issuer.db'}",
            "ISSUER_KEYS_DIR": str(workdir / "keys"),
            "ISSUER_BCRYPT_ROUNDS": str(TEST_ROUNDS),
            "ISSUER_CONFIG": str(Path(__file__).parent / "empty.toml"),
        }
    )
    env.update({"ISSUER_" + name.upper(): str(value) for name, value in overrides.items()})
    return env


def as_pasted_for(server: LiveServer, text: str) -> str:
    """Documented commands or code made to run against ``server``: its URL for the
    documented ``make run`` one, this test run's venv for ``.venv``."""
    text = text.replace("http://127.0.0.1:8000", server.url)
    return text.replace(".venv/bin/", f"{Path(sys.executable).parent}/")


def run_pasted(script: str, server: LiveServer) -> subprocess.CompletedProcess[str]:
    """Run shell lines as a reader pastes them (``bash -euo pipefail``) next to ``server``,
    in its directory and environment (see :func:`as_pasted_for`)."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", as_pasted_for(server, script)],
        cwd=server.workdir,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_dir() -> Path:
    """tests/node with every package of its package.json installed (npm, once)."""
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is needed for the node client tests"
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    lock_path = Path(tempfile.gettempdir()) / "issuer-tests-npm-install.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test sessions may share this checkout
        if not all((NODE_DIR / "node_modules" / n / "package.json").is_file() for n in wanted):
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"],
                cwd=NODE_DIR,
                check=True,
                capture_output=True,
                timeout=300,
            )
    return NODE_DIR


def run_node_script(script: Path, request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run a tests/node script with ``request`` as JSON on stdin.

    The scripts exit 0 when everything held, 1 when their library refused something, and 2
    on bad input (a bug in the test, hence the assertion).
    """
    done = subprocess.run(
        ["node", str(script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done


@pytest.fixture
def live_server_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LiveServer]]:
    """Start real servers: ``factory(**settings)`` runs ``issuer init``; ``.start()`` serves.

    Settings are passed as ISSUER_* variables; by default SQLite in tmp, keys in tmp,
    bcrypt cost 4, HS256 keys generated by ``issuer init`` under the tmp keys dir.
    A test that starts a server must be marked ``e2e``.
    """
    servers: list[LiveServer] = []

    def must_be_e2e() -> None:
        require_marker(request, "e2e", "starts a live server")

    def factory(**overrides: Any) -> LiveServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = LiveServer(workdir, server_env(workdir, **overrides), must_be_e2e)
        server.cli("init")
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
