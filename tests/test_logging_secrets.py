"""Nothing secret reaches a log: tokens, passwords, client secrets, Authorization headers.

Every logger is opened to DEBUG, a whole session is played (login, refresh, reuse,
revoke, introspect, userinfo, failures), and every record is searched, message, args
and traceback alike. A live server at ``log_level=debug`` is searched the same way.
"""

from __future__ import annotations

import base64
import logging

import httpx
import pytest

from issuer.models import AuthMethod
from tests.conftest import PASSWORD, add_client, add_user

# One of these tests starts a live server at debug level.
pytestmark = pytest.mark.e2e

WRONG_PASSWORD = "Wr0ng-but-Secret!"
# The test's own HTTP client logs the URLs it requests; those records are not the issuer's.
CLIENT_LOGGERS = ("httpx", "httpx2", "httpcore")


def play_a_session(client, basic_secret: str, post_secret: str) -> list[str]:
    """Every kind of request the issuer answers; returns every secret value involved."""
    basic = ("webapp", basic_secret)
    login = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    secrets_seen = [PASSWORD, WRONG_PASSWORD, basic_secret, post_secret]

    first = client.post("/oauth/token", data=login, auth=basic)
    assert first.status_code == 200, first.text
    tokens = first.json()
    second = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=basic,
    )
    assert second.status_code == 200, second.text
    reuse = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=basic,
    )
    assert reuse.json()["error"] == "invalid_grant"
    third = client.post("/oauth/token", data=login, auth=basic).json()
    via_post = client.post(
        "/oauth/token",
        data={**login, "client_id": "poster", "client_secret": post_secret},
    ).json()
    me = client.get("/userinfo", headers={"Authorization": f"Bearer {third['access_token']}"})
    assert me.status_code == 200
    active = client.post("/oauth/introspect", data={"token": third["access_token"]}, auth=basic)
    assert active.json()["active"] is True
    assert (
        client.post("/oauth/revoke", data={"token": third["access_token"]}, auth=basic).status_code
        == 200
    )
    assert (
        client.post("/oauth/revoke", data={"token": third["refresh_token"]}, auth=basic).status_code
        == 200
    )
    denied = client.get("/userinfo", headers={"Authorization": f"Bearer {third['access_token']}"})
    assert denied.status_code == 401
    # Failures with credentials in play: wrong password, wrong secret, secret in the query.
    assert (
        client.post(
            "/oauth/token", data={**login, "password": WRONG_PASSWORD}, auth=basic
        ).status_code
        == 400
    )
    assert (
        client.post("/oauth/token", data=login, auth=("webapp", basic_secret + "x")).status_code
        == 401
    )
    assert (
        client.post(
            "/oauth/token", params={"client_secret": post_secret, "password": PASSWORD}, data=login
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/oauth/token",
            data={**login, "client_id": "poster", "client_secret": post_secret + "x"},
        ).status_code
        == 400
    )

    for body in (tokens, second.json(), third, via_post):
        secrets_seen += [body["access_token"], body["refresh_token"]]
    secrets_seen += [
        base64.b64encode(f"webapp:{basic_secret}".encode()).decode(),
        base64.b64encode(f"webapp:{basic_secret}x".encode()).decode(),
        basic_secret + "x",
        post_secret + "x",
    ]
    return secrets_seen


def leaks(text: str, secrets_seen: list[str]) -> list[str]:
    """The secrets (or a long enough piece of a token) that occur in ``text``."""
    found = []
    for secret in secrets_seen:
        pieces = {secret}
        if secret.count(".") == 2:  # a JWT: its signature alone is as bad as the whole
            pieces |= {part for part in secret.split(".")[1:] if len(part) >= 16}
        if any(piece in text for piece in pieces):
            found.append(secret[:12] + "…")
    return found


@pytest.fixture
def session_setup(components):
    add_user(components.store, "alice")
    basic_secret = add_client(components.store, "webapp")
    post_secret = add_client(components.store, "poster", method=AuthMethod.CLIENT_SECRET_POST)
    return basic_secret, post_secret


def test_no_secret_reaches_any_log_record_at_debug(client, session_setup, caplog):
    caplog.set_level(logging.DEBUG)
    secrets_seen = play_a_session(client, *session_setup)
    assert caplog.records, "the issuer logged nothing at all: the test would prove nothing"
    records = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    for record in records:
        rendered = " ".join(
            [
                str(record.msg),
                record.getMessage(),
                repr(record.args),
                logging.Formatter().formatException(record.exc_info) if record.exc_info else "",
                record.stack_info or "",
            ]
        )
        assert leaks(rendered, secrets_seen) == [], (record.name, record.getMessage())
    formatter = logging.Formatter("%(name)s %(message)s")
    assert leaks("\n".join(formatter.format(r) for r in records), secrets_seen) == []


def test_the_session_is_logged_usefully_without_secrets(client, session_setup, caplog):
    caplog.set_level(logging.DEBUG)
    play_a_session(client, *session_setup)
    names = {r.name for r in caplog.records}
    assert "issuer.audit" in names
    assert "issuer.access" in names
    audit = " ".join(r.getMessage() for r in caplog.records if r.name == "issuer.audit")
    assert "reuse" in audit
    assert "login.failed" in audit
    # The query string carried a secret: the access log has the path only.
    access = [r.getMessage() for r in caplog.records if r.name == "issuer.access"]
    assert access and all("?" not in line for line in access)


def test_authlib_emits_nothing_at_debug(client, session_setup, caplog):
    caplog.set_level(logging.DEBUG)
    play_a_session(client, *session_setup)
    authlib_records = [r for r in caplog.records if r.name.startswith("authlib")]
    assert [r for r in authlib_records if r.levelno < logging.INFO] == []
    assert not logging.getLogger("authlib").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger(
        "authlib.oauth2.rfc6749.grants.resource_owner_password_credentials"
    ).isEnabledFor(logging.DEBUG)


def test_a_live_server_at_debug_logs_no_secret(live_server_factory):
    server = live_server_factory(log_level="debug").start()
    add_user_out = server.cli(
        "users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert PASSWORD not in add_user_out.stdout + add_user_out.stderr
    basic_secret = _secret_of(server.cli("clients", "add", "webapp").stdout)
    post_secret = _secret_of(
        server.cli("clients", "add", "poster", "--auth-method", "client_secret_post").stdout
    )
    with httpx.Client(base_url=server.url, timeout=10) as http:
        secrets_seen = play_a_session(http, basic_secret, post_secret)
    server.stop()
    log = server.log()
    assert "issuer.access" in log and "issuer.audit" in log, log
    assert leaks(log, secrets_seen) == []


def _secret_of(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("client_secret: "))
    return line.removeprefix("client_secret: ").strip()
