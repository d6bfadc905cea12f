"""The database key store with live servers (issue 9): two replicas on PostgreSQL, each
with its own empty keys directory, serve one key set; a rotation through one host's CLI
(a published next key, then its activation) reaches both within ``key_reload_interval``
and tokens from each verify at the other. A wrong or missing key-encryption key refuses
to start in one line, exit 2."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import PASSWORD, LiveServer, free_port, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RELOAD_INTERVAL = 0.2
JWKS_MAX_AGE = 1


def new_kek() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def jwks_kids(server: LiveServer) -> set[str]:
    return {k["kid"] for k in httpx.get(server.url + "/.well-known/jwks.json").json()["keys"]}


def header(token: str) -> dict[str, Any]:
    segment = token.split(".", maxsplit=1)[0]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


def login(server: LiveServer, auth: tuple[str, str]) -> dict[str, Any]:
    response = httpx.post(
        server.url + "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=auth,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_verifies_at(server: LiveServer, tokens: dict[str, Any], audience: str) -> None:
    """``server`` accepts the access token (userinfo) and a JWKS client of it verifies it."""
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(server.url + "/userinfo", headers=bearer).status_code == 200
    client = jwt.PyJWKClient(server.url + "/.well-known/jwks.json", cache_keys=False)
    key = client.get_signing_key_from_jwt(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], key.key, algorithms=["ES256"], audience=audience)
    assert claims["sub"]


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> float:
    """Poll ``condition`` until true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def replicas(tmp_path: Path, postgres_url: str, kek: str) -> list[LiveServer]:
    """Two replicas: one issuer URL, one database, one KEK; each its own keys directory."""
    public_url = f"http://127.0.0.1:{free_port()}"
    made = []
    for name in ("host1", "host2"):
        workdir = tmp_path / name
        workdir.mkdir()
        env = server_env(
            workdir,
            url=public_url,
            database_url=postgres_url,
            key_store="database",
            key_encryption_key=kek,
            signing_alg="ES256",
            workers=2,
            jwks_max_age=JWKS_MAX_AGE,
            key_reload_interval=RELOAD_INTERVAL,
        )
        replica = LiveServer(workdir, env)
        replica.url = f"http://127.0.0.1:{free_port()}"
        made.append(replica)
    return made


def test_two_replicas_without_a_shared_directory_serve_a_rotation_from_one_cli(
    tmp_path: Path, postgres_url: str
) -> None:
    first, second = replicas(tmp_path, postgres_url, new_kek())
    try:
        init = first.cli("init").stdout
        assert "created ES256 keys in the database (sealed)" in init
        for replica in (first, second):
            replica.start()
            assert httpx.get(replica.url + "/readyz").status_code == 200
        first.cli("users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD)
        added = first.cli("clients", "add", "webapp").stdout
        secret = next(
            line.split(":", 1)[1].strip()
            for line in added.splitlines()
            if line.startswith("client_secret:")
        )
        auth = ("webapp", secret)
        audience = first.env.get("ISSUER_AUDIENCE", "issuer-api")

        listed = first.cli("keys", "list").stdout
        active = next(line.split()[0] for line in listed.splitlines() if " active " in line)
        staged = next(line.split()[0] for line in listed.splitlines() if " next " in line)
        # Both publish the active key and the staged next key; neither host has key files.
        assert jwks_kids(first) == jwks_kids(second) == {active, staged}
        for replica in (first, second):
            assert not (replica.workdir / "keys").exists()

        before = [login(first, auth), login(second, auth)]
        assert {header(t["access_token"])["kid"] for t in before} == {active}

        # Activation, through the other host's CLI, after the next key's lead time.
        lead = JWKS_MAX_AGE + 2 + 1
        time.sleep(lead)
        rotated = second.cli("keys", "rotate").stdout
        assert f"active   {staged}" in rotated
        created = next(
            line.split()[1] for line in rotated.splitlines() if line.startswith("created")
        )

        def both_sign_with_the_new_key() -> bool:
            kids = [header(login(r, auth)["access_token"])["kid"] for r in (first, second)]
            return kids == [staged, staged]

        took = wait_for(
            lambda: jwks_kids(first) == jwks_kids(second) == {active, staged, created},
            "both replicas to publish the new next key",
        )
        assert took < RELOAD_INTERVAL + 3.0, took  # one reload interval, plus a loaded machine
        wait_for(both_sign_with_the_new_key, "both replicas to sign with the activated key")

        after = [login(first, auth), login(second, auth)]
        for tokens, other in ((before[0], second), (before[1], first)):
            assert_verifies_at(other, tokens, audience)  # signed before, by the previous key
        for tokens, other in ((after[0], second), (after[1], first)):
            assert header(tokens["access_token"])["kid"] == staged
            assert_verifies_at(other, tokens, audience)
        refreshed = httpx.post(
            second.url + "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": after[0]["refresh_token"]},
            auth=auth,
        )
        assert refreshed.status_code == 200, refreshed.text
        for replica in (first, second):
            assert httpx.get(replica.url + "/readyz").status_code == 200
            assert not (replica.workdir / "keys").exists()
        logs = first.log() + second.log()
        assert first.env["ISSUER_KEY_ENCRYPTION_KEY"] not in logs
        assert "Traceback" not in logs
    finally:
        first.stop()
        second.stop()


def serve_once(env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "issuer", "serve", "--port", str(free_port())],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_wrong_or_missing_kek_refuses_to_start_in_one_line(
    tmp_path: Path, postgres_url: str
) -> None:
    kek = new_kek()
    env = server_env(
        tmp_path, database_url=postgres_url, key_store="database", key_encryption_key=kek
    )
    init = subprocess.run(
        [sys.executable, "-m", "issuer", "init"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr

    wrong = serve_once({**env, "ISSUER_KEY_ENCRYPTION_KEY": new_kek()}, tmp_path)
    assert wrong.returncode == 2
    [line] = wrong.stderr.splitlines()
    assert line.startswith("issuer: error: the signing keys in the database are sealed with")
    assert "issuer keys rewrap" in line

    missing = {k: v for k, v in env.items() if k != "ISSUER_KEY_ENCRYPTION_KEY"}
    refused = serve_once(missing, tmp_path)
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert "key_store = database needs ISSUER_KEY_ENCRYPTION_KEY" in line
    assert "openssl rand -base64 32" in line

    malformed = serve_once({**env, "ISSUER_KEY_ENCRYPTION_KEY": "not a key at all"}, tmp_path)
    assert malformed.returncode == 2
    [line] = malformed.stderr.splitlines()
    assert "must be 32 random bytes in base64 or hex" in line and "not a key" not in line

    for result in (wrong, refused, malformed):
        assert kek not in result.stderr + result.stdout
    assert not (tmp_path / "keys").exists()
    assert os.environ.get("ISSUER_KEY_ENCRYPTION_KEY") is None


def test_rewrap_through_the_cli_moves_the_keys_to_a_new_kek(
    tmp_path: Path, postgres_url: str
) -> None:
    old, new = new_kek(), new_kek()
    env = server_env(
        tmp_path,
        database_url=postgres_url,
        key_store="database",
        key_encryption_key=old,
        signing_alg="ES256",
    )
    server = LiveServer(tmp_path, env)
    server.cli("init")
    kids = {line.split()[0] for line in server.cli("keys", "list").stdout.splitlines()[1:]}

    server.env = {**env, "ISSUER_KEY_ENCRYPTION_KEY": new}
    refused = server.cli("keys", "rewrap", check=False)
    assert refused.returncode == 2 and "ISSUER_KEY_ENCRYPTION_KEY_OLD" in refused.stderr

    server.env["ISSUER_KEY_ENCRYPTION_KEY_OLD"] = old
    done = server.cli("keys", "rewrap")
    assert done.stdout.startswith(f"rewrapped {len(kids)} key(s)")
    assert f"key.rewrapped keys={len(kids)}" in done.stderr  # the audit line

    del server.env["ISSUER_KEY_ENCRYPTION_KEY_OLD"]
    try:
        server.start()  # the new KEK alone now opens every key
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert len(jwks_kids(server)) == len(kids)
    finally:
        server.stop()
    server.env = {**env, "ISSUER_KEY_ENCRYPTION_KEY": old}
    stale = server.cli("keys", "rotate", check=False)
    assert stale.returncode == 2 and "sealed with key-encryption key" in stale.stderr
