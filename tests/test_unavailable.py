"""Server-side trouble answers 503 ``temporarily_unavailable`` with ``Retry-After``, never
500, and says what is wrong and how to fix it: no signing key, a database down, dropped
or too slow to answer; `issuer init` names the real cause of a database error (issue 9)."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components, build_key_manager
from issuer.keystore import MANIFEST_NAME
from issuer.store import migrate
from issuer.store.configured import build_engine
from issuer.store.diagnose import describe_database_error
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, POSTGRES_URL, add_client, add_user, free_port, require_postgres
from tests.keystore_support import manifest_bytes

LOGIN = {"grant_type": "password", "username": "alice", "password": PASSWORD}


def serving(settings):
    """Components and a TestClient over a migrated database with alice and webapp."""
    migrate.upgrade(make_engine(settings.database_url))
    parts = build_components(settings)
    add_user(parts.store, "alice")
    secret = add_client(parts.store, "webapp")
    client = TestClient(create_app(components=parts), base_url=settings.url)
    return parts, client, ("webapp", secret)


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_no_signing_key_is_503_and_the_log_and_readyz_name_the_fix(make_settings, caplog):
    settings = make_settings(signing_alg="ES256", secret_key=None, key_reload_interval=0)
    build_key_manager(settings).ensure()
    parts, client, auth = serving(settings)
    try:
        with client:
            assert client.post("/oauth/token", data=LOGIN, auth=auth).status_code == 200
            data = json.loads(manifest_bytes(settings.keys_dir))
            for entry in data["keys"]:
                if entry["state"] == "active":  # removed by hand: nothing signs
                    entry["state"], entry["retire_at"] = "previous", 2**40
            (settings.keys_dir / MANIFEST_NAME).write_text(json.dumps(data))

            with caplog.at_level(logging.ERROR, logger="issuer.http"):
                response = client.post("/oauth/token", data=LOGIN, auth=auth)
            ready = client.get("/readyz")
    finally:
        parts.close()
    assert_unavailable(response)
    [line] = [r.getMessage() for r in caplog.records if r.name == "issuer.http"]
    assert "no active ES256 signing key" in line
    assert "issuer keys rotate" in line
    assert PASSWORD not in caplog.text
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": True, "signing_key": False}
    assert "issuer keys rotate" in ready.json()["reasons"]["signing_key"]


def test_a_plain_rotation_under_a_running_rs256_server_never_leads_to_a_500(make_settings):
    """Why: `make rotate-keys` without the variable made HS256 active; the server answered 500."""
    rs256 = make_settings(
        signing_alg="RS256", secret_key=None, rsa_key_size=2048, key_reload_interval=0
    )
    unset = make_settings(secret_key=None)  # the same keys dir, no ISSUER_SIGNING_ALG
    build_key_manager(rs256).ensure()
    parts, client, auth = serving(rs256)
    try:
        with client:
            build_key_manager(unset).rotate(force=True)  # as `make rotate-keys ARGS=--force`
            response = client.post("/oauth/token", data=LOGIN, auth=auth)
            ready = client.get("/readyz")
    finally:
        parts.close()
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert ready.status_code == 200


def test_a_dropped_database_is_503_and_readyz_says_so(make_settings):
    settings = make_settings()
    parts, client, auth = serving(settings)
    try:
        with client:
            assert client.post("/oauth/token", data=LOGIN, auth=auth).status_code == 200
            with parts.store.engine.begin() as conn:
                for table in inspect(conn).get_table_names():
                    conn.execute(text(f'DROP TABLE "{table}"'))
            response = client.post("/oauth/token", data=LOGIN, auth=auth)
            ready = client.get("/readyz")
    finally:
        parts.close()
    assert_unavailable(response)
    assert ready.status_code == 503
    assert "issuer db upgrade" in ready.json()["reasons"]["database"]


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never says a word (a hung database host)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_a_database_that_never_answers_is_503_within_the_connect_timeout(
    make_settings, silent_server
):
    """Without connect_timeout the request would wait for the OS TCP timeout (or forever)."""
    settings = make_settings(
        database_url=f"postgresql://postgres@127.0.0.1:{silent_server}/test",
        db_connect_timeout=1,
    )
    parts = build_components(settings)
    try:
        app = create_app(components=parts)
        with TestClient(app, base_url=settings.url, raise_server_exceptions=False) as client:
            response = client.post("/oauth/token", data=LOGIN, auth=("webapp", "x"))
    finally:
        parts.close()
    assert_unavailable(response)


class CapturedError(Exception):
    """Raised instead of connecting, once the connection parameters were seen."""


def test_the_engine_bounds_every_wait_on_postgresql(make_settings):
    settings = make_settings(
        database_url="postgresql://u@db.invalid/issuer?options=-csearch_path%3Dissuer",
        db_connect_timeout=4,
        db_pool_timeout=7,
        db_statement_timeout=9,
    )
    engine = build_engine(settings)
    seen: dict[str, object] = {}

    def capture(dialect, conn_rec, cargs, cparams):
        seen.update(cparams)
        raise CapturedError

    event.listen(engine, "do_connect", capture)
    with pytest.raises(CapturedError):
        engine.connect()
    engine.dispose()
    assert engine.pool.timeout() == 7
    assert seen["connect_timeout"] == 4
    # The URL's own options (a search_path) survive beside the statement timeout.
    assert seen["options"] == "-csearch_path=issuer -c statement_timeout=9000"


def init(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    config = {"ISSUER_CONFIG": str(Path(__file__).parent / "empty.toml")}
    return subprocess.run(
        [sys.executable, "-m", "issuer", "init"],
        cwd=tmp_path,
        env={**inherited, **config, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def database_url_for(cause: str) -> str:
    if cause == "missing database":
        return POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_db_issue9"
    if cause == "refused connection":
        return f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    return POSTGRES_URL.replace("postgres@", "no_such_role_issue9@", 1)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        ("missing database", "createdb no_such_db_issue9"),
        ("refused connection", "connection refused"),
        ("unknown user", "no user 'no_such_role_issue9'"),
    ],
)
def test_init_names_the_real_cause_of_a_database_error_in_one_line(cause, expected, tmp_path):
    """Why: `issuer init` against a missing database said only "database error"."""
    require_postgres()
    done = init({"ISSUER_DATABASE_URL": database_url_for(cause)}, tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]
    assert "OperationalError" not in lines[0]


def test_failed_authentication_is_named_without_the_password():
    """Trust auth on the test server cannot fail a login: the driver's words, as sent."""
    cause = Exception('connection failed: FATAL:  password authentication failed for user "app"')
    exc = OperationalError("connect", {}, cause)
    line = describe_database_error(exc, "postgresql://app:hunter2@db.example:5433/issuer")
    assert "refused the credentials of user 'app'" in line
    assert "db.example:5433" in line
    assert "hunter2" not in line
