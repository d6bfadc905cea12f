"""The default store: SQLAlchemy 2.x Core over SQLite or PostgreSQL.

Each public method is one transaction (``engine.begin()``). Refresh rotation is a
compare-and-set: ``UPDATE … WHERE jti = :old AND spent_at IS NULL AND revoked_at IS
NULL`` must change exactly one row, and the new record is inserted in the same
transaction, so of any number of concurrent rotations of one token exactly one wins,
on SQLite (a single writer at a time) and on PostgreSQL (the row lock makes the
losers re-check the WHERE clause after the winner commits).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from issuer.errors import DuplicateError, NotFoundError
from issuer.models import AuthMethod, Client, RefreshRecord, Role, User
from issuer.store.schema import clients, refresh_tokens, revoked_access_tokens, users

SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(database_url: str, pool_size: int = 5) -> Engine:
    """An engine tuned for the issuer: WAL + busy timeout on SQLite, pre-ping on PostgreSQL."""
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    # hide_parameters: a failing statement's values (usernames, ids) stay out of logs.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


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
        user = User(
            id=str(uuid.uuid4()),
            username=username,
            role=role,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
        )
        try:
            with self.engine.begin() as conn:
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
        with self.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.username)).mappings().all()
        return [_user(r) for r in rows]

    def set_active(self, username: str, active: bool) -> User:
        return self._update_user(username, is_active=active)

    def set_password_hash(self, username: str, password_hash: str) -> User:
        return self._update_user(username, password_hash=password_hash)

    def _update_user(self, username: str, **values: Any) -> User:
        with self.engine.begin() as conn:
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
            with self.engine.begin() as conn:
                conn.execute(
                    insert(clients).values(
                        client_id=client.client_id,
                        secret_hash=client.secret_hash,
                        auth_method=client.auth_method.value,
                        grant_types=" ".join(client.grant_types),
                        scopes=" ".join(client.scopes),
                        name=client.name,
                        created_at=client.created_at,
                    )
                )
        except IntegrityError:
            raise DuplicateError(f"client {client.client_id!r} already exists") from None
        return client

    def list_clients(self) -> Sequence[Client]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(clients).order_by(clients.c.client_id)).mappings().all()
        return [_client(r) for r in rows]

    def remove_client(self, client_id: str) -> None:
        now = int(time.time())
        with self.engine.begin() as conn:
            result = conn.execute(delete(clients).where(clients.c.client_id == client_id))
            if result.rowcount != 1:
                raise NotFoundError(f"no client {client_id!r}")
            conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.client_id == client_id)
                .where(refresh_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )

    # refresh tokens
    def create(self, record: RefreshRecord) -> None:
        try:
            with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
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
        return True

    def revoke_family(self, family_id: str, now: int) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.family_id == family_id)
                .where(refresh_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return int(result.rowcount)

    # access-token deny list
    def deny(self, jti: str, expires_at: int) -> None:
        insert_fn = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = (
            insert_fn(revoked_access_tokens)
            .values(jti=jti, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=["jti"])
        )
        with self.engine.begin() as conn:
            conn.execute(statement)

    def is_denied(self, jti: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(revoked_access_tokens.c.jti).where(revoked_access_tokens.c.jti == jti)
            ).first()
        return row is not None

    def purge_expired(self, now: int) -> int:
        with self.engine.begin() as conn:
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
