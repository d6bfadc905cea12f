"""Two replicas (two workers each) sharing PostgreSQL: a session ended through one
replica, or by the CLI, is refused at the other at once (no cache to go stale)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, LiveServer
from tests.test_refresh_concurrency import deploy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

NEW_PASSWORD = "Rep1ica-secret!"


def login(server: LiveServer, auth: tuple[str, str], username: str) -> dict[str, Any]:
    data = {"grant_type": "password", "username": username, "password": PASSWORD}
    response = httpx.post(server.url + "/oauth/token", data=data, auth=auth, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_refused_at(server: LiveServer, auth: tuple[str, str], tokens: dict[str, Any]) -> None:
    introspected = httpx.post(
        server.url + "/oauth/introspect", data={"token": tokens["access_token"]}, auth=auth
    )
    assert introspected.json() == {"active": False}
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(server.url + "/userinfo", headers=bearer).status_code == 401
    refreshed = httpx.post(
        server.url + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=auth,
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


def assert_accepted_at(server: LiveServer, tokens: dict[str, Any]) -> None:
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(server.url + "/userinfo", headers=bearer).status_code == 200


def test_a_session_ended_through_one_replica_is_refused_at_the_other_at_once(
    live_server_factory: Callable[..., LiveServer], postgres_url: str
) -> None:
    deployment = deploy(live_server_factory, database_url=postgres_url)
    first, second = deployment.replicas
    auth = deployment.auth
    first.cli("users", "add", "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    bob = login(first, auth, "bob")

    # Revocation (RFC 7009) at one replica.
    alice = login(first, auth, "alice")
    assert_accepted_at(second, alice)
    revoked = httpx.post(
        first.url + "/oauth/revoke", data={"token": alice["refresh_token"]}, auth=auth
    )
    assert revoked.status_code == 200
    assert_refused_at(second, auth, alice)

    # Security events from the CLI, while both replicas serve.
    alice = login(second, auth, "alice")
    first.cli("users", "logout", "alice")
    assert_refused_at(second, auth, alice)
    assert_refused_at(first, auth, alice)

    alice = login(first, auth, "alice")
    first.cli("users", "set-password", "alice", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert_refused_at(second, auth, alice)

    assert_accepted_at(first, bob)
    assert_accepted_at(second, bob)
    logs = first.log() + second.log()
    for value in (alice["access_token"], alice["refresh_token"], bob["access_token"], auth[1]):
        assert value not in logs
    assert "Traceback" not in logs
