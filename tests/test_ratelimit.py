"""LoginLimiter over memory:// and over a real Redis, plus its settings.

Redis tests use ``ISSUER_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``), a
random key namespace per test, and delete only that namespace afterwards. Where Redis
is unreachable they skip, saying why, unless ``ISSUER_TEST_REQUIRE_SERVICES=1`` (CI),
where they fail instead.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from issuer.errors import ConfigError
from issuer.ratelimit import LoginLimiter, address_key, user_key
from issuer.settings import load_settings
from tests.conftest import require_service

REDIS_URL = os.environ.get("ISSUER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def _redis_problem() -> str | None:
    try:
        connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        connection.ping()
        connection.close()
    except redis.RedisError as exc:
        return f"Redis unreachable at {REDIS_URL}: {exc.__class__.__name__}"
    return None


def require_redis() -> None:
    """Skip (locally) or fail (CI) when Redis is not reachable."""
    require_service("redis", _redis_problem)


def fresh_redis_namespace() -> Iterator[str]:
    """A fresh key namespace on the test Redis; its keys are deleted afterwards."""
    require_redis()
    namespace = "issuer-test-" + uuid.uuid4().hex[:12]
    yield namespace
    connection = redis.Redis.from_url(REDIS_URL)
    keys = list(connection.scan_iter(match=f"{namespace}:*"))
    if keys:
        connection.delete(*keys)
    connection.close()


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    yield from fresh_redis_namespace()


def redis_keys(namespace: str) -> list[str]:
    connection = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return sorted(connection.scan_iter(match=f"{namespace}:*"))
    finally:
        connection.close()


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request) -> Callable[..., LoginLimiter]:
    """LoginLimiter factory over memory:// or the test Redis (same namespace per test)."""
    if request.param == "memory":
        return lambda per_user="3/minute", per_address="10/minute": LoginLimiter(
            per_user, per_address, "memory://"
        )
    namespace = request.getfixturevalue("redis_namespace")
    return lambda per_user="3/minute", per_address="10/minute": LoginLimiter(
        per_user, per_address, REDIS_URL, namespace=namespace
    )


# -- the budgets ----------------------------------------------------------------


def test_failures_below_the_limit_do_not_block(make_limiter):
    limiter = make_limiter()
    for _ in range(2):
        limiter.record_failure("alice", "192.0.2.1")
    assert limiter.retry_after("alice", "192.0.2.1") is None


def test_a_user_is_blocked_after_its_failures_from_any_address(make_limiter):
    limiter = make_limiter(per_user="3/minute")
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        limiter.record_failure("alice", address)
    wait = limiter.retry_after("alice", "198.51.100.7")
    assert wait is not None
    assert 1 <= wait <= 60
    assert limiter.retry_after("bob", "198.51.100.7") is None


def test_an_address_is_blocked_after_failures_across_usernames(make_limiter):
    limiter = make_limiter(per_user="3/minute", per_address="3/minute")
    for username in ("alice", "bob", "carol"):
        limiter.record_failure(username, "203.0.113.9")
    wait = limiter.retry_after("dave", "203.0.113.9")
    assert wait is not None
    assert 1 <= wait <= 60
    assert limiter.retry_after("dave", "203.0.113.10") is None
    assert limiter.retry_after("alice", "203.0.113.10") is None


def test_a_success_clears_the_users_count_but_not_the_addresss(make_limiter):
    limiter = make_limiter(per_user="3/minute", per_address="4/minute")
    for _ in range(3):
        limiter.record_failure("alice", "192.0.2.1")
    assert limiter.retry_after("alice", "192.0.2.50") is not None
    limiter.record_success("alice")
    assert limiter.retry_after("alice", "192.0.2.50") is None
    limiter.record_failure("bob", "192.0.2.1")
    assert limiter.retry_after("carol", "192.0.2.1") is not None


def test_a_block_lifts_when_the_oldest_failure_leaves_the_window(make_limiter):
    limiter = make_limiter(per_user="2/second")
    limiter.record_failure("alice", "192.0.2.1")
    limiter.record_failure("alice", "192.0.2.1")
    assert limiter.retry_after("alice", "192.0.2.1") == 1
    deadline = time.monotonic() + 5
    while limiter.retry_after("alice", "192.0.2.1") is not None:
        assert time.monotonic() < deadline, "the block never lifted"
        time.sleep(0.1)


def test_without_an_address_only_the_user_budget_applies(make_limiter):
    limiter = make_limiter(per_user="3/minute", per_address="1/minute")
    limiter.record_failure("alice", "")
    limiter.record_failure("bob", "")
    assert limiter.retry_after("carol", "") is None
    limiter.record_failure("alice", "")
    limiter.record_failure("alice", "")
    assert limiter.retry_after("alice", "") is not None


def test_addresses_in_one_ipv6_64_share_a_budget_and_mapped_ipv4_is_ipv4():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")
    limiter = LoginLimiter("10/minute", "2/minute")
    limiter.record_failure("alice", "2001:db8:1:2::1")
    limiter.record_failure("bob", "2001:db8:1:2::2")
    assert limiter.retry_after("carol", "2001:db8:1:2::3") is not None
    assert limiter.retry_after("carol", "2001:db8:1:3::3") is None


# -- Redis: keys and replicas ---------------------------------------------------------


def test_redis_keys_are_namespaced_and_hold_no_username_or_address(redis_namespace):
    limiter = LoginLimiter("3/minute", "10/minute", REDIS_URL, namespace=redis_namespace)
    limiter.record_failure("alice@example.com", "203.0.113.9")
    keys = redis_keys(redis_namespace)
    assert len(keys) == 2
    assert any(k.startswith(f"{redis_namespace}:login:user/") for k in keys)
    assert any(k.startswith(f"{redis_namespace}:login:address/") for k in keys)
    assert any(user_key("alice@example.com") in k for k in keys)
    for key in keys:
        assert "alice" not in key
        assert "203.0.113.9" not in key


def test_two_limiters_sharing_a_redis_share_the_counts(redis_namespace):
    replica_a = LoginLimiter("3/minute", "10/minute", REDIS_URL, namespace=redis_namespace)
    replica_b = LoginLimiter("3/minute", "10/minute", REDIS_URL, namespace=redis_namespace)
    replica_a.record_failure("alice", "192.0.2.1")
    replica_b.record_failure("alice", "192.0.2.2")
    replica_a.record_failure("alice", "192.0.2.3")
    assert replica_b.retry_after("alice", "192.0.2.4") is not None
    replica_b.record_success("alice")
    assert replica_a.retry_after("alice", "192.0.2.4") is None


# -- an unreachable storage -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unreachable_storage_fails_open_and_warns_once_a_minute(caplog):
    clock = Clock()
    limiter = LoginLimiter("1/minute", "1/minute", "redis://:hunter2-pw@127.0.0.1:1/0", clock=clock)
    caplog.set_level(logging.WARNING, logger="issuer.ratelimit")
    for _ in range(5):
        limiter.record_failure("alice", "192.0.2.1")
        assert limiter.retry_after("alice", "192.0.2.1") is None
    limiter.record_success("alice")
    warnings = [r for r in caplog.records if r.name == "issuer.ratelimit"]
    assert len(warnings) == 1
    assert "NOT enforced" in warnings[0].getMessage()
    clock.now += 61
    assert limiter.retry_after("alice", "192.0.2.1") is None
    assert len([r for r in caplog.records if r.name == "issuer.ratelimit"]) == 2
    assert "hunter2-pw" not in caplog.text
    assert "127.0.0.1:1" in caplog.text


# -- settings ---------------------------------------------------------------------------


def settings_problems(**env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings({f"ISSUER_{k.upper()}": v for k, v in env.items()}, path=_empty_toml())
    return str(caught.value)


def _empty_toml() -> str:
    return os.path.join(os.path.dirname(__file__), "empty.toml")


def test_rate_limit_defaults_are_five_per_user_and_thirty_per_address_in_memory():
    settings = load_settings({}, path=_empty_toml())
    assert settings.login_failures_per_user == "5/minute"
    assert settings.login_failures_per_address == "30/minute"
    assert settings.rate_limit_storage == "memory://"
    assert settings.trusted_proxies == ()


def test_rate_limit_settings_are_read_from_the_environment():
    settings = load_settings(
        {
            "ISSUER_LOGIN_FAILURES_PER_USER": "10 per hour",
            "ISSUER_LOGIN_FAILURES_PER_ADDRESS": "100/day",
            "ISSUER_RATE_LIMIT_STORAGE": "redis://cache:6379/2",
            "ISSUER_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32",
        },
        path=_empty_toml(),
    )
    assert settings.login_failures_per_user == "10 per hour"
    assert settings.login_failures_per_address == "100/day"
    assert settings.rate_limit_storage == "redis://cache:6379/2"
    assert settings.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")


@pytest.mark.parametrize(
    "bad", ["five per minute", "5/fortnight", "0/minute", "", "5/minute;9/hour"]
)
def test_invalid_limits_are_named(bad):
    problems = settings_problems(login_failures_per_user=bad, login_failures_per_address=bad)
    assert "login_failures_per_user:" in problems
    assert "login_failures_per_address:" in problems


@pytest.mark.parametrize(
    "bad", ["memcached://127.0.0.1:11211", "127.0.0.1:6379", "memory://somewhere", "mongodb://x"]
)
def test_unsupported_rate_limit_storages_are_named(bad):
    assert "rate_limit_storage:" in settings_problems(rate_limit_storage=bad)


@pytest.mark.parametrize(
    "good", ["memory://", "redis://h:6379/0", "rediss://h:6380", "redis+unix:///s"]
)
def test_memory_and_redis_storages_are_accepted(good):
    settings = load_settings({"ISSUER_RATE_LIMIT_STORAGE": good}, path=_empty_toml())
    assert settings.rate_limit_storage == good


def test_invalid_trusted_proxies_are_named():
    problems = settings_problems(trusted_proxies="10.0.0.0/8 proxy.internal 10.0.0.0/33")
    assert "'proxy.internal'" in problems
    assert "'10.0.0.0/33'" in problems


def test_the_rate_limit_storage_password_never_shows_in_repr():
    settings = load_settings(
        {"ISSUER_RATE_LIMIT_STORAGE": "redis://:s3cret-pw@cache:6379/0"}, path=_empty_toml()
    )
    assert "s3cret-pw" not in repr(settings)
    assert "redis://:***@cache:6379/0" in repr(settings)
