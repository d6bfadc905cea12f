"""The CLI's session commands and security events: ``users remove|set-role|logout|
reset-token``, ``sessions list``, and the session-ending ``set-password``/``disable``.
Results are checked in the database; bad input is one line, exit 2, nothing changed.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from issuer.models import RefreshRecord, Role
from tests.conftest import PASSWORD
from tests.test_cli import Cli, assert_refused, cli, ready  # noqa: F401 - fixtures

NEW_PASSWORD = "An0ther-Secret!"


def open_session(runner: Cli, username: str, client_id: str = "webapp") -> str:
    """A live refresh family for the user, as a login records it; its id."""
    store = runner.store()
    user = store.get_by_username(username)
    assert user is not None
    family = uuid.uuid4().hex
    now = int(time.time())
    store.create(
        RefreshRecord(
            jti=uuid.uuid4().hex,
            family_id=family,
            user_id=user.id,
            client_id=client_id,
            scope="openid",
            issued_at=now,
            expires_at=now + 3600,
        )
    )
    store.engine.dispose()
    return family


@pytest.fixture
def two_users(ready: Cli) -> Cli:  # noqa: F811 - the fixture imported above
    add = ready("users", "add", "bob", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    assert add.code == 0
    return ready


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("users", "set-password", "alice", "--password-stdin"), NEW_PASSWORD + "\n"),
        (("users", "disable", "alice"), ""),
        (("users", "remove", "alice"), ""),
        (("users", "set-role", "alice", "admin"), ""),
        (("users", "logout", "alice"), ""),
    ],
    ids=["set-password", "disable", "remove", "set-role", "logout"],
)
def test_each_security_event_ends_every_session_of_the_user_only(
    two_users: Cli, args: tuple[str, ...], stdin: str
) -> None:
    alice_web, alice_cli = open_session(two_users, "alice"), open_session(two_users, "alice")
    bob = open_session(two_users, "bob")

    result = two_users(*args, stdin=stdin)

    assert result.code == 0, result
    assert "2 sessions ended" in result.out
    store = two_users.store()
    assert store.session_revoked(alice_web) and store.session_revoked(alice_cli)
    assert not store.session_revoked(bob)
    audit = [line for line in result.err.splitlines() if "issuer.audit" in line]
    ended = [line for line in audit if "session.ended" in line]
    assert len(audit) == 2 and len(ended) == 1, audit
    assert "username=alice" in ended[0] and "sessions=2" in ended[0]
    assert alice_web in ended[0] and NEW_PASSWORD not in result.err
    store.engine.dispose()


def test_set_role_changes_the_role(ready: Cli) -> None:  # noqa: F811
    assert ready("users", "set-role", "ALICE", "viewer").code == 0

    user = ready.store().get_by_username("alice")
    assert user is not None and user.role is Role.VIEWER


def test_remove_deletes_the_user(ready: Cli) -> None:  # noqa: F811
    assert ready("users", "remove", "alice").code == 0

    assert ready.store().get_by_username("alice") is None
    assert_refused(ready("users", "remove", "alice"), "no user 'alice'")


def test_a_username_differing_only_in_case_is_refused(ready: Cli) -> None:  # noqa: F811
    before = ready.snapshot()

    result = ready("users", "add", "ALICE", "--role", "admin", "--password-stdin", stdin=PASSWORD)

    assert_refused(result, "already exists")
    assert ready.snapshot() == before


def test_sessions_list_shows_live_sessions_without_token_material(
    two_users: Cli,
) -> None:
    family = open_session(two_users, "alice", "webapp")
    ended = open_session(two_users, "alice", "mobile")
    open_session(two_users, "bob")
    store = two_users.store()
    store.revoke_family(ended, int(time.time()))
    store.engine.dispose()
    tables, _ = two_users.snapshot()
    assert tables is not None
    jtis = [row[0] for row in tables["refresh_tokens"]]

    result = two_users("sessions", "list", "Alice")

    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].split()[:3] == ["SESSION", "CLIENT", "CREATED"]
    assert len(lines) == 2 and lines[1].split()[:2] == [family, "webapp"]
    assert all(jti not in result.out for jti in jtis)


def test_reset_token_prints_one_line_and_stores_only_its_sha256(ready: Cli) -> None:  # noqa: F811
    result = ready("users", "reset-token", "alice")

    assert result.code == 0, result
    lines = result.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reset_token: ")
    token = lines[0].removeprefix("reset_token: ")
    assert len(token) >= 43  # 256 bits, URL-safe base64
    tables, _ = ready.snapshot()
    assert tables is not None
    stored = tables["password_resets"]
    assert len(stored) == 1
    assert hashlib.sha256(token.encode()).hexdigest() in stored[0]
    assert all(token not in value for row in stored for value in row)
    assert token not in result.err


def test_reset_token_ttl_sets_the_expiry(ready: Cli) -> None:  # noqa: F811
    before = int(time.time())
    assert ready("users", "reset-token", "alice", "--ttl", "600").code == 0

    tables, _ = ready.snapshot()
    assert tables is not None
    (_, _, expires_at, _) = tables["password_resets"][0]
    assert before + 600 <= int(expires_at) <= int(time.time()) + 600


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("users", "set-role", "alice", "root"), "unknown role"),
        (("users", "set-role", "nobody", "admin"), "no user"),
        (("users", "remove", "nobody"), "no user"),
        (("users", "logout", "nobody"), "no user"),
        (("users", "reset-token", "nobody"), "no user"),
        (("users", "reset-token", "alice", "--ttl", "5"), "--ttl"),
        (("users", "reset-token", "alice", "--ttl", "soon"), "--ttl"),
        (("sessions", "list", "nobody"), "no user"),
        (("sessions", "list", "bad name!"), "username"),
        (("users", "set-role", "alice"), "role"),
    ],
)
def test_bad_session_commands_are_one_line_exit_2_and_change_nothing(
    ready: Cli,  # noqa: F811
    args: tuple[str, ...],
    fragment: str,
) -> None:
    open_session(ready, "alice")
    before = ready.snapshot()

    result = ready(*args)

    assert_refused(result, fragment)
    assert ready.snapshot() == before


def test_clients_remove_ends_the_clients_sessions_and_audits_them(
    two_users: Cli,
) -> None:
    on_web = open_session(two_users, "alice", "webapp")
    elsewhere = open_session(two_users, "bob", "mobile")

    result = two_users("clients", "remove", "webapp")

    assert result.code == 0 and "1 session ended" in result.out
    store = two_users.store()
    assert store.session_revoked(on_web) and not store.session_revoked(elsewhere)
    store.engine.dispose()
    audit = [line for line in result.err.splitlines() if "issuer.audit" in line]
    assert len(audit) == 2 and "client.removed client_id=webapp sessions_ended=1" in audit[0]
    assert "session.ended cause=client.removed" in audit[1] and on_web in audit[1]
