"""A user store chosen by configuration (an import path), without changing the package.

The plugin (``tests/plugin_user_store.py``) reads users from a JSON file; the issuer
logs them in over HTTP, and the CLI refuses to write through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components
from issuer.errors import ConfigError
from issuer.passwords import hash_password
from issuer.store import migrate
from issuer.store.schema import users as users_table
from issuer.store.sql import make_engine
from tests import plugin_user_store
from tests.conftest import PASSWORD, TEST_ROUNDS, add_client, add_user, login

PLUGIN = "tests.plugin_user_store:make_store"
REPO = Path(__file__).resolve().parent.parent


def write_users(path: Path, *entries: dict) -> None:
    path.write_text(json.dumps({"users": list(entries)}), encoding="utf-8")


def carol(**changes) -> dict:
    entry = {
        "id": "ext-carol-7",
        "username": "carol",
        "role": "admin",
        "password_hash": hash_password(PASSWORD, TEST_ROUNDS),
        "active": True,
    }
    entry.update(changes)
    return entry


@pytest.fixture
def users_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "users.json"
    write_users(
        path,
        carol(),
        {
            "id": "ext-dan-9",
            "username": "dan",
            "role": "viewer",
            "password_hash": hash_password(PASSWORD, TEST_ROUNDS),
        },
    )
    monkeypatch.setenv(plugin_user_store.ENV_VAR, str(path))
    return path


@pytest.fixture
def plugged(make_settings, users_file):
    """(TestClient, components) of an issuer whose users come from the JSON file."""
    settings = make_settings(user_store=PLUGIN)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(settings)
    with TestClient(create_app(components=parts), base_url=settings.url) as test_client:
        yield test_client, parts
    parts.close()


def test_the_configured_store_is_the_plugin(plugged):
    _, parts = plugged
    assert isinstance(parts.users, plugin_user_store.JsonUserStore)
    assert parts.server.users is parts.users


def test_a_user_from_the_file_logs_in_over_http(plugged):
    client, parts = plugged
    auth = ("webapp", add_client(parts.store, "webapp"))
    response = login(client, auth, "carol")
    assert response.status_code == 200, response.text
    claims = parts.tokens.verify(response.json()["access_token"])
    assert claims["sub"] == "ext-carol-7"
    assert claims["username"] == "carol"
    assert claims["role"] == "admin"
    me = client.get(
        "/userinfo", headers={"Authorization": f"Bearer {response.json()['access_token']}"}
    )
    assert me.json() == {
        "sub": "ext-carol-7",
        "username": "carol",
        "role": "admin",
        "preferred_username": "carol",
    }


def test_plugin_users_refresh_and_introspect(plugged):
    client, parts = plugged
    auth = ("webapp", add_client(parts.store, "webapp"))
    first = login(client, auth, "dan").json()
    second = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=auth,
    )
    assert second.status_code == 200, second.text
    body = client.post(
        "/oauth/introspect", data={"token": second.json()["access_token"]}, auth=auth
    ).json()
    assert (body["active"], body["sub"], body["role"]) == (True, "ext-dan-9", "viewer")


def test_users_of_the_sql_store_are_not_consulted(plugged):
    client, parts = plugged
    add_user(parts.store, "alice")
    auth = ("webapp", add_client(parts.store, "webapp"))
    response = login(client, auth, "alice")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_wrong_password_and_unknown_users_fail_alike(plugged):
    client, parts = plugged
    auth = ("webapp", add_client(parts.store, "webapp"))
    wrong = login(client, auth, "carol", "nope")
    unknown = login(client, auth, "nobody")
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.content == unknown.content


def test_disabling_a_user_in_the_file_ends_login_refresh_and_userinfo(plugged, users_file):
    client, parts = plugged
    auth = ("webapp", add_client(parts.store, "webapp"))
    tokens = login(client, auth, "carol").json()
    write_users(users_file, carol(active=False))
    assert login(client, auth, "carol").json()["error"] == "invalid_grant"
    refreshed = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=auth,
    )
    assert refreshed.json()["error"] == "invalid_grant"
    me = client.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 401


def test_a_role_change_in_the_file_shows_in_the_next_token(plugged, users_file):
    client, parts = plugged
    auth = ("webapp", add_client(parts.store, "webapp"))
    tokens = login(client, auth, "carol").json()
    write_users(users_file, carol(role="viewer"))
    refreshed = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=auth,
    ).json()
    assert parts.tokens.verify(refreshed["access_token"])["role"] == "viewer"


def test_an_unloadable_store_stops_start_up_naming_the_setting(make_settings, users_file):
    for path in (
        "tests.plugin_user_store:missing",
        "tests.no_such_module:make_store",
        "tests.plugin_user_store:not_a_store",
    ):
        settings = make_settings(user_store=path)
        with pytest.raises(ConfigError) as caught:
            build_components(settings)
        assert "user_store" in str(caught.value), path


def test_a_plugin_that_cannot_read_its_file_stops_start_up(make_settings, tmp_path, monkeypatch):
    monkeypatch.setenv(plugin_user_store.ENV_VAR, str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError) as caught:
        build_components(make_settings(user_store=PLUGIN))
    assert "user_store" in str(caught.value)


# -- the CLI cannot write through a read-only store ---------------------------------------


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "issuer", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli_env(tmp_path, users_file, sqlite_url) -> dict[str, str]:
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    env.update(
        {
            "ISSUER_CONFIG": str(REPO / "tests" / "empty.toml"),
            "ISSUER_DATABASE_URL": sqlite_url,
            "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
            "ISSUER_BCRYPT_ROUNDS": str(TEST_ROUNDS),
            "ISSUER_USER_STORE": PLUGIN,
            plugin_user_store.ENV_VAR: str(users_file),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def sql_user_count(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(users_table)).scalar_one())
    finally:
        engine.dispose()


def test_users_add_through_a_read_only_store_fails_with_one_line(cli_env, users_file, sqlite_url):
    before = users_file.read_bytes()
    result = cli(
        cli_env,
        "users",
        "add",
        "erin",
        "--role",
        "viewer",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("issuer: error: ")
    assert "read-only" in lines[0]
    assert PASSWORD not in result.stderr
    assert users_file.read_bytes() == before
    assert sql_user_count(sqlite_url) == 0


@pytest.mark.parametrize("args", [("users", "disable", "carol"), ("users", "list")])
def test_other_user_commands_are_refused_too(cli_env, users_file, args):
    before = users_file.read_bytes()
    result = cli(cli_env, *args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "read-only" in result.stderr
    assert users_file.read_bytes() == before


def test_without_the_plugin_the_same_command_works(cli_env, sqlite_url):
    env = {k: v for k, v in cli_env.items() if k != "ISSUER_USER_STORE"}
    result = cli(
        env, "users", "add", "erin", "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert sql_user_count(sqlite_url) == 1
