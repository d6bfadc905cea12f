"""SQLite writers of one process queue on an in-process lock, not in SQLite's busy handler.

The busy handler polls with back-off sleeps; ``make bench`` showed request threads
spending 43 % of their time there (refresh p99 ~400 ms). With the busy timeout set to
zero, any two threads of a process asking SQLite for the write lock at once make one fail
with "database is locked": so these tests see directly whether the threads still race
for it.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from issuer.models import RefreshRecord
from issuer.store import migrate
from issuer.store import sql as sql_module
from issuer.store.schema import refresh_tokens
from issuer.store.sql import SqlStore, make_engine
from issuer.store.writerlock import LOCK_SUFFIX

THREADS = 8
WRITES_EACH = 25
NOW = 1_800_000_000


def record(family: str) -> RefreshRecord:
    return RefreshRecord(
        jti=uuid.uuid4().hex,
        family_id=family,
        user_id="user-1",
        client_id="webapp",
        scope="read",
        issued_at=NOW,
        expires_at=NOW + 3600,
    )


def impatient_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> SqlStore:
    """A migrated store whose SQLite connections never wait in the busy handler."""
    with monkeypatch.context() as patch:
        patch.setattr(sql_module, "SQLITE_BUSY_TIMEOUT_S", 0)
        engine = make_engine(f"sqlite:///{path}", pool_size=THREADS)
    migrate.upgrade(engine)
    return SqlStore(engine)


def test_concurrent_writers_of_one_process_never_meet_in_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = impatient_store(tmp_path / "issuer.db", monkeypatch)
    barrier = threading.Barrier(THREADS)

    def write(i: int) -> None:
        barrier.wait(timeout=30)
        for _ in range(WRITES_EACH):
            store.create(record(f"fam-{i}"))

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for future in [pool.submit(write, i) for i in range(THREADS)]:
            future.result()  # "database is locked" here if two threads asked SQLite at once

    with store.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(refresh_tokens)).scalar_one()
    assert count == THREADS * WRITES_EACH


def test_two_stores_on_one_file_share_the_writer_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = impatient_store(tmp_path / "issuer.db", monkeypatch)
    second = impatient_store(tmp_path / "issuer.db", monkeypatch)
    barrier = threading.Barrier(2)

    def write(store: SqlStore, family: str) -> None:
        barrier.wait(timeout=30)
        for _ in range(WRITES_EACH):
            store.create(record(family))

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(write, first, "a"), pool.submit(write, second, "b")]
        for future in futures:
            future.result()


_KEPT_OPEN: list[SqlStore] = []


def _write_from_another_process(path: str, family: str, start: float) -> int:
    """A worker process: WRITES_EACH inserts through a store whose SQLite never waits."""
    patience = sql_module.SQLITE_BUSY_TIMEOUT_S
    sql_module.SQLITE_BUSY_TIMEOUT_S = 0  # SQLite's busy timeout only: the locks still wait
    engine = make_engine(f"sqlite:///{path}")
    sql_module.SQLITE_BUSY_TIMEOUT_S = patience
    store = SqlStore(engine)
    assert store.get("nothing") is None  # connect (PRAGMAs) before the race starts
    while time.time() < start:  # both processes start writing at once
        time.sleep(0.001)
    for _ in range(WRITES_EACH * 4):
        store.create(record(family))  # "database is locked" here if the processes met
    # Not closed here: the last connection to close checkpoints the WAL, outside any
    # writer's lock, and the other process, whose SQLite never waits, would see that.
    # The pool's processes exit (and close it) once both have returned.
    _KEPT_OPEN.append(store)
    return WRITES_EACH * 4


def test_writers_of_two_processes_queue_on_the_file_lock_not_in_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers (processes) writing at once never meet in SQLite's busy handler: they
    queue on the flock of ``<database>-writer.lock`` (issuer.store.writerlock)."""
    path = tmp_path / "issuer.db"
    impatient_store(path, monkeypatch).close()
    start = time.time() + 2
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [pool.submit(_write_from_another_process, str(path), f, start) for f in "ab"]
        assert [future.result(timeout=120) for future in futures] == [WRITES_EACH * 4] * 2
    lock_file = tmp_path / ("issuer.db" + LOCK_SUFFIX)
    assert lock_file.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_releases_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = impatient_store(tmp_path / "issuer.db", monkeypatch)
    taken = record("fam")
    store.create(taken)
    with pytest.raises(Exception, match="already recorded"):
        store.create(taken)
    # Another thread can still write: the failed transaction gave the lock back.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(store.create, record("fam")).result(timeout=30)


def test_in_memory_and_postgresql_engines_take_no_process_lock() -> None:
    assert sql_module._sqlite_writer_lock(make_engine("sqlite://")) is None
    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    assert sql_module._sqlite_writer_lock(engine) is None


def test_one_statement_reads_send_no_begin_and_writes_begin_immediate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh reads the client, the refresh record and the user: one statement each,
    with no BEGIN/ROLLBACK around them (SQLite runs a statement on one snapshot). What
    SQLite itself is asked is traced: the request path's statements bypass SQLAlchemy's
    execution events (issuer.store.prepared)."""
    store = impatient_store(tmp_path / "issuer.db", monkeypatch)
    store.engine.dispose()  # new connections, each traced from its first statement
    statements: list[str] = []
    event.listen(
        store.engine,
        "connect",
        lambda dbapi_connection, _record: dbapi_connection.set_trace_callback(
            lambda statement: statements.append(" ".join(statement.split()[:2]))
        ),
    )
    kept = record("fam")
    store.create(kept)
    assert store.get(kept.jti) == kept
    assert store.get_client("nobody") is None
    assert store.get_by_id("nobody") is None
    assert not store.is_denied("nobody")
    assert [s.split()[0] for s in statements] == [
        "BEGIN",
        "INSERT",
        "COMMIT",
        "SELECT",
        "SELECT",
        "SELECT",
        "SELECT",
    ]
    assert statements[0] == "BEGIN IMMEDIATE"
