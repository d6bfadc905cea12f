"""Failed-login throttling over HTTP: places taken before bcrypt (so concurrency gains an
attacker nothing), budgets per (user, address), per address and per user with known
addresses exempt (so an attacker cannot lock the owner out), shared through Redis by
replicas, open when Redis is down; trusted proxies."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import pytest
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components
from issuer.http.addresses import client_address, parse_networks
from issuer.store import migrate
from issuer.store.sql import SqlStore, make_engine
from tests.conftest import PASSWORD, add_client, add_user, login
from tests.test_ratelimit import REDIS_URL, UNREACHABLE_REDIS, fresh_redis_namespace

TOKEN = "/oauth/token"
WRONG = "wrong-pw"
BLOCKED = {
    "error": "too_many_requests",
    "error_description": "Too many failed login attempts; retry later.",
}


class Issuer:
    """One app instance (a replica) over a migrated database, reached from any address."""

    def __init__(self, settings, store_ready: bool = False) -> None:
        self.settings = settings
        if not store_ready:
            migrate.upgrade(make_engine(settings.database_url))
        self.parts = build_components(settings)
        self.app = create_app(components=self.parts)
        self.clients: list[TestClient] = []

    def setup_accounts(self) -> tuple[str, str]:
        store = SqlStore(self.parts.store.engine)
        for name in ("alice", "bob", "carol", "dave", "erin"):
            add_user(store, name)
        secret = add_client(store, "webapp")
        assert secret is not None
        return "webapp", secret

    def http(self, address: str = "192.0.2.1") -> TestClient:
        client = TestClient(self.app, base_url=self.settings.url, client=(address, 40000))
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.parts.close()


@pytest.fixture
def issuer_factory(make_settings):
    made: list[Issuer] = []

    def factory(store_ready: bool = False, **overrides) -> Issuer:
        overrides.setdefault("login_failures_per_user_address", "3/minute")
        overrides.setdefault("login_failures_per_address", "30/minute")
        overrides.setdefault("login_failures_per_user", "100/hour")
        issuer = Issuer(make_settings(**overrides), store_ready)
        made.append(issuer)
        return issuer

    yield factory
    for issuer in made:
        issuer.close()


@pytest.fixture
def redis_namespace():
    yield from fresh_redis_namespace()


@pytest.fixture
def bcrypt_calls(monkeypatch) -> list[int]:
    """Counts bcrypt.checkpw calls (the real function still runs, a little slower: the
    pause widens the window in which concurrent attempts overlap, as cost 12 would)."""
    calls: list[int] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(1)
        time.sleep(0.02)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def assert_blocked(response, within: int = 60) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == BLOCKED
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert 1 <= int(response.headers["retry-after"]) <= within


def test_the_failure_after_the_pairs_budget_gets_429_and_spends_no_bcrypt(
    issuer_factory, bcrypt_calls
):
    issuer = issuer_factory()
    auth = issuer.setup_accounts()
    http = issuer.http("192.0.2.1")
    for _ in range(3):
        assert login(http, auth, "alice", WRONG).json()["error"] == "invalid_grant"
    assert len(bcrypt_calls) == 3
    assert_blocked(login(http, auth, "alice", WRONG))
    assert_blocked(login(http, auth, "alice", PASSWORD))
    assert len(bcrypt_calls) == 3


# -- Why: 45 parallel wrong passwords were 42 bcrypt checks -------------------------------


@pytest.fixture(params=["memory", "redis"])
def storage_overrides(request) -> dict[str, str]:
    if request.param == "memory":
        return {}
    namespace = request.getfixturevalue("redis_namespace")
    return {"rate_limit_storage": REDIS_URL, "rate_limit_key_prefix": namespace}


def test_concurrent_wrong_passwords_get_no_more_bcrypt_checks_than_sequential_ones(
    issuer_factory, bcrypt_calls, storage_overrides
):
    issuer = issuer_factory(login_failures_per_user_address="5/minute", **storage_overrides)
    auth = issuer.setup_accounts()
    http = issuer.http("203.0.113.66")
    attempts = 45
    barrier = threading.Barrier(attempts)

    def attempt(_: int) -> int:
        barrier.wait()
        return login(http, auth, "alice", WRONG).status_code

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        statuses = list(pool.map(attempt, range(attempts)))
    assert statuses.count(400) == 5, statuses
    assert statuses.count(429) == attempts - 5, statuses
    assert len(bcrypt_calls) == 5


# -- Why: an attacker could lock any user out ---------------------------------------------


def test_an_attacker_at_one_address_cannot_lock_the_owner_out(issuer_factory, bcrypt_calls):
    issuer = issuer_factory()
    auth = issuer.setup_accounts()
    home = issuer.http("198.51.100.7")
    assert login(home, auth, "alice", PASSWORD).status_code == 200
    attacker = issuer.http("203.0.113.66")
    statuses = [login(attacker, auth, "alice", WRONG).status_code for _ in range(30)]
    assert statuses == [400] * 3 + [429] * 27
    assert len(bcrypt_calls) == 1 + 3
    # The owner, at home and from a new address: the attacker throttled only himself.
    for _ in range(11):
        assert login(home, auth, "alice", PASSWORD).status_code == 200
    assert login(issuer.http("192.0.2.50"), auth, "alice", PASSWORD).status_code == 200


def test_a_distributed_attack_slows_strangers_but_not_the_owner_at_a_known_address(
    issuer_factory,
):
    issuer = issuer_factory(login_failures_per_user="20/hour")
    auth = issuer.setup_accounts()
    home = issuer.http("198.51.100.7")
    assert login(home, auth, "alice", PASSWORD).status_code == 200
    statuses = [
        login(issuer.http(f"203.0.113.{bot}"), auth, "alice", WRONG).status_code
        for bot in range(1, 11)
        for _ in range(3)
    ]
    assert statuses.count(400) == 20  # the per-user ceiling, across the ten addresses
    assert statuses.count(429) == 10
    assert login(home, auth, "alice", PASSWORD).status_code == 200
    assert_blocked(login(issuer.http("192.0.2.50"), auth, "alice", PASSWORD), within=3600)
    assert login(issuer.http("192.0.2.50"), auth, "bob", PASSWORD).status_code == 200


def test_a_sprayer_at_one_address_is_stopped_by_the_address_budget(issuer_factory, bcrypt_calls):
    issuer = issuer_factory(login_failures_per_address="30/minute")
    auth = issuer.setup_accounts()
    sprayer = issuer.http("203.0.113.66")
    statuses = [login(sprayer, auth, f"user{n}", "Summer2026!").status_code for n in range(50)]
    assert statuses == [400] * 30 + [429] * 20
    assert len(bcrypt_calls) == 30
    assert login(issuer.http("203.0.113.67"), auth, "alice", PASSWORD).status_code == 200


def test_successful_logins_behind_one_address_spend_no_failure_budget(issuer_factory):
    issuer = issuer_factory(login_failures_per_address="2/minute")
    auth = issuer.setup_accounts()
    office = issuer.http("192.0.2.1")
    for _ in range(2):
        for name in ("alice", "bob", "carol", "dave", "erin"):
            assert login(office, auth, name, PASSWORD).status_code == 200
    assert login(office, auth, "alice", WRONG).status_code == 400
    assert login(office, auth, "alice", PASSWORD).status_code == 200


def test_the_addresss_budget_holds_across_usernames(issuer_factory, bcrypt_calls):
    issuer = issuer_factory(login_failures_per_address="4/minute")
    auth = issuer.setup_accounts()
    attacker = issuer.http("203.0.113.66")
    for name in ("alice", "bob", "carol", "dave"):
        assert login(attacker, auth, name, WRONG).json()["error"] == "invalid_grant"
    assert_blocked(login(attacker, auth, "erin", PASSWORD))
    assert len(bcrypt_calls) == 4
    assert login(issuer.http("203.0.113.67"), auth, "erin", PASSWORD).status_code == 200


def test_a_successful_login_resets_its_pairs_count(issuer_factory):
    issuer = issuer_factory()
    auth = issuer.setup_accounts()
    http = issuer.http()
    for _ in range(2):
        login(http, auth, "alice", WRONG)
    assert login(http, auth, "alice", PASSWORD).status_code == 200
    for _ in range(2):
        assert login(http, auth, "alice", WRONG).json()["error"] == "invalid_grant"
    assert login(http, auth, "alice", PASSWORD).status_code == 200


def test_client_authentication_and_malformed_requests_are_not_counted(issuer_factory):
    issuer = issuer_factory(
        login_failures_per_user_address="1/minute",
        login_failures_per_user="1/minute",
        login_failures_per_address="1/minute",
    )
    client_id, secret = issuer.setup_accounts()
    http = issuer.http()
    for _ in range(3):
        assert login(http, (client_id, "wrong-secret"), "alice", WRONG).status_code == 401
        missing = http.post(
            TOKEN, data={"grant_type": "password", "username": "alice"}, auth=(client_id, secret)
        )
        assert missing.json()["error"] == "invalid_request"
        bad_scope = http.post(
            TOKEN,
            data={"grant_type": "password", "username": "alice", "password": "x", "scope": "admin"},
            auth=(client_id, secret),
        )
        assert bad_scope.json()["error"] == "invalid_scope"
    assert login(http, (client_id, secret), "alice", PASSWORD).status_code == 200


def test_refresh_grants_are_not_limited(issuer_factory):
    issuer = issuer_factory(
        login_failures_per_user="1/minute", login_failures_per_address="1/minute"
    )
    auth = issuer.setup_accounts()
    http = issuer.http()
    refresh = login(http, auth, "alice", PASSWORD).json()["refresh_token"]
    assert login(http, auth, "alice", WRONG).status_code == 400
    assert_blocked(login(http, auth, "bob", WRONG))
    for _ in range(3):
        response = http.post(
            TOKEN, data={"grant_type": "refresh_token", "refresh_token": refresh}, auth=auth
        )
        assert response.status_code == 200, response.text
        refresh = response.json()["refresh_token"]


def test_failed_login_audit_lines_name_the_canonical_user_or_a_keyed_hash(issuer_factory, caplog):
    issuer = issuer_factory()
    auth = issuer.setup_accounts()
    http = issuer.http("203.0.113.66")
    caplog.set_level(logging.INFO, logger="issuer.audit")
    login(http, auth, "alice", WRONG)
    login(http, auth, "Correct-Horse-9!", WRONG)  # a password typed into the username field
    lines = [r.getMessage() for r in caplog.records if r.name == "issuer.audit"]
    alice = issuer.parts.store.get_by_username("alice")
    assert lines[0] == (
        f"login.failed user_id={alice.id} username=alice client_id=webapp "
        "address=203.0.113.66 reason=invalid_credentials"
    )
    pseudonym = issuer.parts.limiter.pseudonym("Correct-Horse-9!")
    assert lines[1] == (
        f"login.failed user_hash={pseudonym} client_id=webapp address=203.0.113.66 "
        "reason=invalid_credentials"
    )
    assert "Correct-Horse" not in caplog.text


# -- X-Forwarded-For ---------------------------------------------------------------------


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(issuer_factory):
    issuer = issuer_factory(login_failures_per_address="2/minute", trusted_proxies="10.0.0.0/8")
    auth = issuer.setup_accounts()
    attacker = issuer.http("203.0.113.66")
    for name, spoofed in (("alice", "1.1.1.1"), ("bob", "2.2.2.2")):
        response = attacker.post(
            TOKEN,
            data={"grant_type": "password", "username": name, "password": "wrong-pw"},
            auth=auth,
            headers={"X-Forwarded-For": spoofed},
        )
        assert response.status_code == 400
    rotated = attacker.post(
        TOKEN,
        data={"grant_type": "password", "username": "carol", "password": PASSWORD},
        auth=auth,
        headers={"X-Forwarded-For": "3.3.3.3"},
    )
    assert_blocked(rotated)


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(issuer_factory):
    issuer = issuer_factory(login_failures_per_address="2/minute", trusted_proxies="10.0.0.0/8")
    auth = issuer.setup_accounts()
    proxy = issuer.http("10.0.0.1")

    def via_proxy(name: str, forwarded: str, password: str = WRONG):
        return proxy.post(
            TOKEN,
            data={"grant_type": "password", "username": name, "password": password},
            auth=auth,
            headers={"X-Forwarded-For": forwarded},
        )

    # The client spoofs a left-most entry; the proxy appends the real peer.
    assert via_proxy("alice", "6.6.6.6, 198.51.100.7").status_code == 400
    assert via_proxy("bob", "7.7.7.7, 198.51.100.7, 10.1.2.3").status_code == 400
    assert_blocked(via_proxy("carol", "8.8.8.8, 198.51.100.7", PASSWORD))
    # Another client behind the same proxy is unaffected: the proxy itself is not blocked.
    assert via_proxy("carol", "198.51.100.8", PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.7, 10.9.9.9"], "198.51.100.7"),
        ("10.0.0.1", ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),
        ("10.0.0.1", ["6.6.6.6, not-an-ip"], "10.0.0.1"),
        ("10.0.0.1", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),
        ("::ffff:10.0.0.1", ["2001:db8::5"], "2001:db8::5"),
        ("testclient", ["198.51.100.7"], "testclient"),
    ],
)
def test_client_address_believes_only_trusted_proxies(peer, header, expected):
    trusted = parse_networks(["10.0.0.0/8"])
    assert client_address(peer, header, trusted) == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("10.0.0.1", ["198.51.100.7"], ()) == "10.0.0.1"
    assert parse_networks(["192.0.2.1"]) == (ipaddress.ip_network("192.0.2.1/32"),)


# -- Redis: replicas, and an outage ---------------------------------------------------------


def test_two_replicas_sharing_redis_share_the_counts(issuer_factory, redis_namespace):
    shared = {
        "rate_limit_storage": REDIS_URL,
        "rate_limit_key_prefix": redis_namespace,
        "login_failures_per_user": "5/hour",
    }
    replica_a = issuer_factory(**shared)
    auth = replica_a.setup_accounts()
    replica_b = issuer_factory(store_ready=True, **shared)
    assert login(replica_b.http("198.51.100.7"), auth, "alice", PASSWORD).status_code == 200
    login(replica_a.http("192.0.2.1"), auth, "alice", WRONG)
    login(replica_b.http("192.0.2.1"), auth, "alice", WRONG)
    login(replica_a.http("192.0.2.1"), auth, "alice", WRONG)
    assert_blocked(login(replica_b.http("192.0.2.1"), auth, "alice", PASSWORD))
    login(replica_a.http("192.0.2.2"), auth, "alice", WRONG)
    login(replica_b.http("192.0.2.3"), auth, "alice", WRONG)
    assert_blocked(login(replica_a.http("192.0.2.4"), auth, "alice", PASSWORD), within=3600)
    # The address replica B saw alice log in from is known to replica A too.
    assert login(replica_a.http("198.51.100.7"), auth, "alice", PASSWORD).status_code == 200
    assert login(replica_b.http("192.0.2.4"), auth, "bob", PASSWORD).status_code == 200


def test_logins_work_when_the_rate_limit_storage_is_down(issuer_factory, caplog):
    issuer = issuer_factory(rate_limit_storage=UNREACHABLE_REDIS)
    auth = issuer.setup_accounts()
    http = issuer.http()
    for _ in range(5):
        assert login(http, auth, "alice", WRONG).json()["error"] == "invalid_grant"
    response = login(http, auth, "alice", PASSWORD)
    assert response.status_code == 200, response.text
    assert "login limits are NOT enforced" in caplog.text
