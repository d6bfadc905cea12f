"""Two concurrent refreshes with the same token: exactly one succeeds, on SQLite and on
PostgreSQL, across workers and replicas (DESIGN.md, Tokens).

First at the store (many threads, one connection each, released together by a
barrier), then end to end: two real ``issuer serve`` replicas with two worker
processes each, sharing one database and one HS256 secret, answering the same
refresh token at once.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select, text, update

from issuer.models import RefreshRecord
from issuer.store import migrate
from issuer.store.schema import refresh_tokens
from issuer.store.sql import SqlStore, make_engine
from tests.conftest import PASSWORD, LiveServer, free_port, migrated_store

# Two of these tests start live replicas (`issuer serve`).
pytestmark = pytest.mark.e2e

THREADS = 24
ROUNDS = 4
NOW = 1_800_000_000


def run_together(count: int, attempt: Callable[[int], Any]) -> list[Any]:
    """Call ``attempt(i)`` for i in range(count), all released at once by a barrier.

    Returns each call's result, or the exception it raised.
    """
    barrier = threading.Barrier(count)

    def call(i: int) -> Any:
        barrier.wait(timeout=30)
        try:
            return attempt(i)
        except Exception as exc:  # collected: the test asserts there were none
            return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


# -- the store -----------------------------------------------------------------


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("postgresql-serializable-default", marks=pytest.mark.postgres),
    ]
)
def sql_store(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """A migrated SQL store with a connection for every thread.

    The third case runs on a PostgreSQL session whose default isolation level is
    SERIALIZABLE (as a server or role may be configured): rotation must not depend on it.
    """
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("postgres_url")
        if request.param == "postgresql-serializable-default":
            url += "%20-cdefault_transaction_isolation%3Dserializable"
    setup = make_engine(url)
    migrate.upgrade(setup)
    setup.dispose()
    store = SqlStore(make_engine(url, pool_size=THREADS))
    yield store
    store.engine.dispose()


def refresh_record(family: str, issued_at: int = NOW) -> RefreshRecord:
    return RefreshRecord(
        jti=uuid.uuid4().hex,
        family_id=family,
        user_id="user-1",
        client_id="webapp",
        scope="read",
        issued_at=issued_at,
        expires_at=issued_at + 3600,
    )


def family_size(store: SqlStore, family: str) -> int:
    with store.engine.connect() as conn:
        query = select(func.count()).where(refresh_tokens.c.family_id == family)
        return int(conn.execute(query).scalar_one())


def rotate_into(
    store: SqlStore, old_jti: str, candidates: list[RefreshRecord]
) -> Callable[[int], bool]:
    """Attempt ``i`` rotates ``old_jti`` into the ``i``-th candidate."""
    return lambda i: store.rotate(old_jti, candidates[i], NOW + 1)


def test_of_many_concurrent_rotations_of_one_token_exactly_one_wins(sql_store: SqlStore) -> None:
    for round_number in range(ROUNDS):
        family = f"family-{round_number}"
        old = refresh_record(family)
        sql_store.create(old)
        candidates = [refresh_record(family, NOW + 1) for _ in range(THREADS)]
        # Every thread holds its own connection before the race starts.
        with ThreadPoolExecutor(max_workers=THREADS) as warm:
            list(warm.map(lambda _: sql_store.ping(), range(THREADS)))

        results = run_together(THREADS, rotate_into(sql_store, old.jti, candidates))

        assert [r for r in results if not isinstance(r, bool)] == []
        assert results.count(True) == 1
        winner = candidates[results.index(True)]
        assert sql_store.get(winner.jti) == winner
        assert all(sql_store.get(c.jti) is None for c in candidates if c is not winner)
        assert family_size(sql_store, family) == 2
        spent = sql_store.get(old.jti)
        assert spent is not None and spent.spent_at == NOW + 1 and spent.revoked_at is None


def test_concurrent_rotation_and_reuse_revocation_leave_no_usable_token(
    sql_store: SqlStore,
) -> None:
    """What a leaked token's replay does: rotations race a family revocation."""
    old = refresh_record("family")
    sql_store.create(old)
    candidates = [refresh_record("family", NOW + 1) for _ in range(THREADS)]

    def attempt(i: int) -> Any:
        if i % 4 == 0:
            return sql_store.revoke_family("family", NOW + 1)
        return sql_store.rotate(old.jti, candidates[i], NOW + 1)

    results = run_together(THREADS, attempt)

    assert [r for r in results if isinstance(r, Exception)] == []
    wins = [candidates[i] for i, r in enumerate(results) if r is True]
    assert len(wins) <= 1
    assert family_size(sql_store, "family") == 1 + len(wins)
    assert sum(r for i, r in enumerate(results) if i % 4 == 0) == 1 + len(wins)
    for jti in [old.jti, *(w.jti for w in wins)]:
        record = sql_store.get(jti)
        assert record is not None and not record.is_usable


# -- real servers: replicas x workers ------------------------------------------


@dataclass
class Deployment:
    """Two replicas of one issuer, and a confidential client and user registered in it."""

    replicas: list[LiveServer]
    auth: tuple[str, str]


def deploy(factory: Callable[..., LiveServer], **settings: Any) -> Deployment:
    """Two replicas (same issuer URL, database and secret), two workers each.

    A load balancer gives replicas one public issuer URL while each listens on its own
    port: the second gets the first's ISSUER_URL and a listening port of its own. The
    user and client are added with the CLI while the servers start.
    """
    secret = secrets.token_urlsafe(48)
    first = factory(workers=2, secret_key=secret, **settings)
    settings.setdefault("database_url", first.env["ISSUER_DATABASE_URL"])
    second = factory(workers=2, secret_key=secret, url=first.url, **settings)
    second.url = f"http://127.0.0.1:{free_port()}"

    def register() -> str:
        first.cli(
            "users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD + "\n"
        )
        added = first.cli("clients", "add", "webapp").stdout
        prefix = "client_secret:"
        return next(
            line.removeprefix(prefix).strip()
            for line in added.splitlines()
            if line.startswith(prefix)
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        started = [pool.submit(server.start) for server in (first, second)]
        client_secret = pool.submit(register).result()
        for future in started:
            future.result()
    return Deployment([first, second], ("webapp", client_secret))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(
    request: pytest.FixtureRequest, live_server_factory: Callable[..., LiveServer]
) -> Deployment:
    if request.param == "sqlite":
        return deploy(live_server_factory)
    return deploy(live_server_factory, database_url=request.getfixturevalue("postgres_url"))


def refresh(base_url: str, auth: tuple[str, str], token: str) -> httpx.Response:
    return httpx.post(
        base_url + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=auth,
        timeout=60,
    )


def test_of_many_concurrent_refreshes_across_replicas_exactly_one_succeeds(
    deployment: Deployment,
) -> None:
    replicas, auth = deployment.replicas, deployment.auth
    first, second = replicas
    login = httpx.post(
        second.url + "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=auth,
        timeout=30,
    )
    assert login.status_code == 200, login.text
    token = login.json()["refresh_token"]
    clients = [
        httpx.Client(base_url=replicas[i % 2].url, auth=auth, timeout=60) for i in range(THREADS)
    ]
    for http in clients:  # connect every client first, so the race is only the requests
        assert http.get("/healthz").status_code == 200

    def attempt(i: int) -> httpx.Response:
        return clients[i].post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}
        )

    try:
        answers = run_together(THREADS, attempt)
    finally:
        for http in clients:
            http.close()

    assert [a for a in answers if not isinstance(a, httpx.Response)] == []
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [400] * (THREADS - 1), statuses
    losers = [a for a in answers if a.status_code == 400]
    assert all(a.json()["error"] == "invalid_grant" for a in losers)
    assert all(a.headers["content-type"].startswith("application/json") for a in answers)
    won = next(a.json() for a in answers if a.status_code == 200)
    assert won["refresh_token"] != token and won["token_type"] == "Bearer"

    # The race was reuse: the family is revoked, the winner's new token included.
    for server in replicas:
        again = refresh(server.url, auth, won["refresh_token"])
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    logs = first.log() + second.log()
    assert "refresh.reuse_detected" in logs
    for value in (token, won["refresh_token"], won["access_token"], auth[1], PASSWORD):
        assert value not in logs
    assert "Traceback" not in logs and '" 500 ' not in logs


@pytest.mark.postgres
def test_a_family_revoked_during_a_rotation_also_revokes_the_rotated_in_token(
    postgres_url: str,
) -> None:
    """PostgreSQL: revoking a family while one of its tokens is being rotated.

    The revocation's UPDATE waits for the rotation's row lock, but the record the
    rotation inserts is not in that statement's snapshot: it must still end up revoked,
    or a replayed token would leave its family with one usable token.
    """
    store = migrated_store(postgres_url)
    current = refresh_record("family")
    store.create(current)
    rotated_in = refresh_record("family", NOW + 1)
    rotation = store.engine.connect()
    rotation.begin()
    rotation_pid = rotation.execute(text("SELECT pg_backend_pid()")).scalar_one()
    rotation.execute(
        update(refresh_tokens).where(refresh_tokens.c.jti == current.jti).values(spent_at=NOW + 1)
    )
    rotation.execute(insert(refresh_tokens).values(**asdict(rotated_in)))

    with ThreadPoolExecutor(max_workers=1) as pool:
        revoked = pool.submit(store.revoke_family, "family", NOW + 2)
        wait_until_blocked_by(store.engine, rotation_pid)
        rotation.commit()
        rotation.close()
        assert revoked.result(timeout=30) == 2

    for jti in (current.jti, rotated_in.jti):
        record = store.get(jti)
        assert record is not None and record.revoked_at == NOW + 2
    store.engine.dispose()


def wait_until_blocked_by(engine: Engine, pid: int) -> None:
    """Return once some session waits for a lock that session ``pid`` holds."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))")
    with engine.connect() as conn:
        for _ in range(3000):
            if conn.execute(query, {"pid": pid}).scalar_one():
                return
            conn.rollback()
            time.sleep(0.01)
    raise AssertionError("the revocation never waited for the rotation's lock")
