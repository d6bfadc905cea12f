"""Password reset (issue 6, item 4): ``POST /password/reset`` end to end, and the Python
API for apps that send their own links. Bad tokens cost no bcrypt; every session ends.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import bcrypt
import pytest
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import Components, build_components
from issuer.errors import NotFoundError, PasswordPolicyError
from issuer.resets import ResetTokenError
from issuer.settings import Settings
from issuer.store import migrate
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, add_client, add_user, login
from tests.test_ratelimit import REDIS_URL, UNREACHABLE_REDIS, fresh_redis_namespace, redis_keys

RESET = "/password/reset"
TOKEN = "/oauth/token"
NEW_PASSWORD = "Brand-n3w-secret"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    overrides: dict[str, Any] = {"password_reset_failures_per_address": "5000/minute"}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    return make_settings(**overrides)


@pytest.fixture
def app(settings: Settings) -> Iterator[tuple[TestClient, Components, Clock]]:
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    clock = Clock(1_800_000_000)
    parts = build_components(settings, clock=clock)
    add_user(parts.store, "alice")
    add_user(parts.store, "bob")
    parts.webapp = ("webapp", add_client(parts.store, "webapp"))  # type: ignore[attr-defined]
    with TestClient(create_app(components=parts), base_url=settings.url) as client:
        yield client, parts, clock
    parts.close()


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call to bcrypt.hashpw or bcrypt.checkpw (the real functions still run)."""
    calls: list[str] = []
    for name in ("hashpw", "checkpw"):
        real = getattr(bcrypt, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(bcrypt, name, spy)
    return calls


def reset(client: TestClient, token: str, password: str = NEW_PASSWORD) -> Any:
    return client.post(RESET, data={"token": token, "new_password": password})


def test_a_reset_sets_the_password_and_ends_every_session(app: Any) -> None:
    client, parts, _ = app
    alice = login(client, parts.webapp, "alice", PASSWORD).json()
    bob = login(client, parts.webapp, "bob", PASSWORD).json()
    token = parts.resets.issue("alice")

    answer = reset(client, token)

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert login(client, parts.webapp, "alice", PASSWORD).status_code == 400
    assert login(client, parts.webapp, "alice", NEW_PASSWORD).status_code == 200
    refresh = {"grant_type": "refresh_token", "refresh_token": alice["refresh_token"]}
    assert client.post(TOKEN, data=refresh, auth=parts.webapp).status_code == 400
    bearer = {"Authorization": f"Bearer {alice['access_token']}"}
    assert client.get("/userinfo", headers=bearer).status_code == 401
    bob_bearer = {"Authorization": f"Bearer {bob['access_token']}"}
    assert client.get("/userinfo", headers=bob_bearer).status_code == 200


def test_a_token_works_once(app: Any) -> None:
    client, parts, _ = app
    token = parts.resets.issue("alice")
    assert reset(client, token).status_code == 200

    again = reset(client, token, "Yet-an0ther-one")

    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert login(client, parts.webapp, "alice", NEW_PASSWORD).status_code == 200


def test_an_expired_token_is_refused(app: Any) -> None:
    client, parts, clock = app
    token = parts.resets.issue("alice", ttl=600)
    clock.now += 601

    answer = reset(client, token)

    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert login(client, parts.webapp, "alice", PASSWORD).status_code == 200


def test_a_token_within_its_lifetime_works(app: Any) -> None:
    client, parts, clock = app
    token = parts.resets.issue("alice", ttl=600)
    clock.now += 600

    assert reset(client, token).status_code == 200


def test_a_new_token_invalidates_the_older_one(app: Any) -> None:
    client, parts, _ = app
    old = parts.resets.issue("alice")
    new = parts.resets.issue("alice")

    assert reset(client, old).status_code == 400
    assert reset(client, new).status_code == 200


def test_a_weak_password_is_refused_naming_the_rules_and_keeps_the_token(app: Any) -> None:
    client, parts, _ = app
    token = parts.resets.issue("alice")

    weak = reset(client, token, "short")

    assert weak.status_code == 400
    body = weak.json()
    assert body["error"] == "invalid_request"
    assert "at least 8 characters" in body["failed_rules"]
    assert "a digit" in body["failed_rules"] and "an uppercase letter" in body["error_description"]
    assert login(client, parts.webapp, "alice", PASSWORD).status_code == 200
    assert reset(client, token).status_code == 200


def test_a_thousand_random_tokens_are_refused_without_any_bcrypt(
    app: Any, bcrypt_calls: list[str]
) -> None:
    client, parts, _ = app
    real = parts.resets.issue("alice")
    bcrypt_calls.clear()

    answers = [reset(client, secrets.token_urlsafe(32)) for _ in range(1000)]

    assert {a.status_code for a in answers} == {400}
    assert {a.json()["error"] for a in answers} == {"invalid_grant"}
    assert bcrypt_calls == []
    assert reset(client, real).status_code == 200
    assert bcrypt_calls == ["hashpw"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"new_password": NEW_PASSWORD}, "'token'"),
        ({"token": "x"}, "'new_password'"),
        ({}, "'token' and 'new_password'"),
    ],
)
def test_missing_parameters_are_invalid_request(app: Any, data: dict, fragment: str) -> None:
    client, _, _ = app

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = client.post(RESET, data=data, headers=form)

    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
    assert fragment in answer.json()["error_description"]


def test_odd_requests_get_a_clear_4xx_and_change_nothing(app: Any) -> None:
    client, parts, _ = app
    token = parts.resets.issue("alice")
    odd = [
        client.post(RESET, json={"token": token, "new_password": NEW_PASSWORD}),
        client.post(RESET + f"?token={token}", data={"new_password": NEW_PASSWORD}),
        client.post(
            RESET,
            content=f"token={token}&token={token}&new_password={NEW_PASSWORD}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        client.post(
            RESET,
            content=b"token=%ff&new_password=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        client.post(RESET, data={"token": "x" * 5000, "new_password": NEW_PASSWORD}),
        client.get(RESET),
    ]

    assert [a.status_code for a in odd] == [400, 400, 400, 400, 400, 405]
    assert all(a.headers["content-type"].startswith("application/json") for a in odd)
    assert login(client, parts.webapp, "alice", PASSWORD).status_code == 200
    assert reset(client, token).status_code == 200


def test_failed_attempts_are_limited_per_address(
    make_settings: Callable[..., Settings], settings: Settings, bcrypt_calls: list[str]
) -> None:
    tuned = make_settings(
        database_url=settings.database_url, password_reset_failures_per_address="3/minute"
    )
    engine = make_engine(tuned.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(tuned)
    add_user(parts.store, "alice")
    with TestClient(create_app(components=parts), base_url=tuned.url) as client:
        token = parts.resets.issue("alice")  # type: ignore[union-attr]
        bcrypt_calls.clear()
        failures = [reset(client, secrets.token_urlsafe(32)).status_code for _ in range(3)]
        blocked = reset(client, token)
    parts.close()

    assert failures == [400, 400, 400]
    assert blocked.status_code == 429 and blocked.json()["error"] == "too_many_requests"
    assert int(blocked.headers["retry-after"]) >= 1
    assert bcrypt_calls == []


# -- the Python API ------------------------------------------------------------


def test_the_redemption_is_callable_without_http(app: Any) -> None:
    _, parts, _ = app
    token = parts.resets.issue("ALICE")

    with pytest.raises(PasswordPolicyError) as weak:
        parts.resets.redeem(token, "weak")
    user = parts.resets.redeem(token, NEW_PASSWORD)

    assert "a digit" in weak.value.failures
    assert user.username == "alice" and parts.hasher.verify(NEW_PASSWORD, user.password_hash)
    with pytest.raises(ResetTokenError):
        parts.resets.redeem(token, NEW_PASSWORD)
    for bad in (None, 42, "", "x" * 10_000):
        with pytest.raises(ResetTokenError):
            parts.resets.redeem(bad, NEW_PASSWORD)
    with pytest.raises(NotFoundError):
        parts.resets.issue("nobody")


# -- the per-address budget in shared storage ----------------------------------


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    yield from fresh_redis_namespace()


def reset_app(settings: Settings, address: str) -> tuple[TestClient, Components]:
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(settings)
    app = create_app(components=parts)
    return TestClient(app, base_url=settings.url, client=(address, 40000)), parts


def test_replicas_sharing_redis_share_the_reset_budget_under_its_own_namespace(
    make_settings: Callable[..., Settings], redis_namespace: str
) -> None:
    shared = make_settings(
        rate_limit_storage=REDIS_URL,
        rate_limit_key_prefix=redis_namespace,
        password_reset_failures_per_address="2/minute",
    )
    client_a, parts_a = reset_app(shared, "198.51.100.9")
    client_b, parts_b = reset_app(shared, "198.51.100.9")
    other, parts_c = reset_app(shared, "198.51.100.10")
    add_user(parts_a.store, "alice")
    token = parts_a.resets.issue("alice")  # type: ignore[union-attr]
    with client_a, client_b, other:
        assert reset(client_a, "forged-1").status_code == 400
        assert reset(client_b, "forged-2").status_code == 400
        assert reset(client_b, token).status_code == 429
        assert reset(other, token).status_code == 200
    for parts in (parts_a, parts_b, parts_c):
        parts.close()

    keys = redis_keys(redis_namespace)
    assert keys and all(k.startswith(f"{redis_namespace}:") for k in keys)
    assert any(":reset:address" in k for k in keys)
    assert not any("198.51.100" in k for k in keys)


def test_resets_work_unlimited_when_the_rate_limit_storage_is_down(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    down = make_settings(rate_limit_storage=UNREACHABLE_REDIS)
    client, parts = reset_app(down, "198.51.100.9")
    add_user(parts.store, "alice")
    token = parts.resets.issue("alice")  # type: ignore[union-attr]
    with client:
        assert reset(client, "forged").status_code == 400
        assert reset(client, token).status_code == 200
    parts.close()

    assert "password reset limits are NOT enforced" in caplog.text
