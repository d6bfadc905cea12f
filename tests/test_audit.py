"""Audit events: each flow writes its structured event with the fields an operator needs.

Why: audit lines were prose (``login failed user=alice address=…``) and several security
events wrote none at all (a refresh, a client registered, a key rotated). Each flow is run
here and its event checked field by field; the last tests render every event in both
formats and search them for every secret the flows used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.audit import EVENTS, AuditValue, add_listener, audit_event, remove_listener, render
from issuer.compose import Components, build_components
from issuer.keystore import KeyState
from issuer.logs import JsonFormatter, TextFormatter
from issuer.models import Role
from issuer.resets import PasswordResets, ResetTokenError
from issuer.sessions import Sessions
from tests.conftest import PASSWORD, add_client, add_user, login, migrate_database
from tests.keystore_support import FakeClock, build_key_manager
from tests.test_cli import Cli, cli, ready  # noqa: F401 - fixtures

WRONG = "Wr0ng-but-Secret!"
NEW_PASSWORD = "A-new-Secret-9!"


@dataclass
class Recorded:
    """Every audit event of a test, in order, and every secret the test handled."""

    events: list[tuple[str, dict[str, AuditValue]]] = field(default_factory=list)
    secrets: list[str] = field(default_factory=lambda: [PASSWORD, WRONG, NEW_PASSWORD])

    def __call__(self, event: str, fields: Mapping[str, AuditValue]) -> None:
        self.events.append((event, dict(fields)))

    def named(self, event: str) -> list[dict[str, AuditValue]]:
        return [fields for name, fields in self.events if name == event]

    def one(self, event: str) -> dict[str, AuditValue]:
        found = self.named(event)
        assert len(found) == 1, (event, self.events)
        return found[0]


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    seen = Recorded()
    add_listener(seen)
    yield seen
    remove_listener(seen)
    assert_no_secret(seen)


def assert_no_secret(seen: Recorded) -> None:
    """No secret in any event, in either rendering."""
    text, json_formatter = TextFormatter(), JsonFormatter()
    for event, fields in seen.events:
        record = logging.LogRecord("issuer.audit", logging.INFO, __file__, 0, "%s", (), None)
        record.args = (render(event, fields),)
        record.audit_event, record.audit_fields = event, fields
        for line in (text.format(record), json_formatter.format(record)):
            for secret in seen.secrets:
                assert secret not in line, (event, line)


def token(client: TestClient, auth: tuple[str, str | None], **form: str) -> Any:
    return client.post("/oauth/token", data=form, auth=auth)


@pytest.fixture
def web(components: Components, recorded: Recorded) -> tuple[str, str]:
    add_user(components.store, "alice")
    secret = add_client(components.store, "webapp")
    assert secret is not None
    recorded.secrets.append(secret)
    return ("webapp", secret)


def test_a_login_and_a_failed_login_name_user_client_address_and_reason(
    client: TestClient, components: Components, web: tuple[str, str], recorded: Recorded
) -> None:
    assert login(client, web, "ALICE").status_code == 200
    assert login(client, web, password=WRONG).status_code == 400
    assert login(client, web, WRONG).status_code == 400  # a password typed as the username

    alice = components.store.get_by_username("alice")
    assert alice is not None
    ok = recorded.one("login.succeeded")
    assert ok["user_id"] == alice.id and ok["username"] == "alice"
    assert ok["client_id"] == "webapp" and ok["address"] == "testclient"
    assert isinstance(ok["family"], str) and ok["family"]
    known, unknown = recorded.named("login.failed")
    assert known == {
        "user_id": alice.id,
        "username": "alice",
        "client_id": "webapp",
        "address": "testclient",
        "reason": "invalid_credentials",
    }
    assert unknown["user_hash"] == components.limiter.pseudonym(WRONG)
    assert "username" not in unknown and unknown["reason"] == "invalid_credentials"


def test_a_throttled_login_names_the_spent_budget(
    make_settings: Any, recorded: Recorded, migrated_sqlite_template: Any
) -> None:
    settings = make_settings(login_failures_per_user_address="1/minute")
    migrate_database(settings.database_url, migrated_sqlite_template)
    parts = build_components(settings)
    try:
        add_user(parts.store, "alice")
        secret = add_client(parts.store, "webapp")
        assert secret is not None
        recorded.secrets.append(secret)
        with TestClient(create_app(components=parts)) as client:
            assert login(client, ("webapp", secret), password=WRONG).status_code == 400
            assert login(client, ("webapp", secret), password=WRONG).status_code == 429
    finally:
        parts.close()
    throttled = recorded.one("login.throttled")
    assert throttled["budget"] == "user-address" and throttled["username"] == "alice"
    assert throttled["client_id"] == "webapp" and throttled["address"] == "testclient"
    assert isinstance(throttled["retry_after"], int) and throttled["retry_after"] > 0


def test_refresh_reuse_and_revocation_each_have_their_event(
    client: TestClient, web: tuple[str, str], recorded: Recorded
) -> None:
    first = login(client, web).json()
    recorded.secrets += [first["access_token"], first["refresh_token"]]
    second = token(client, web, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200
    recorded.secrets += [second.json()["access_token"], second.json()["refresh_token"]]
    family = recorded.one("login.succeeded")["family"]

    refreshed = recorded.one("token.refreshed")
    assert refreshed["family"] == family and refreshed["username"] == "alice"
    assert refreshed["client_id"] == "webapp" and refreshed["address"] == "testclient"

    # A spent token again: reuse, the family revoked, the session ended by that cause.
    again = token(client, web, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert again.json()["error"] == "invalid_grant"
    reuse = recorded.one("refresh.reuse_detected")
    assert reuse["family"] == family and reuse["reason"] == "spent_token_presented"
    assert reuse["revoked"] == 2 and reuse["address"] == "testclient"
    ended = recorded.one("session.ended")
    assert ended["cause"] == "refresh.reuse_detected" and ended["families"] == [family]
    assert ended["sessions"] == 1 and ended["username"] == "alice"

    third = login(client, web).json()
    recorded.secrets += [third["access_token"], third["refresh_token"]]
    for value in (third["access_token"], third["refresh_token"]):
        assert client.post("/oauth/revoke", data={"token": value}, auth=web).status_code == 200
    access, refresh = recorded.named("token.revoked")
    assert access["kind"] == "access" and access["client_id"] == "webapp"
    assert isinstance(access["jti"], str) and access["jti"]
    assert refresh["kind"] == "refresh" and refresh["revoked"] == 1
    assert [e["cause"] for e in recorded.named("session.ended")] == [
        "refresh.reuse_detected",
        "token.revoked",
    ]


def test_user_changes_are_events_and_end_sessions_with_their_cause(
    client: TestClient, components: Components, web: tuple[str, str], recorded: Recorded
) -> None:
    login(client, web)
    sessions = Sessions(components.store, lambda: 2_000_000_000.0)
    sessions.set_role("alice", Role.VIEWER)
    login(client, web)
    sessions.logout("alice")
    sessions.disable("alice")
    sessions.remove("alice")

    role = recorded.one("user.role_changed")
    assert role["role"] == "viewer" and role["username"] == "alice"
    assert role["sessions_ended"] == 1
    assert recorded.one("user.logged_out")["sessions_ended"] == 1
    assert recorded.one("user.disabled")["sessions_ended"] == 0
    assert recorded.one("user.removed")["username"] == "alice"
    causes = [e["cause"] for e in recorded.named("session.ended")]
    assert causes == ["user.role_changed", "user.logged_out"]


def test_password_reset_requested_used_and_refused(
    components: Components, recorded: Recorded
) -> None:
    alice = add_user(components.store, "alice")
    resets = PasswordResets(components.store, components.hasher)
    reset = resets.issue("alice", 600)
    recorded.secrets.append(reset)
    with pytest.raises(ResetTokenError):
        resets.redeem("not-a-reset-token", NEW_PASSWORD, address="192.0.2.9")
    resets.redeem(reset, NEW_PASSWORD, address="192.0.2.9")

    requested = recorded.one("password_reset.requested")
    assert requested == {"user_id": alice.id, "username": "alice", "expires_in": 600}
    refused = recorded.one("password_reset.refused")
    assert refused == {"reason": "invalid_token", "address": "192.0.2.9"}
    used = recorded.one("password_reset.used")
    assert used["user_id"] == alice.id and used["address"] == "192.0.2.9"


def test_key_created_activated_retired_removed_and_revoked(
    make_settings: Any, recorded: Recorded
) -> None:
    clock = FakeClock()
    settings = make_settings(signing_alg="ES256", secret_key=None, jwks_max_age=60)
    manager = build_key_manager(settings, clock=clock)
    first = manager.rotate()
    created = [e["kid"] for e in recorded.named("key.created")]
    assert created == first.created and len(created) == 2
    assert recorded.one("key.activated")["kid"] == first.activated

    clock.advance(3600)
    second = manager.rotate()
    retired = recorded.one("key.retired")
    assert retired == {"kid": first.activated, "alg": "ES256"}
    assert [e["kid"] for e in recorded.named("key.activated")][-1] == second.activated

    active = next(r.kid for r in second.records if r.state is KeyState.ACTIVE)
    manager.revoke(active)
    assert recorded.one("key.revoked") == {"kid": active}
    clock.advance(10 * 86400)
    third = manager.rotate()
    assert [e["kid"] for e in recorded.named("key.removed")] == third.retired


def test_cli_user_and_client_changes_are_audited_on_stderr(ready: Cli) -> None:  # noqa: F811
    added = ready("users", "add", "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    assert "issuer.audit: user.created user_id=" in added.err and "role=viewer" in added.err
    client = ready("clients", "add", "api", "--introspect")
    secret = client.out.split("client_secret: ")[1].split()[0]
    line = next(x for x in client.err.splitlines() if "client.created" in x)
    assert "client_id=api" in line and "may_introspect=true" in line and secret not in client.err
    denied = ready("clients", "deny-introspection", "api")
    assert "client.introspection_changed client_id=api may_introspect=false" in denied.err
    assert "user.enabled" in ready("users", "enable", "bob").err
    assert PASSWORD not in added.err + added.out


def test_json_format_carries_the_event_and_each_field_as_members(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="issuer.audit"):
        audit_event(
            "login.failed", user_hash="ab12", client_id="web app", address="", reason="x\ny"
        )
    (record,) = caplog.records
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == entry["message"] == "login.failed"
    assert entry["client_id"] == "web app" and entry["address"] == "" and entry["reason"] == "x\ny"
    text = TextFormatter().format(record)
    assert text.endswith(
        'issuer.audit: login.failed user_hash=ab12 client_id="web app" address=- reason="x\\ny"'
    )
    assert "\n" not in text


def test_a_field_named_like_a_secret_or_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="names a secret"):
        audit_event("login.failed", password="x")
    with pytest.raises(ValueError, match="names a secret"):
        audit_event("token.revoked", refresh_token="x")
    with pytest.raises(ValueError, match="unknown audit event"):
        audit_event("login.maybe")


def test_every_event_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [event for event in EVENTS if f"`{event}`" not in readme]
    assert missing == []
