"""Sessions end when they should (issue 6): every event that ends a session refuses its
refresh token *and* its access tokens at the issuer (introspection, /userinfo,
issuer.dependencies), leaves other users' sessions alone, on SQLite and PostgreSQL.
Also: ``sid`` in access tokens, the absolute session lifetime, the retry window and
rehash on login.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import bcrypt
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import issuer.tokens
from issuer.app import create_app
from issuer.compose import Components, build_components
from issuer.dependencies import authenticate
from issuer.errors import RevokedTokenError
from issuer.models import Role
from issuer.sessions import Sessions
from issuer.settings import Settings
from issuer.store import migrate
from issuer.store.schema import refresh_tokens
from issuer.store.sql import make_engine
from issuer.tokens import decode_token, verify_token
from tests.conftest import PASSWORD, add_client, add_user
from tests.conftest import login as password_grant

TOKEN = "/oauth/token"
REVOKE = "/oauth/revoke"
INTROSPECT = "/oauth/introspect"
USERINFO = "/userinfo"
DAY = 86400


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return make_settings()
    return make_settings(database_url=request.getfixturevalue("postgres_url"))


async def protected(request: Request) -> JSONResponse:
    user = await authenticate(request)
    return JSONResponse({"sub": user.id})


@pytest.fixture(autouse=True)
def seed_functions(components: Components) -> Iterator[None]:
    """The seed's module-level functions (decode_token, verify_token) over this test's
    issuer: the documented shim an app installs explicitly."""
    issuer.tokens.configure(components.tokens)
    yield
    issuer.tokens.configure(None)


@pytest.fixture
def api(components: Components) -> Iterator[TestClient]:
    """An API guarded by issuer.dependencies, holding the issuer's token service."""
    app = Starlette(routes=[Route("/me", protected)])
    app.state.tokens = components.tokens
    with TestClient(app) as test_client:
        yield test_client


@dataclass
class World:
    """alice on webapp and bob on mobile, each logged in; api introspects."""

    client: TestClient
    parts: Components
    api: TestClient
    webapp: tuple[str, str]
    mobile: tuple[str, str]
    resource_server: tuple[str, str]

    def login(self, username: str, auth: tuple[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = password_grant(self.client, auth, username, ok=True)
        return body

    def refresh(self, token: str, auth: tuple[str, str]) -> Any:
        data = {"grant_type": "refresh_token", "refresh_token": token}
        return self.client.post(TOKEN, data=data, auth=auth)

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.client.post(INTROSPECT, data={"token": token}, auth=self.resource_server)
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    def assert_session_ended(self, tokens: dict[str, Any], auth: tuple[str, str]) -> None:
        refreshed = self.refresh(tokens["refresh_token"], auth)
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
        access = tokens["access_token"]
        assert self.introspect(access) == {"active": False}
        bearer = {"Authorization": f"Bearer {access}"}
        userinfo = self.client.get(USERINFO, headers=bearer)
        assert (
            userinfo.status_code == 401 and "invalid_token" in userinfo.headers["www-authenticate"]
        )
        assert self.api.get("/me", headers=bearer).status_code == 401

    def assert_session_live(self, tokens: dict[str, Any], auth: tuple[str, str]) -> dict[str, Any]:
        access = tokens["access_token"]
        assert self.introspect(access)["active"] is True
        bearer = {"Authorization": f"Bearer {access}"}
        assert self.client.get(USERINFO, headers=bearer).status_code == 200
        assert self.api.get("/me", headers=bearer).status_code == 200
        refreshed = self.refresh(tokens["refresh_token"], auth)
        assert refreshed.status_code == 200, refreshed.text
        body: dict[str, Any] = refreshed.json()
        return body


@pytest.fixture
def world(client: TestClient, components: Components, api: TestClient) -> World:
    add_user(components.store, "alice")
    add_user(components.store, "bob")
    return World(
        client=client,
        parts=components,
        api=api,
        webapp=("webapp", str(add_client(components.store, "webapp"))),
        mobile=("mobile", str(add_client(components.store, "mobile"))),
        resource_server=("api", str(add_client(components.store, "api", introspect=True))),
    )


def sessions(world: World) -> Sessions:
    return Sessions(world.parts.store, time.time)


def revoke_refresh(world: World, tokens: dict[str, Any]) -> None:
    response = world.client.post(REVOKE, data={"token": tokens["refresh_token"]}, auth=world.webapp)
    assert response.status_code == 200


def reuse(world: World, tokens: dict[str, Any]) -> None:
    rotated = world.refresh(tokens["refresh_token"], world.webapp)
    assert rotated.status_code == 200
    replayed = world.refresh(tokens["refresh_token"], world.webapp)
    assert replayed.status_code == 400
    tokens["rotated"] = rotated.json()


def remove_client(world: World, tokens: dict[str, Any]) -> None:
    assert world.parts.store.remove_client("webapp") == [
        decode_token(tokens["access_token"])["sid"]
    ]
    # Registered again under the same id, the client still cannot revive the session.
    world.webapp = ("webapp", str(add_client(world.parts.store, "webapp")))


def reset_password(world: World, tokens: dict[str, Any]) -> None:
    assert world.parts.resets is not None
    token = world.parts.resets.issue("alice")
    world.parts.resets.redeem(token, "N3w-Passw0rd!")


EVENTS: dict[str, Callable[[World, dict[str, Any]], None]] = {
    "revoke-refresh-token": revoke_refresh,
    "reuse-detected": reuse,
    "clients-remove": remove_client,
    "set-password": lambda w, t: sessions(w).set_password_hash("alice", "$2b$04$" + "x" * 53),
    "password-reset": reset_password,
    "disable": lambda w, t: sessions(w).disable("alice"),
    "remove": lambda w, t: sessions(w).remove("alice"),
    "set-role": lambda w, t: sessions(w).set_role("alice", Role.ADMIN),
    "logout": lambda w, t: sessions(w).logout("alice"),
}


@pytest.mark.parametrize("event", list(EVENTS))
def test_the_event_ends_the_session_and_its_access_tokens_and_no_other(
    world: World, event: str
) -> None:
    alice = world.login("alice", world.webapp)
    bob = world.login("bob", world.mobile)

    EVENTS[event](world, alice)

    world.assert_session_ended(alice, world.webapp)
    if "rotated" in alice:  # reuse: the successor's access token ends with the session
        world.assert_session_ended(alice["rotated"], world.webapp)
    world.assert_session_live(bob, world.mobile)


def test_access_tokens_carry_the_session_id_of_their_refresh_family(world: World) -> None:
    first = world.login("alice", world.webapp)
    second = world.refresh(first["refresh_token"], world.webapp).json()

    family = decode_token(first["refresh_token"])["fam"]
    assert decode_token(first["access_token"])["sid"] == family
    assert decode_token(second["access_token"])["sid"] == family
    assert decode_token(world.login("alice", world.webapp)["access_token"])["sid"] != family


def test_revoking_an_access_token_alone_leaves_its_session_alive(world: World) -> None:
    alice = world.login("alice", world.webapp)
    world.client.post(REVOKE, data={"token": alice["access_token"]}, auth=world.webapp)

    assert world.introspect(alice["access_token"]) == {"active": False}
    assert world.refresh(alice["refresh_token"], world.webapp).status_code == 200


def test_an_event_ends_every_session_of_the_user(world: World) -> None:
    on_web = world.login("alice", world.webapp)
    on_mobile = world.login("alice", world.mobile)

    _, ended = sessions(world).logout("ALICE")

    assert len(ended) == 2
    world.assert_session_ended(on_web, world.webapp)
    world.assert_session_ended(on_mobile, world.mobile)


def test_enabling_a_disabled_user_does_not_bring_old_sessions_back(world: World) -> None:
    alice = world.login("alice", world.webapp)
    sessions(world).disable("alice")
    world.parts.store.set_active("alice", True)

    world.assert_session_ended(alice, world.webapp)
    world.assert_session_live(world.login("alice", world.webapp), world.webapp)


def test_security_events_write_audit_lines_without_tokens(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    alice = world.login("ALICE", world.webapp)
    user = world.parts.store.get_by_username("alice")
    assert user is not None
    family = decode_token(alice["access_token"])["sid"]

    with caplog.at_level(logging.INFO, logger="issuer.audit"):
        sessions(world).set_role("alice", Role.VIEWER)

    lines = [r.getMessage() for r in caplog.records if r.name == "issuer.audit"]
    assert any(
        f"user_id={user.id} username=alice" in line and f"sessions=1 families={family}" in line
        for line in lines
    ), lines
    for line in lines:
        assert alice["access_token"] not in line and alice["refresh_token"] not in line


def test_sessions_are_listed_without_token_material(world: World) -> None:
    alice = world.login("alice", world.webapp)
    world.login("alice", world.mobile)
    world.login("bob", world.mobile)

    user, listed = sessions(world).sessions_of("alice")

    assert sorted(s.client_id for s in listed) == ["mobile", "webapp"]
    assert all(s.user_id == user.id for s in listed)
    assert decode_token(alice["access_token"])["sid"] in {s.family_id for s in listed}
    assert all(alice["refresh_token"] not in repr(s) for s in listed)
    sessions(world).logout("alice")
    assert sessions(world).sessions_of("alice")[1] == []


# -- absolute lifetime ---------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def clocked_app(settings: Settings, clock: Clock) -> tuple[TestClient, Components]:
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(settings, clock=clock)
    return TestClient(create_app(components=parts), base_url=settings.url), parts


def test_refreshing_every_day_never_outlives_the_absolute_lifetime(
    make_settings: Callable[..., Settings], settings: Settings
) -> None:
    tuned = make_settings(
        database_url=settings.database_url, session_max_lifetime=10 * DAY, access_token_ttl=3600
    )
    clock = Clock(1_700_000_000)
    client, parts = clocked_app(tuned, clock)
    add_user(parts.store, "alice")
    auth = ("webapp", str(add_client(parts.store, "webapp")))
    start = int(clock.now)
    with client:
        response = client.post(
            TOKEN,
            data={"grant_type": "password", "username": "alice", "password": PASSWORD},
            auth=auth,
        )
        tokens = response.json()
        expiries = []
        for _ in range(12):
            claims = parts.tokens.decode(tokens["refresh_token"])
            access = parts.tokens.decode(tokens["access_token"])
            assert claims["exp"] <= start + 10 * DAY and access["exp"] <= claims["exp"]
            expiries.append(claims["exp"])
            clock.now += DAY
            response = client.post(
                TOKEN,
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                auth=auth,
            )
            if response.status_code != 200:
                break
            tokens = response.json()
    parts.close()

    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert expiries[0] == start + 7 * DAY  # the idle timeout, while it fits
    assert expiries[-1] == start + 10 * DAY  # then the session's absolute end
    assert len(expiries) == 10


# -- rehash on login -----------------------------------------------------------


def cost(password_hash: str | None) -> int:
    assert password_hash is not None
    return int(password_hash.split("$")[2])


def test_a_login_upgrades_a_cost_10_hash_to_12_and_failed_logins_never_do(
    make_settings: Callable[..., Settings], settings: Settings
) -> None:
    tuned = make_settings(database_url=settings.database_url, bcrypt_rounds=12)
    engine = make_engine(tuned.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(tuned)
    old = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    user = parts.store.add_user("alice", old, Role.ENGINEER)
    auth = ("webapp", str(add_client(parts.store, "webapp")))
    form = {"grant_type": "password", "username": "alice"}
    with TestClient(create_app(components=parts), base_url=tuned.url) as client:
        wrong = client.post(TOKEN, data={**form, "password": "Wr0ng-password!"}, auth=auth)
        assert wrong.status_code == 400
        assert parts.store.get_by_id(user.id).password_hash == old  # type: ignore[union-attr]

        right = client.post(TOKEN, data={**form, "password": PASSWORD}, auth=auth)
        assert right.status_code == 200

        upgraded = parts.store.get_by_id(user.id).password_hash  # type: ignore[union-attr]
        assert cost(old) == 10 and cost(upgraded) == 12
        assert parts.hasher.verify(PASSWORD, upgraded)
        again = client.post(TOKEN, data={**form, "password": PASSWORD}, auth=auth)
        assert again.status_code == 200
        assert parts.store.get_by_id(user.id).password_hash == upgraded  # type: ignore[union-attr]
    parts.close()


# -- retry window --------------------------------------------------------------


@pytest.fixture
def retrying(
    make_settings: Callable[..., Settings], settings: Settings
) -> Iterator[tuple[TestClient, Components, Clock, tuple[str, str], tuple[str, str]]]:
    tuned = make_settings(database_url=settings.database_url, refresh_retry_window=10)
    clock = Clock(1_700_000_000)
    client, parts = clocked_app(tuned, clock)
    add_user(parts.store, "alice")
    webapp = ("webapp", str(add_client(parts.store, "webapp")))
    other = ("other", str(add_client(parts.store, "other")))
    with client:
        yield client, parts, clock, webapp, other
    parts.close()


def _refresh(client: TestClient, token: str, auth: tuple[str, str]) -> Any:
    return client.post(
        TOKEN, data={"grant_type": "refresh_token", "refresh_token": token}, auth=auth
    )


def usable_in_family(parts: Components, family: str) -> int:
    with parts.store.engine.connect() as conn:
        query = (
            select(func.count())
            .where(refresh_tokens.c.family_id == family)
            .where(refresh_tokens.c.spent_at.is_(None))
            .where(refresh_tokens.c.revoked_at.is_(None))
        )
        return int(conn.execute(query).scalar_one())


def test_a_lost_response_retried_within_the_window_gets_the_same_successor(retrying: Any) -> None:
    client, parts, clock, webapp, _ = retrying
    first = password_grant(client, webapp, ok=True)
    answer = _refresh(client, first["refresh_token"], webapp).json()
    clock.now += 5

    retried = _refresh(client, first["refresh_token"], webapp)

    assert retried.status_code == 200, retried.text
    again = retried.json()
    assert (
        decode_token(again["refresh_token"])["jti"] == decode_token(answer["refresh_token"])["jti"]
    )
    assert again["access_token"] != answer["access_token"]
    family = decode_token(first["refresh_token"])["fam"]
    assert usable_in_family(parts, family) == 1
    assert decode_token(again["access_token"])["sid"] == family
    # The chain goes on from the one successor.
    assert _refresh(client, again["refresh_token"], webapp).status_code == 200


@pytest.mark.parametrize("case", ["after-the-window", "another-client", "successor-used"])
def test_anything_but_a_prompt_retry_by_the_same_client_is_reuse(retrying: Any, case: str) -> None:
    client, parts, clock, webapp, other = retrying
    first = password_grant(client, webapp, ok=True)
    answer = _refresh(client, first["refresh_token"], webapp).json()
    presenter = webapp
    if case == "after-the-window":
        clock.now += 11
    elif case == "another-client":
        presenter = other
    else:
        assert _refresh(client, answer["refresh_token"], webapp).status_code == 200

    replay = _refresh(client, first["refresh_token"], presenter)

    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    family = decode_token(first["refresh_token"])["fam"]
    assert usable_in_family(parts, family) == 0
    assert parts.store.session_revoked(family)


def test_a_spent_token_is_reuse_when_the_window_is_off(world: World) -> None:
    first = world.login("alice", world.webapp)
    assert world.refresh(first["refresh_token"], world.webapp).status_code == 200

    assert world.refresh(first["refresh_token"], world.webapp).status_code == 400
    assert world.parts.store.session_revoked(decode_token(first["access_token"])["sid"])


def test_concurrent_retries_within_the_window_all_get_the_one_successor(retrying: Any) -> None:
    client, parts, _, webapp, _ = retrying
    first = password_grant(client, webapp, ok=True)
    answer = _refresh(client, first["refresh_token"], webapp).json()
    successor = decode_token(answer["refresh_token"])["jti"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(lambda _: _refresh(client, first["refresh_token"], webapp), range(20))
        )

    assert [a.status_code for a in answers] == [200] * 20
    assert {decode_token(a.json()["refresh_token"])["jti"] for a in answers} == {successor}
    assert usable_in_family(parts, decode_token(answer["refresh_token"])["fam"]) == 1


def test_a_login_racing_a_password_change_does_not_outlive_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password is checked, then set-password commits, then the login records its
    session: that session must not start (it was opened with the old password)."""
    real_verify = world.parts.hasher.verify

    def verify_then_change(password: str, hashed: str | None) -> bool:
        matches = real_verify(password, hashed)
        sessions(world).set_password_hash("alice", "$2b$04$" + "y" * 53)
        return matches

    monkeypatch.setattr(world.parts.hasher, "verify", verify_then_change)
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}

    answer = world.client.post(TOKEN, data=data, auth=world.webapp)

    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    user = world.parts.store.get_by_username("alice")
    assert user is not None and world.parts.store.list_sessions(user.id, int(time.time())) == []


def test_verify_token_refuses_an_access_token_of_an_ended_session(world: World) -> None:
    alice = world.login("alice", world.webapp)
    assert verify_token(alice["access_token"])["sub"]

    sessions(world).logout("alice")

    with pytest.raises(RevokedTokenError):
        verify_token(alice["access_token"])
