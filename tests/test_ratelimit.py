"""LoginLimiter over memory:// and over a real Redis, its hash key, and its settings.

Redis tests use ``ISSUER_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``), a
random key namespace per test, and delete only that namespace afterwards. Where Redis
is unreachable they skip, saying why, unless ``ISSUER_TEST_REQUIRE_SERVICES=1`` (CI),
where they fail instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import redis
from limits.errors import StorageError

from issuer.errors import ConfigError
from issuer.ratelimit import (
    LoginLimiter,
    LoginPolicy,
    SweptMemoryStorage,
    address_key,
    hash_key_for,
    network_of,
    release_entry,
)
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


HASH_KEY = b"k" * 32
POLICY = LoginPolicy(per_user_address="3/minute", per_address="10/minute", per_user="20/hour")


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request) -> Callable[..., LoginLimiter]:
    """LoginLimiter factory over memory:// or the test Redis (same namespace per test)."""
    if request.param == "memory":
        return lambda **policy: LoginLimiter(replace(POLICY, **policy), "memory://")
    namespace = request.getfixturevalue("redis_namespace")
    return lambda **policy: LoginLimiter(
        replace(POLICY, **policy), REDIS_URL, namespace=namespace, hash_key=HASH_KEY
    )


def fail(limiter: LoginLimiter, username: str, address: str, times: int = 1) -> None:
    """``times`` wrong passwords, each admitted first (as the grant does)."""
    for _ in range(times):
        admission = limiter.admit(username, address)
        assert admission.admitted, f"attempt refused early ({username}, {address})"


def succeed(limiter: LoginLimiter, username: str, address: str) -> None:
    admission = limiter.admit(username, address)
    assert admission.admitted
    limiter.succeeded(admission)


def refused(limiter: LoginLimiter, username: str, address: str) -> int | None:
    """The wait if the attempt is refused, else None (an admitted attempt is given back)."""
    admission = limiter.admit(username, address)
    if admission.admitted:
        limiter.succeeded(admission)
        return None
    return admission.retry_after


# -- the budgets ----------------------------------------------------------------


def test_failures_below_every_budget_do_not_block(make_limiter):
    limiter = make_limiter()
    fail(limiter, "alice", "192.0.2.1", 2)
    assert refused(limiter, "alice", "192.0.2.1") is None


def test_a_user_and_address_pair_is_refused_after_its_small_budget(make_limiter):
    limiter = make_limiter(per_user_address="3/minute")
    fail(limiter, "alice", "203.0.113.9", 3)
    wait = refused(limiter, "alice", "203.0.113.9")
    assert wait is not None
    assert 1 <= wait <= 60
    # The attacker throttled himself only: alice elsewhere, and bob from there, go on.
    assert refused(limiter, "alice", "198.51.100.7") is None
    assert refused(limiter, "bob", "203.0.113.9") is None


def test_the_pair_budget_is_counted_on_the_canonical_username(make_limiter):
    limiter = make_limiter(per_user_address="3/minute")
    for name in ("alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45"):
        fail(limiter, name, "203.0.113.9")
    assert refused(limiter, "Alice", "203.0.113.9") is not None


def test_an_address_is_refused_after_failures_across_usernames(make_limiter):
    limiter = make_limiter(per_address="3/minute")
    for username in ("alice", "bob", "carol"):
        fail(limiter, username, "203.0.113.9")
    wait = refused(limiter, "dave", "203.0.113.9")
    assert wait is not None
    assert 1 <= wait <= 60
    assert refused(limiter, "dave", "203.0.113.10") is None


def test_the_per_user_ceiling_holds_across_addresses_but_not_at_a_known_address(make_limiter):
    limiter = make_limiter(per_user="4/hour")
    succeed(limiter, "alice", "198.51.100.7")  # alice's usual place
    for last in range(1, 5):
        fail(limiter, "alice", f"203.0.113.{last}")
    assert refused(limiter, "alice", "192.0.2.200") is not None  # a stranger's new address
    assert refused(limiter, "alice", "198.51.100.7") is None  # the owner at home
    assert limiter.is_known_address("alice", "198.51.100.7")
    assert not limiter.is_known_address("alice", "192.0.2.200")
    assert not limiter.is_known_address("bob", "198.51.100.7")


def test_a_success_clears_its_pair_and_gives_back_its_other_places(make_limiter):
    limiter = make_limiter(per_user_address="3/minute", per_address="3/minute")
    fail(limiter, "alice", "192.0.2.1", 2)
    succeed(limiter, "alice", "192.0.2.1")
    # The pair is cleared, and the success took nothing from the address's failure budget:
    # one more failure leaves room (3 failures), the next is refused.
    fail(limiter, "bob", "192.0.2.1")
    assert refused(limiter, "carol", "192.0.2.1") is not None


def test_many_successes_from_one_address_spend_no_failure_budget(make_limiter):
    limiter = make_limiter(per_address="2/minute", per_user="2/hour")
    for name in ("alice", "bob", "carol", "dave", "erin", "frank"):
        succeed(limiter, name, "192.0.2.1")
    fail(limiter, "alice", "192.0.2.1")
    assert refused(limiter, "alice", "192.0.2.1") is None


def test_a_refused_attempt_holds_no_place(make_limiter):
    limiter = make_limiter(per_user_address="2/minute", per_address="10/minute", per_user="3/hour")
    fail(limiter, "alice", "192.0.2.1", 2)
    for _ in range(
        20
    ):  # refused by the pair budget: the address and user budgets stay as they were
        assert refused(limiter, "alice", "192.0.2.1") is not None
    fail(limiter, "alice", "192.0.2.2")
    assert refused(limiter, "alice", "192.0.2.3") is not None  # 3 real failures: the ceiling


def test_a_block_lifts_when_the_oldest_failure_leaves_the_window(make_limiter):
    limiter = make_limiter(per_user_address="2/second")
    fail(limiter, "alice", "192.0.2.1", 2)
    assert refused(limiter, "alice", "192.0.2.1") == 1
    deadline = time.monotonic() + 5
    while refused(limiter, "alice", "192.0.2.1") is not None:
        assert time.monotonic() < deadline, "the block never lifted"
        time.sleep(0.1)


def test_without_an_address_the_pair_and_user_budgets_apply(make_limiter):
    limiter = make_limiter(per_user_address="2/minute", per_address="1/minute")
    fail(limiter, "alice", "")
    fail(limiter, "bob", "")
    assert refused(limiter, "carol", "") is None
    fail(limiter, "alice", "")
    assert refused(limiter, "alice", "") is not None
    assert not limiter.is_known_address("alice", "")


def test_concurrent_admissions_never_exceed_the_budget(make_limiter):
    limiter = make_limiter(per_user_address="5/minute")
    barrier = threading.Barrier(40)

    def attempt(_: int) -> bool:
        barrier.wait()
        return limiter.admit("alice", "203.0.113.9").admitted

    with ThreadPoolExecutor(max_workers=40) as pool:
        admitted = sum(pool.map(attempt, range(40)))
    assert admitted == 5


def test_addresses_in_one_ipv6_64_share_a_budget_and_mapped_ipv4_is_ipv4():
    assert network_of("2001:db8:1:2::1") == network_of("2001:db8:1:2:ffff::9")
    assert network_of("2001:db8:1:2::1") != network_of("2001:db8:1:3::1")
    assert network_of("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")
    limiter = LoginLimiter(replace(POLICY, per_address="2/minute"))
    fail(limiter, "alice", "2001:db8:1:2::1")
    fail(limiter, "bob", "2001:db8:1:2::2")
    assert refused(limiter, "carol", "2001:db8:1:2::3") is not None
    assert refused(limiter, "carol", "2001:db8:1:3::3") is None


def test_release_entry_gives_back_exactly_one_place(make_limiter):
    limiter = make_limiter()
    item = limiter.per_address
    for _ in range(3):
        assert limiter.strategy.hit(item, "x")
    release_entry(limiter.storage, item.key_for("x"))
    assert limiter.strategy.get_window_stats(item, "x").remaining == item.amount - 2


# -- Redis: keys and replicas ---------------------------------------------------------


def test_redis_keys_are_namespaced_keyed_hashes_of_no_username_or_address(redis_namespace):
    limiter = LoginLimiter(POLICY, REDIS_URL, namespace=redis_namespace, hash_key=HASH_KEY)
    succeed(limiter, "alice@example.com", "203.0.113.9")
    fail(limiter, "alice@example.com", "198.51.100.1")
    keys = redis_keys(redis_namespace)
    kinds = ("known", "user-address", "address", "user")
    assert {k.split("/")[0] for k in keys} == {f"{redis_namespace}:login:{k}" for k in kinds}
    unkeyed = hashlib.sha256(b"203.0.113.9").hexdigest()[:16]
    for key in keys:
        assert "alice" not in key
        assert "203.0.113.9" not in key
        assert unkeyed not in key
    known = [k for k in keys if ":login:known/" in k]
    assert len(known) == 1
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        assert 29 * 86400 < connection.ttl(known[0]) <= 30 * 86400
    finally:
        connection.close()


def test_two_limiters_sharing_a_redis_and_a_key_share_the_counts(redis_namespace):
    replica_a = LoginLimiter(POLICY, REDIS_URL, namespace=redis_namespace, hash_key=HASH_KEY)
    replica_b = LoginLimiter(POLICY, REDIS_URL, namespace=redis_namespace, hash_key=HASH_KEY)
    fail(replica_a, "alice", "192.0.2.1")
    fail(replica_b, "alice", "192.0.2.1")
    fail(replica_a, "alice", "192.0.2.1")
    assert refused(replica_b, "alice", "192.0.2.1") is not None
    succeed(replica_b, "alice", "192.0.2.9")
    assert replica_a.is_known_address("alice", "192.0.2.9")
    other_key = LoginLimiter(POLICY, REDIS_URL, namespace=redis_namespace, hash_key=b"o" * 32)
    assert not other_key.is_known_address("alice", "192.0.2.9")


def test_a_shared_storage_refuses_to_run_without_a_shared_hash_key():
    with pytest.raises(ValueError, match="hash key"):
        LoginLimiter(POLICY, REDIS_URL)


# -- the hash key ----------------------------------------------------------------------


def test_memory_storage_needs_no_hash_key(tmp_path):
    assert hash_key_for("memory://", "s" * 40, tmp_path / "keys") is None
    assert not (tmp_path / "keys").exists()


def test_the_hash_key_derives_from_the_hs256_secret_when_there_is_one(tmp_path):
    key = hash_key_for(REDIS_URL, "a-secret-" * 5, tmp_path / "keys")
    assert key == hash_key_for(REDIS_URL, "a-secret-" * 5, tmp_path / "other")
    assert key != hash_key_for(REDIS_URL, "b-secret-" * 5, tmp_path / "keys")
    assert key is not None and len(key) == 32 and b"a-secret" not in key
    assert not (tmp_path / "keys").exists()


def test_without_a_secret_the_hash_key_is_one_file_in_keys_shared_by_every_process(tmp_path):
    keys_dir = tmp_path / "keys"
    barrier = threading.Barrier(8)

    def load(_: int) -> bytes | None:
        barrier.wait()
        return hash_key_for(REDIS_URL, None, keys_dir)

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(load, range(8)))
    assert len(keys) == 1
    assert [p.name for p in keys_dir.iterdir()] == ["ratelimit.key"]
    assert stat.S_IMODE((keys_dir / "ratelimit.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert keys == {hash_key_for(REDIS_URL, None, keys_dir)}


def test_a_truncated_hash_key_file_is_refused(tmp_path):
    (tmp_path / "ratelimit.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="expected 32"):
        hash_key_for(REDIS_URL, None, tmp_path)


# -- an unreachable storage -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unreachable_storage_fails_open_and_warns_once_a_minute(caplog):
    clock = Clock()
    limiter = LoginLimiter(
        LoginPolicy("1/minute", "1/minute", "1/hour"),
        "redis://:hunter2-pw@127.0.0.1:1/0",
        hash_key=HASH_KEY,
        clock=clock,
    )
    caplog.set_level(logging.WARNING, logger="issuer.ratelimit")
    for _ in range(5):
        fail(limiter, "alice", "192.0.2.1")
    succeed(limiter, "alice", "192.0.2.1")
    warnings = [r for r in caplog.records if r.name == "issuer.ratelimit"]
    assert len(warnings) == 1
    assert "NOT enforced" in warnings[0].getMessage()
    clock.now += 61
    assert refused(limiter, "alice", "192.0.2.1") is None
    assert len([r for r in caplog.records if r.name == "issuer.ratelimit"]) == 2
    assert "hunter2-pw" not in caplog.text
    assert "127.0.0.1:1" in caplog.text


def test_a_storage_failing_midway_through_an_admission_fails_open(monkeypatch, caplog):
    """The first budget taken, the storage dies: the login proceeds, and nothing raises
    even though the place taken cannot be given back."""
    limiter = LoginLimiter(POLICY)
    real_hit = limiter.strategy.hit
    calls: list[int] = []

    def dying_hit(item, *identifiers, cost=1):
        calls.append(1)
        if len(calls) > 1:
            raise StorageError(ConnectionError("gone"))
        return real_hit(item, *identifiers, cost=cost)

    def dead_release(storage, key):
        raise StorageError(ConnectionError("gone"))

    monkeypatch.setattr(limiter.strategy, "hit", dying_hit)
    monkeypatch.setattr("issuer.ratelimit.release_entry", dead_release)
    admission = limiter.admit("alice", "192.0.2.1")
    assert admission.admitted
    assert admission.taken == []
    assert "NOT enforced" in caplog.text


# -- settings ---------------------------------------------------------------------------


def settings_problems(**env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings({f"ISSUER_{k.upper()}": v for k, v in env.items()}, path=_empty_toml())
    return str(caught.value)


def _empty_toml() -> str:
    return os.path.join(os.path.dirname(__file__), "empty.toml")


def test_rate_limit_defaults_are_the_documented_policy_in_memory():
    settings = load_settings({}, path=_empty_toml())
    assert settings.login_failures_per_user_address == "5/minute"
    assert settings.login_failures_per_address == "30/minute"
    assert settings.login_failures_per_user == "100/hour"
    assert settings.known_address_days == 30
    assert settings.rate_limit_storage == "memory://"
    assert settings.trusted_proxies == ()


def test_rate_limit_settings_are_read_from_the_environment():
    settings = load_settings(
        {
            "ISSUER_LOGIN_FAILURES_PER_USER": "10 per hour",
            "ISSUER_LOGIN_FAILURES_PER_USER_ADDRESS": "3/minute",
            "ISSUER_KNOWN_ADDRESS_DAYS": "7",
            "ISSUER_LOGIN_FAILURES_PER_ADDRESS": "100/day",
            "ISSUER_RATE_LIMIT_STORAGE": "redis://cache:6379/2",
            "ISSUER_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32",
        },
        path=_empty_toml(),
    )
    assert settings.login_failures_per_user == "10 per hour"
    assert settings.login_failures_per_user_address == "3/minute"
    assert settings.known_address_days == 7
    assert settings.login_failures_per_address == "100/day"
    assert settings.rate_limit_storage == "redis://cache:6379/2"
    assert settings.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")


@pytest.mark.parametrize(
    "bad", ["five per minute", "5/fortnight", "0/minute", "", "5/minute;9/hour"]
)
def test_invalid_limits_are_named(bad):
    problems = settings_problems(
        login_failures_per_user=bad,
        login_failures_per_address=bad,
        login_failures_per_user_address=bad,
    )
    assert "login_failures_per_user:" in problems
    assert "login_failures_per_address:" in problems
    assert "login_failures_per_user_address:" in problems


@pytest.mark.parametrize("bad", ["-1", "366", "thirty"])
def test_invalid_known_address_days_are_named(bad):
    assert "known_address_days:" in settings_problems(known_address_days=bad)


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


def test_memory_budgets_start_no_thread_per_login(monkeypatch):
    """limits' stock memory storage started a Timer thread on most hits (one per login
    at login rates); the swept one never does, and the budgets still count."""
    limiter = LoginLimiter(POLICY, "memory://")
    assert isinstance(limiter.storage, SweptMemoryStorage)
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(3):  # the (user, address) budget: 3 a minute
        admission = limiter.admit("alice", "203.0.113.7")
        assert admission.admitted
        time.sleep(0.015)  # past the stock storage's 10 ms timer: it would start another
    limiter.succeeded(admission)
    assert started == []
    assert limiter.is_known_address("alice", "203.0.113.7")


def test_swept_memory_storage_still_frees_expired_entries():
    class EverySweep(SweptMemoryStorage):
        SWEEP_INTERVAL = 0.0

    storage = EverySweep("memory://")
    storage.incr("short", 0.01)
    assert storage.acquire_entry("window", 5, 1)
    storage.events["window"][0].expiry = time.time() - 1  # that entry has left its window
    time.sleep(0.02)
    storage.incr("long", 60)  # any hit sweeps, here at once
    assert "short" not in storage.expirations
    assert "short" not in storage.storage
    assert not storage.events.get("window")  # the expired entry is gone
    assert storage.get("long") == 1
