"""The default store: SQLAlchemy 2.x Core over SQLite or PostgreSQL.

Each public method is one transaction. Refresh rotation is a compare-and-set:
``UPDATE … WHERE jti = :old AND spent_at IS NULL AND revoked_at IS NULL`` must change
exactly one row, and the new record is inserted in the same transaction, so of any
number of concurrent rotations of one token exactly one wins:

- on SQLite, because every writing transaction starts with ``BEGIN IMMEDIATE`` and so
  holds the single write lock from its first statement to its commit (see
  :func:`make_engine` for why not the driver's default);
- on PostgreSQL, because under READ COMMITTED (pinned on the engine) the row lock
  makes the losers wait, then re-check the WHERE clause against the winner's
  committed row, match nothing and change nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import (
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from issuer.errors import DuplicateError, NotFoundError
from issuer.models import (
    AuthMethod,
    Client,
    RefreshRecord,
    Role,
    Session,
    User,
    UserChange,
    canonical_username,
)
from issuer.store import prepared
from issuer.store.schema import (
    clients,
    password_resets,
    refresh_tokens,
    revoked_access_tokens,
    users,
)
from issuer.store.writerlock import WriterLock, writer_lock

SQLITE_BUSY_TIMEOUT_S = 30
_UMASK_LOCK = threading.Lock()


# Execution option read by the SQLite "begin" hook: how to open a transaction.
_SQLITE_BEGIN = "issuer_sqlite_begin"
# A read of one statement needs no transaction: SQLite runs each statement on one
# consistent snapshot. Skipping BEGIN and ROLLBACK saves two round trips per read, and a
# refresh makes three such reads (client, refresh record, user).
_ONE_STATEMENT = "ONE-STATEMENT"


def make_engine(
    database_url: str,
    pool_size: int = 5,
    *,
    connect_timeout: int = 5,
    pool_timeout: int = 10,
    statement_timeout: int = 30,
) -> Engine:
    """An engine tuned for the issuer: see the comments for SQLite and PostgreSQL.

    Every wait on the database is bounded (seconds): opening a PostgreSQL connection
    (``connect_timeout``), getting one from the pool (``pool_timeout``) and one statement
    (``statement_timeout``, 0 = none). A dead database then fails a request within
    those bounds, answered 503, not after the operating system's TCP timeout.
    """
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        # SQLite transaction control, and why the driver's default is not used:
        #
        # Python's sqlite3 (before 3.16) runs in "legacy transaction control": it sends
        # a plain (deferred) BEGIN only before INSERT/UPDATE/DELETE, never before
        # SELECT or DDL. Measured here: migrations were not atomic (each CREATE TABLE
        # committed on its own), and replicas running `issuer init` at once failed
        # with "table alembic_version already exists". And a deferred transaction
        # that reads before it writes takes the write lock only at its first write;
        # in WAL mode that upgrade fails at once with "database is locked" (the busy
        # timeout does not apply) if another connection committed in between. The
        # store's writes happened to start with their write, but nothing kept it so.
        #
        # So the driver is told to stay out of it (isolation_level=None) and
        # SQLAlchemy's "begin" hook emits BEGIN itself (_sqlite_on_begin): a deferred
        # BEGIN for reads (a consistent snapshot; WAL readers never block the writer)
        # and BEGIN IMMEDIATE for every transaction that writes (see writer()), which
        # takes the write lock up front or waits for it, up to the busy timeout.
        # Writers queue instead of failing, and each sees the latest committed data.
        #
        # WAL lets readers proceed while one writer commits; synchronous=NORMAL is
        # durable across application crashes (a power cut may lose the last commits).
        database = make_url(url).database
        in_memory = not database or database == ":memory:" or "mode=memory" in url
        # A file database gets a pool sized like PostgreSQL's; an in-memory one keeps
        # SQLAlchemy's one-connection-per-thread pool, which takes no sizes.
        sizes: dict[str, Any] = (
            {}
            if in_memory
            else {
                "pool_size": pool_size,
                "max_overflow": pool_size * 2,
                "pool_timeout": pool_timeout,
            }
        )
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            **sizes,
        )
        if not in_memory:
            event.listen(engine, "do_connect", _sqlite_connect_privately)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # PostgreSQL: the rotation compare-and-set relies on READ COMMITTED re-checking
    # the WHERE clause after a concurrent update. Under REPEATABLE READ or SERIALIZABLE
    # (which a server or role may set as default_transaction_isolation) the loser of a
    # race would instead fail with a serialization error, a 500. So pin the level.
    # hide_parameters: a failing statement's values (usernames, ids) stay out of logs.
    connect_args: dict[str, Any] = {"connect_timeout": connect_timeout}
    if statement_timeout:
        # connect_args replace the URL's own ``options`` (e.g. a search_path): keep them.
        given = make_url(url).query.get("options", "")
        options = " ".join(given) if isinstance(given, tuple) else given
        connect_args["options"] = f"{options} -c statement_timeout={statement_timeout * 1000}"
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        hide_parameters=True,
        isolation_level="READ COMMITTED",
        connect_args=connect_args,
    )
    event.listen(engine, "connect", _postgres_on_connect)
    return engine


def _postgres_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    """READ COMMITTED also for statements run in autocommit (issuer.store.prepared), which
    the engine's pinned level does not reach: it is sent with each BEGIN, and they have
    none. Without this they would run at the server's or role's default level."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
    finally:
        cursor.close()
    dbapi_connection.commit()


def writer(engine: Engine) -> Engine:
    """``engine`` for transactions that write: ``BEGIN IMMEDIATE`` on SQLite."""
    return engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


class Writers:
    """Opens the transactions that write: ``BEGIN IMMEDIATE`` on SQLite, one at a time
    per database file, across the threads of a process and across processes.

    SQLite has one write lock per database. Threads that each send ``BEGIN IMMEDIATE``
    wait for it in SQLite's busy handler, which polls with back-off sleeps (1, 2, 5 … up
    to 100 ms): measured with ``make bench`` (refresh grant, one worker), 43 % of the
    request threads' time went there and p99 was ~400 ms for 20 ms of work. So writers
    queue first on the database's :class:`issuer.store.writerlock.WriterLock` (a thread
    lock, then a ``flock`` shared by the processes: workers, replicas, the CLI) and only
    one at a time asks SQLite. The lock is re-entrant and its waits bounded by the busy
    timeout, after which the transaction asks SQLite anyway, so nothing waits longer, or
    fails otherwise, than without it. PostgreSQL: no lock.
    """

    def __init__(self, engine: Engine, runner: prepared.Runner | None = None) -> None:
        self._engine = writer(engine)
        self._runner = runner or prepared.Runner(engine)
        self._lock = _sqlite_writer_lock(engine)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A writing transaction, committed when the block ends (rolled back on error)."""
        self._runner.release_scoped()  # its own checkout: hold none meanwhile
        with self._locked(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def prepared(self) -> Iterator[prepared.Connection]:
        """:meth:`begin` for the request path's prepared statements (``issuer.store.prepared``)."""
        with self._locked(), self._runner.transaction() as conn:
            yield conn

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        with self._lock.held(SQLITE_BUSY_TIMEOUT_S):
            yield


def _sqlite_writer_lock(engine: Engine) -> WriterLock | None:
    """The process's writer lock for ``engine``'s SQLite file; None for other databases."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or "mode=memory" in str(engine.url):
        return None
    return writer_lock(database.removeprefix("file:").split("?", 1)[0])


def _sqlite_connect_privately(
    dialect: Any, _record: ConnectionPoolEntry, cargs: Any, cparams: Any
) -> Any:
    """Connect under umask 077, so a database file this creates is 0600 whatever the
    directory's mode: it holds bcrypt hashes. SQLite gives its -wal and -shm files the
    database file's mode. The umask is process-wide, hence the lock; while it is held,
    other threads creating files get stricter modes, never looser ones."""
    with _UMASK_LOCK:
        previous = os.umask(0o077)
        try:
            return dialect.connect(*cargs, **cparams)
        finally:
            os.umask(previous)


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # The driver sends no BEGIN of its own; _sqlite_on_begin does (see make_engine).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    if mode != _ONE_STATEMENT:
        conn.exec_driver_sql(f"BEGIN {mode}")


def _user(row: Mapping[Any, Any]) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        role=Role(row["role"]),
        password_hash=row["password_hash"],
        is_active=bool(row["is_active"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def _client(row: Mapping[Any, Any]) -> Client:
    return Client(
        client_id=row["client_id"],
        auth_method=AuthMethod(row["auth_method"]),
        grant_types=tuple(row["grant_types"].split()),
        scopes=tuple(row["scopes"].split()),
        secret_hash=row["secret_hash"],
        name=row["name"],
        created_at=int(row["created_at"]),
        may_introspect=bool(row["may_introspect"]),
    )


def _refresh(row: Mapping[Any, Any]) -> RefreshRecord:
    return RefreshRecord(
        jti=row["jti"],
        family_id=row["family_id"],
        user_id=row["user_id"],
        client_id=row["client_id"],
        scope=row["scope"],
        issued_at=int(row["issued_at"]),
        expires_at=int(row["expires_at"]),
        spent_at=row["spent_at"],
        revoked_at=row["revoked_at"],
        session_started_at=int(row["session_started_at"]),
        successor_jti=row["successor_jti"],
    )


class SqlStore:
    """SQLAlchemy implementation of :class:`issuer.store.base.Store`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The statements every token request runs, compiled once (issuer.store.prepared).
        self._run = prepared.Runner(engine)
        self._hot = _HotStatements(self._run)
        # Every transaction that writes goes through this: BEGIN IMMEDIATE on SQLite,
        # one thread of this process at a time (Writers).
        self._writer = Writers(engine, self._run)
        self._postgres = engine.dialect.name == "postgresql"
        # Other reads of exactly one statement (see _ONE_STATEMENT).
        self._one_read = engine.execution_options(**{_SQLITE_BEGIN: _ONE_STATEMENT})

    def request_scope(self) -> AbstractContextManager[None]:
        """One token request's statements on one pooled connection (prepared.Runner)."""
        return self._run.request_scope()

    def _core(self) -> Connection:
        """A connection for Core statements outside the request path."""
        self._run.release_scoped()  # its own checkout: hold none meanwhile
        return self.engine.connect()

    def close(self) -> None:
        """Close the pooled connections (the end of a command, an app's shutdown)."""
        self.engine.dispose()

    def _in_code_point_order(self, column: Any) -> Any:
        # PostgreSQL orders text by the database's locale (en_US sorts "bob" before
        # "Carol"); the "C" collation orders UTF-8 by code point, as SQLite and the
        # memory store do, so listings are the same on every store.
        return column.collate("C") if self._postgres else column

    # users
    def get_by_username(self, username: str) -> User | None:
        values = {"canonical": canonical_username(username)}
        row = self._run.first_mapping(self._hot.user_by_canonical, values)
        return _user(row) if row else None

    def get_by_id(self, user_id: str) -> User | None:
        row = self._run.first_mapping(self._hot.user_by_id, {"user_id": user_id})
        return _user(row) if row else None

    def add_user(self, username: str, password_hash: str, role: Role) -> User:
        now = int(time.time())
        user = User.new(username, password_hash, role, now)
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    insert(users).values(
                        id=user.id,
                        username=username,
                        username_canonical=canonical_username(username),
                        password_hash=password_hash,
                        role=role.value,
                        is_active=True,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise DuplicateError(f"user {username!r} already exists") from None
        return user

    def list_users(self) -> Sequence[User]:
        query = select(users).order_by(self._in_code_point_order(users.c.username))
        with self._core() as conn:
            rows = conn.execute(query).mappings().all()
        return [_user(r) for r in rows]

    def set_active(self, username: str, active: bool) -> User:
        return self._update_user(username, is_active=active)

    def set_password_hash(self, username: str, password_hash: str) -> User:
        return self._update_user(username, password_hash=password_hash)

    def _update_user(self, username: str, **values: Any) -> User:
        with self._writer.begin() as conn:
            return _update_user(conn, username, values)

    def upgrade_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        # No updated_at: a rehash changes how the password is stored, not the account.
        with self._writer.begin() as conn:
            result = conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .where(users.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            )
        return int(result.rowcount) == 1

    # sessions
    def start_session(self, record: RefreshRecord, user: User) -> bool:
        try:
            with self._writer.prepared() as conn:
                # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes):
                # a concurrent security event waits for this commit, then ends this
                # session too; or it committed first, and the check below fails.
                current = conn.first(self._hot.user_version_for_update, {"user_id": user.id})
                if current is None or int(current[0]) != user.updated_at:
                    return False
                conn.execute(self._hot.insert_refresh, _refresh_values(record)).close()
        except IntegrityError:
            raise DuplicateError("refresh token id already recorded") from None
        return True

    def session_revoked(self, family_id: str) -> bool:
        row = self._run.first(self._hot.session_newest_revoked_at, {"family_id": family_id})
        return row is None or row[0] is not None

    def list_sessions(self, user_id: str, now: int) -> Sequence[Session]:
        r = refresh_tokens.c
        query = (
            select(
                r.family_id,
                func.min(r.client_id).label("client_id"),
                func.min(r.session_started_at).label("started_at"),
                func.max(r.issued_at).label("refreshed_at"),
                func.max(r.expires_at).label("expires_at"),
            )
            .where(r.user_id == user_id)
            .group_by(r.family_id)
            .having(func.count(r.revoked_at) == 0)
            .having(func.max(r.expires_at) > now)
            .order_by(func.min(r.session_started_at), r.family_id)
        )
        with self._core() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Session(
                family_id=row["family_id"],
                user_id=user_id,
                client_id=row["client_id"],
                started_at=int(row["started_at"]),
                refreshed_at=int(row["refreshed_at"]),
                expires_at=int(row["expires_at"]),
            )
            for row in rows
        ]

    def end_user_sessions(self, user_id: str, now: int) -> list[str]:
        with self._writer.begin() as conn:
            return _revoke_refresh_tokens(conn, refresh_tokens.c.user_id == user_id, now)

    def change_user(self, username: str, change: UserChange, now: int) -> tuple[User, list[str]]:
        with self._writer.begin() as conn:
            if change.remove:
                row = (
                    conn.execute(
                        delete(users)
                        .where(users.c.username_canonical == canonical_username(username))
                        .returning(*users.c)
                    )
                    .mappings()
                    .first()
                )
                if row is None:
                    raise NotFoundError(f"no user {username!r}")
                user = _user(row)
                conn.execute(delete(password_resets).where(password_resets.c.user_id == user.id))
            else:
                user = _update_user(conn, username, change.values(), now)
            ended = _revoke_refresh_tokens(conn, refresh_tokens.c.user_id == user.id, now)
        return user, ended

    # password resets
    def save_reset(self, user_id: str, token_hash: str, expires_at: int, now: int) -> None:
        with self._writer.begin() as conn:
            conn.execute(delete(password_resets).where(password_resets.c.user_id == user_id))
            conn.execute(
                insert(password_resets).values(
                    user_id=user_id, token_hash=token_hash, expires_at=expires_at, created_at=now
                )
            )

    def reset_owner(self, token_hash: str, now: int) -> str | None:
        query = (
            select(password_resets.c.user_id)
            .where(password_resets.c.token_hash == token_hash)
            .where(password_resets.c.expires_at >= now)
        )
        with self._core() as conn:
            row = conn.execute(query).first()
        return str(row.user_id) if row else None

    def redeem_reset(
        self, token_hash: str, password_hash: str, now: int
    ) -> tuple[User, list[str]] | None:
        with self._writer.begin() as conn:
            # Deleting the row is the single-use compare-and-set: of concurrent
            # redemptions of one token, exactly one deletes it.
            spent = conn.execute(
                delete(password_resets)
                .where(password_resets.c.token_hash == token_hash)
                .where(password_resets.c.expires_at >= now)
                .returning(password_resets.c.user_id)
            ).first()
            if spent is None:
                return None
            row = (
                conn.execute(
                    update(users)
                    .where(users.c.id == spent.user_id)
                    .values(password_hash=password_hash, updated_at=_next_version(conn, now))
                    .returning(*users.c)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            ended = _revoke_refresh_tokens(conn, refresh_tokens.c.user_id == spent.user_id, now)
        return _user(row), ended

    # clients
    def get_client(self, client_id: str) -> Client | None:
        row = self._run.first_mapping(self._hot.client_by_id, {"client_id": client_id})
        return _client(row) if row else None

    def add_client(self, client: Client) -> Client:
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    insert(clients).values(
                        client_id=client.client_id,
                        secret_hash=client.secret_hash,
                        auth_method=client.auth_method.value,
                        grant_types=" ".join(client.grant_types),
                        scopes=" ".join(client.scopes),
                        name=client.name,
                        created_at=client.created_at,
                        may_introspect=client.may_introspect,
                    )
                )
        except IntegrityError:
            raise DuplicateError(f"client {client.client_id!r} already exists") from None
        return client

    def list_clients(self) -> Sequence[Client]:
        query = select(clients).order_by(self._in_code_point_order(clients.c.client_id))
        with self._core() as conn:
            rows = conn.execute(query).mappings().all()
        return [_client(r) for r in rows]

    def set_client_introspection(self, client_id: str, allowed: bool) -> Client:
        with self._writer.begin() as conn:
            row = (
                conn.execute(
                    update(clients)
                    .where(clients.c.client_id == client_id)
                    .values(may_introspect=allowed)
                    .returning(*clients.c)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"no client {client_id!r}")
        return _client(row)

    def remove_client(self, client_id: str) -> list[str]:
        now = int(time.time())
        with self._writer.begin() as conn:
            result = conn.execute(delete(clients).where(clients.c.client_id == client_id))
            if result.rowcount != 1:
                raise NotFoundError(f"no client {client_id!r}")
            return _revoke_refresh_tokens(conn, refresh_tokens.c.client_id == client_id, now)

    # refresh tokens
    def create(self, record: RefreshRecord) -> None:
        try:
            with self._writer.prepared() as conn:
                conn.execute(self._hot.insert_refresh, _refresh_values(record)).close()
        except IntegrityError:
            raise DuplicateError("refresh token id already recorded") from None

    def get(self, jti: str) -> RefreshRecord | None:
        row = self._run.first_mapping(self._hot.refresh_by_jti, {"jti": jti})
        return _refresh(row) if row else None

    def rotate(self, old_jti: str, new: RefreshRecord, now: int) -> bool:
        spend = {"old_jti": old_jti, "spent_now": now, "new_jti": new.jti}
        if self._hot.rotate_in_one_statement is not None:
            row = {f"row_{name}": value for name, value in _refresh_values(new).items()}
            try:
                inserted = self._run.rowcount_autocommit(
                    self._hot.rotate_in_one_statement, {**spend, **row}
                )
            except IntegrityError:
                raise DuplicateError("refresh token id already recorded") from None
            return inserted == 1
        try:
            with self._writer.prepared() as conn:
                spent = conn.execute(self._hot.spend_refresh, spend)
                changed = spent.rowcount
                spent.close()
                if changed != 1:
                    return False
                conn.execute(self._hot.insert_refresh, _refresh_values(new)).close()
        except IntegrityError:
            # The new jti is taken: the whole transaction, spending included, rolled back.
            raise DuplicateError("refresh token id already recorded") from None
        return True

    def revoke_family(self, family_id: str, now: int) -> int:
        with self._writer.begin() as conn:
            return _revoke_counting(conn, refresh_tokens.c.family_id == family_id, now)[0]

    def purge_expired_refresh(self, before: int) -> int:
        with self._writer.begin() as conn:
            result = conn.execute(
                delete(refresh_tokens).where(refresh_tokens.c.expires_at < before)
            )
        return int(result.rowcount)

    # access-token deny list
    def deny(self, jti: str, expires_at: int) -> None:
        # One upsert, so concurrent denials of one jti cannot collide; a second denial
        # can only extend the refusal (the later expiry wins), never shorten it.
        if self._postgres:
            # Imported here: a PostgreSQL engine has loaded the dialect already, while on
            # SQLite it would be most of a CLI command's start-up.
            from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: PLC0415

            pg = pg_insert(revoked_access_tokens).values(jti=jti, expires_at=expires_at)
            statement: Any = pg.on_conflict_do_update(
                index_elements=["jti"],
                set_={
                    "expires_at": func.greatest(
                        revoked_access_tokens.c.expires_at, pg.excluded.expires_at
                    )
                },
            )
        else:
            lite = sqlite_insert(revoked_access_tokens).values(jti=jti, expires_at=expires_at)
            statement = lite.on_conflict_do_update(
                index_elements=["jti"],
                # SQLite's two-argument max() is the scalar maximum, not the aggregate.
                set_={
                    "expires_at": func.max(
                        revoked_access_tokens.c.expires_at, lite.excluded.expires_at
                    )
                },
            )
        with self._writer.begin() as conn:
            conn.execute(statement)

    def is_denied(self, jti: str) -> bool:
        return self._run.first(self._hot.denied_jti, {"jti": jti}) is not None

    def purge_expired(self, now: int) -> int:
        with self._writer.begin() as conn:
            result = conn.execute(
                delete(revoked_access_tokens).where(revoked_access_tokens.c.expires_at < now)
            )
        return int(result.rowcount)

    def ping(self) -> bool:
        """Whether the database answers and holds the issuer's schema (a database that
        was dropped, or an empty one, is as unusable as one that is down)."""
        try:
            with self._core() as conn:
                conn.execute(text("SELECT version_num FROM alembic_version"))
        except SQLAlchemyError:
            return False
        return True


def _update_user(
    conn: Connection, username: str, values: dict[str, Any], now: int | None = None
) -> User:
    """Update the user with this (canonical) username in ``conn``'s transaction."""
    if "role" in values:
        values = {**values, "role": Role(values["role"]).value}
    row = (
        conn.execute(
            update(users)
            .where(users.c.username_canonical == canonical_username(username))
            .values(
                updated_at=_next_version(conn, int(time.time()) if now is None else now), **values
            )
            .returning(*users.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError(f"no user {username!r}")
    return _user(row)


def _next_version(conn: Connection, now: int) -> Any:
    """``updated_at`` for a change: ``now``, but always later than before, so a login that
    read the user can tell any change since (see ``start_session``)."""
    later = users.c.updated_at + 1
    if conn.dialect.name == "postgresql":
        return func.greatest(later, now)
    return func.max(later, now)  # SQLite's two-argument max() is the scalar maximum


def _revoke_refresh_tokens(conn: Connection, which: Any, now: int) -> list[str]:
    """Revoke every unrevoked refresh record matching ``which``; the families it ended."""
    return _revoke_counting(conn, which, now)[1]


def _revoke_counting(conn: Connection, which: Any, now: int) -> tuple[int, list[str]]:
    """Revoke every unrevoked refresh record matching ``which``: (records, sorted families).

    Repeated until a pass changes nothing. On PostgreSQL an UPDATE that waited for a
    concurrent rotation's row lock re-checks that row but cannot see the record the
    rotation inserted (it is not in the statement's snapshot), so a single pass could
    revoke a family yet leave its newest token usable. The next pass takes a fresh
    snapshot that includes it. Once a pass matches nothing, every matching record is
    revoked, those revoked here stay locked until commit, and a rotation still in
    flight waits for them, re-checks, and fails. On SQLite (one writer at a time) the
    second pass finds nothing.
    """
    statement = (
        update(refresh_tokens)
        .where(which)
        .where(refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(refresh_tokens.c.family_id)
    )
    total = 0
    families: set[str] = set()
    while changed := conn.execute(statement).scalars().all():
        total += len(changed)
        families.update(changed)
    return total, sorted(families)


def _refresh_values(record: RefreshRecord) -> dict[str, Any]:
    """A record as its row: every column of ``refresh_tokens``, by name."""
    return {
        "jti": record.jti,
        "family_id": record.family_id,
        "user_id": record.user_id,
        "client_id": record.client_id,
        "scope": record.scope,
        "issued_at": record.issued_at,
        "expires_at": record.expires_at,
        "spent_at": record.spent_at,
        "revoked_at": record.revoked_at,
        "session_started_at": record.session_started_at,
        "successor_jti": record.successor_jti,
    }


class _HotStatements:
    """The statements of the request path (token, introspection, userinfo), built from the
    schema's tables and compiled once for the engine's dialect (``issuer.store.prepared``).
    The rest of the store builds its statements per call: they are rare."""

    def __init__(self, run: prepared.Runner) -> None:
        r = refresh_tokens.c
        self.client_by_id = run.prepare(
            select(clients).where(clients.c.client_id == bindparam("client_id"))
        )
        self.user_by_id = run.prepare(select(users).where(users.c.id == bindparam("user_id")))
        self.user_by_canonical = run.prepare(
            select(users).where(users.c.username_canonical == bindparam("canonical"))
        )
        # FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes.
        self.user_version_for_update = run.prepare(
            select(users.c.updated_at).where(users.c.id == bindparam("user_id")).with_for_update()
        )
        self.refresh_by_jti = run.prepare(select(refresh_tokens).where(r.jti == bindparam("jti")))
        # Every column, bound by its name (_refresh_values).
        self.insert_refresh = run.prepare(insert(refresh_tokens))
        # The rotation's compare-and-set: changes one row, or none if already spent/revoked.
        self.spend_refresh = run.prepare(
            update(refresh_tokens)
            .where(r.jti == bindparam("old_jti"))
            .where(r.spent_at.is_(None))
            .where(r.revoked_at.is_(None))
            .values(spent_at=bindparam("spent_now"), successor_jti=bindparam("new_jti"))
        )
        # PostgreSQL: the compare-and-set and the insert as one statement (a data-modifying
        # WITH), run in autocommit: atomic on its own, one round trip instead of four
        # (BEGIN, UPDATE, INSERT, COMMIT). Under READ COMMITTED a concurrent rotation's
        # UPDATE waits for the row lock, re-checks, matches nothing, inserts nothing.
        self.rotate_in_one_statement: prepared.Prepared | None = None
        if run.dialect.name == "postgresql":
            spent = (
                update(refresh_tokens)
                .where(r.jti == bindparam("old_jti"))
                .where(r.spent_at.is_(None))
                .where(r.revoked_at.is_(None))
                .values(spent_at=bindparam("spent_now"), successor_jti=bindparam("new_jti"))
                .returning(r.jti)
                .cte("spent")
            )
            new_row = select(
                *(bindparam(f"row_{c.name}", type_=c.type) for c in refresh_tokens.c)
            ).where(exists(select(spent.c.jti)))
            self.rotate_in_one_statement = run.prepare(
                insert(refresh_tokens)
                .from_select([c.name for c in refresh_tokens.c], new_row)
                .add_cte(spent)
            )
        self.session_newest_revoked_at = run.prepare(
            select(r.revoked_at)
            .where(r.family_id == bindparam("family_id"))
            .order_by(r.issued_at.desc())
            .limit(1)
        )
        self.denied_jti = run.prepare(
            select(revoked_access_tokens.c.jti).where(
                revoked_access_tokens.c.jti == bindparam("jti")
            )
        )
