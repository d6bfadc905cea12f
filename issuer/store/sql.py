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

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from issuer.errors import DuplicateError, NotFoundError
from issuer.models import AuthMethod, Client, RefreshRecord, Role, User
from issuer.store.schema import clients, refresh_tokens, revoked_access_tokens, users

SQLITE_BUSY_TIMEOUT_S = 30

# Execution option read by the SQLite "begin" hook: how to open a transaction.
_SQLITE_BEGIN = "issuer_sqlite_begin"


def make_engine(database_url: str, pool_size: int = 5) -> Engine:
    """An engine tuned for the issuer: see the comments for SQLite and PostgreSQL."""
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
        sizes = {} if in_memory else {"pool_size": pool_size, "max_overflow": pool_size * 2}
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            **sizes,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # PostgreSQL: the rotation compare-and-set relies on READ COMMITTED re-checking
    # the WHERE clause after a concurrent update. Under REPEATABLE READ or SERIALIZABLE
    # (which a server or role may set as default_transaction_isolation) the loser of a
    # race would instead fail with a serialization error, a 500. So pin the level.
    # hide_parameters: a failing statement's values (usernames, ids) stay out of logs.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
        isolation_level="READ COMMITTED",
    )


def writer(engine: Engine) -> Engine:
    """``engine`` for transactions that write: ``BEGIN IMMEDIATE`` on SQLite."""
    return engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


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
    conn.exec_driver_sql(f"BEGIN {mode}")


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        role=Role(row["role"]),
        password_hash=row["password_hash"],
        is_active=bool(row["is_active"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def _client(row: RowMapping) -> Client:
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


def _refresh(row: RowMapping) -> RefreshRecord:
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
    )


class SqlStore:
    """SQLAlchemy implementation of :class:`issuer.store.base.Store`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Every transaction that writes goes through this: BEGIN IMMEDIATE on SQLite.
        self._writer = writer(engine)
        self._postgres = engine.dialect.name == "postgresql"

    def _in_code_point_order(self, column: Any) -> Any:
        # PostgreSQL orders text by the database's locale (en_US sorts "bob" before
        # "Carol"); the "C" collation orders UTF-8 by code point, as SQLite and the
        # memory store do, so listings are the same on every store.
        return column.collate("C") if self._postgres else column

    # users
    def get_by_username(self, username: str) -> User | None:
        return self._one_user(users.c.username == username)

    def get_by_id(self, user_id: str) -> User | None:
        return self._one_user(users.c.id == user_id)

    def _one_user(self, condition: Any) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(condition)).mappings().first()
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
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_user(r) for r in rows]

    def set_active(self, username: str, active: bool) -> User:
        return self._update_user(username, is_active=active)

    def set_password_hash(self, username: str, password_hash: str) -> User:
        return self._update_user(username, password_hash=password_hash)

    def _update_user(self, username: str, **values: Any) -> User:
        with self._writer.begin() as conn:
            row = (
                conn.execute(
                    update(users)
                    .where(users.c.username == username)
                    .values(updated_at=int(time.time()), **values)
                    .returning(*users.c)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"no user {username!r}")
        return _user(row)

    # clients
    def get_client(self, client_id: str) -> Client | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(clients).where(clients.c.client_id == client_id))
                .mappings()
                .first()
            )
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
        with self.engine.connect() as conn:
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

    def remove_client(self, client_id: str) -> None:
        now = int(time.time())
        with self._writer.begin() as conn:
            result = conn.execute(delete(clients).where(clients.c.client_id == client_id))
            if result.rowcount != 1:
                raise NotFoundError(f"no client {client_id!r}")
            _revoke_refresh_tokens(conn, refresh_tokens.c.client_id == client_id, now)

    # refresh tokens
    def create(self, record: RefreshRecord) -> None:
        try:
            with self._writer.begin() as conn:
                _insert_refresh(conn, record)
        except IntegrityError:
            raise DuplicateError("refresh token id already recorded") from None

    def get(self, jti: str) -> RefreshRecord | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(refresh_tokens).where(refresh_tokens.c.jti == jti))
                .mappings()
                .first()
            )
        return _refresh(row) if row else None

    def rotate(self, old_jti: str, new: RefreshRecord, now: int) -> bool:
        try:
            with self._writer.begin() as conn:
                spent = conn.execute(
                    update(refresh_tokens)
                    .where(refresh_tokens.c.jti == old_jti)
                    .where(refresh_tokens.c.spent_at.is_(None))
                    .where(refresh_tokens.c.revoked_at.is_(None))
                    .values(spent_at=now)
                )
                if spent.rowcount != 1:
                    return False
                _insert_refresh(conn, new)
        except IntegrityError:
            # The new jti is taken: the whole transaction, spending included, rolled back.
            raise DuplicateError("refresh token id already recorded") from None
        return True

    def revoke_family(self, family_id: str, now: int) -> int:
        with self._writer.begin() as conn:
            return _revoke_refresh_tokens(conn, refresh_tokens.c.family_id == family_id, now)

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
        with self.engine.connect() as conn:
            row = conn.execute(
                select(revoked_access_tokens.c.jti).where(revoked_access_tokens.c.jti == jti)
            ).first()
        return row is not None

    def purge_expired(self, now: int) -> int:
        with self._writer.begin() as conn:
            result = conn.execute(
                delete(revoked_access_tokens).where(revoked_access_tokens.c.expires_at < now)
            )
        return int(result.rowcount)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True


def _revoke_refresh_tokens(conn: Connection, which: Any, now: int) -> int:
    """Revoke every unrevoked refresh record matching ``which``; how many it revoked.

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
    )
    total = 0
    while changed := int(conn.execute(statement).rowcount):
        total += changed
    return total


def _insert_refresh(conn: Connection, record: RefreshRecord) -> None:
    conn.execute(
        insert(refresh_tokens).values(
            jti=record.jti,
            family_id=record.family_id,
            user_id=record.user_id,
            client_id=record.client_id,
            scope=record.scope,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
            spent_at=record.spent_at,
            revoked_at=record.revoked_at,
        )
    )
