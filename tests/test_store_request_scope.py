"""A token request's store calls share one pooled connection (``Store.request_scope``),
on SQLite and PostgreSQL; nothing about the statements' effects changes, and no thread
holds one pooled connection while it waits for a second.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from issuer.models import RefreshRecord
from issuer.store import migrate
from issuer.store.memory import MemoryStore
from issuer.store.sql import SqlStore, make_engine

NOW = 1_800_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    setup = make_engine(url)
    migrate.upgrade(setup)
    setup.dispose()
    store = SqlStore(make_engine(url))
    yield store
    store.engine.dispose()


class PoolWatch:
    """Counts the engine's pool checkouts, and how many connections are out at most."""

    def __init__(self, store: SqlStore) -> None:
        self.checkouts = 0
        self.out = 0
        self.most_out = 0
        event.listen(store.engine, "checkout", self._checkout)
        event.listen(store.engine, "checkin", self._checkin)

    def _checkout(self, *_: Any) -> None:
        self.checkouts += 1
        self.out += 1
        self.most_out = max(self.most_out, self.out)

    def _checkin(self, *_: Any) -> None:
        self.out -= 1


def record(family: str, jti: str | None = None) -> RefreshRecord:
    return RefreshRecord(
        jti=jti or uuid.uuid4().hex,
        family_id=family,
        user_id="user-1",
        client_id="webapp",
        scope="read",
        issued_at=NOW,
        expires_at=NOW + 3600,
    )


def refresh_like(store: SqlStore, old: RefreshRecord, new: RefreshRecord) -> bool:
    """The store calls of a refresh grant, in its order."""
    store.get_client("webapp")
    assert store.get(old.jti) == old
    store.get_by_id("user-1")
    assert not store.is_denied(old.jti)
    return store.rotate(old.jti, new, NOW + 1)


def test_a_refresh_in_a_scope_checks_out_one_connection(sql_store: SqlStore) -> None:
    first = record("family-a")
    sql_store.create(first)
    watch = PoolWatch(sql_store)
    unscoped = record("family-a")
    assert refresh_like(sql_store, first, unscoped)
    assert watch.checkouts == 5  # one per call without a scope

    watch.checkouts = 0
    scoped = record("family-a")
    with sql_store.request_scope():
        assert refresh_like(sql_store, unscoped, scoped)
        assert watch.out == 1  # held until the scope ends
    assert watch.checkouts == 1
    assert watch.out == 0
    # The rotation committed: the spent token cannot rotate again, the new one can.
    assert not sql_store.rotate(unscoped.jti, record("family-a"), NOW + 2)
    assert sql_store.get(unscoped.jti).spent_at == NOW + 1  # type: ignore[union-attr]
    assert sql_store.rotate(scoped.jti, record("family-a"), NOW + 2)


def test_a_failed_write_in_a_scope_leaves_the_connection_usable(sql_store: SqlStore) -> None:
    first = record("family-b")
    sql_store.create(first)
    with sql_store.request_scope():
        with pytest.raises(Exception, match="already recorded"):
            sql_store.create(record("family-b", jti=first.jti))  # duplicate: rolled back
        second = record("family-b")
        assert sql_store.rotate(first.jti, second, NOW + 1)
    assert sql_store.get(second.jti) == second


def test_a_core_statement_in_a_scope_first_returns_the_scopes_connection(
    sql_store: SqlStore,
) -> None:
    """Reuse detection revokes the family with Core in its own checkout: the scope's
    connection goes back first, so a full pool cannot leave every thread waiting."""
    first = record("family-c")
    sql_store.create(first)
    watch = PoolWatch(sql_store)
    with sql_store.request_scope():
        assert sql_store.get(first.jti) == first
        assert sql_store.revoke_family("family-c", NOW + 1) == 1
        assert sql_store.get(first.jti).revoked_at == NOW + 1  # type: ignore[union-attr]
    assert watch.most_out == 1
    assert watch.out == 0
    assert watch.checkouts == 3


def test_scopes_nest_and_the_memory_store_has_one() -> None:
    store = MemoryStore()
    first = record("family-d")
    store.create(first)
    with store.request_scope(), store.request_scope():
        assert store.rotate(first.jti, record("family-d"), NOW + 1)
    assert store.get(first.jti).spent_at == NOW + 1  # type: ignore[union-attr]
