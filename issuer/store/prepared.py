"""The request path's statements: Core statements compiled once, run on the pooled DBAPI
connection.

Why: measured on the refresh grant (``make bench``, issue 13), SQLAlchemy's
``Connection.execute`` costs ~60 µs of Python per statement (execution context, result
metadata, events) and building the Core statement ~90 µs more, while the statement
itself takes ~6 µs in SQLite: reading a client took 175 µs, 17 µs this way. A refresh
runs five statements. So the few statements every token request runs are built here
once, from the same :mod:`issuer.store.schema` tables, compiled by the engine's own
dialect (its SQL and parameter style), and sent straight to the DBAPI cursor of a
connection from the engine's pool (its ``connect`` hooks, pre-ping and timeouts apply).

What SQLAlchemy would otherwise do on the way is kept: a DBAPI error is raised as
SQLAlchemy's own exception (``IntegrityError`` for a duplicate key, parameters hidden),
and a connection the dialect says is lost is invalidated so the pool replaces it.
Every other statement of the store stays ordinary Core (:mod:`issuer.store.sql`).

A token request runs its statements on one connection (:meth:`Runner.request_scope`):
a refresh reads the client, the refresh record and the user, then rotates, and each
pool checkout costs Python (the pool's events, its reset on return: ~50 µs) and, on
PostgreSQL, a pre-ping round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Row = tuple[Any, ...]


class Prepared:
    """One Core statement compiled for one dialect: its SQL, and how to pass its values."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = str(compiled)
        # qmark/numeric styles (SQLite) take a sequence in this order; pyformat (psycopg)
        # takes the mapping itself.
        self._order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None
        )
        # Values the statement carries itself (LIMIT 1 is a bound parameter, for one).
        self._defaults = {
            name: value
            for name, value in compiled.construct_params(_check=False).items()
            if value is not None
        }
        # The names of the result's columns, for first_mapping().
        self.columns: tuple[str, ...] = tuple(
            str(column.key) for column in getattr(statement, "selected_columns", ())
        )
        # The dialect's conversions of Python values (none for the strings and integers
        # the request path binds, but kept so a new column type cannot slip through).
        self._processors: dict[str, Any] = {
            name: process
            for name, process in compiled._bind_processors.items()
            if name in compiled.binds
        }

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self._defaults:
            values = {**self._defaults, **values}
        if self._processors:
            values = {
                name: self._processors[name](value) if name in self._processors else value
                for name, value in values.items()
            }
        if self._order is None:
            return values
        return tuple(values[name] for name in self._order)


class Runner:
    """Runs :class:`Prepared` statements on connections from ``engine``'s pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.sqlite = engine.dialect.name == "sqlite"
        # Per thread: the open request scope's connection (see request_scope).
        self._scope = threading.local()

    def prepare(self, statement: ClauseElement) -> Prepared:
        return Prepared(statement, self.dialect)

    @contextmanager
    def request_scope(self) -> Iterator[None]:
        """Within the block, this thread's statements share one pooled connection,
        checked out at the first statement and returned when the block ends.

        Nothing is held between statements: reads run outside any transaction (or in
        autocommit) and each :meth:`transaction` commits or rolls back, so sharing the
        connection changes no statement's snapshot or locks. Nested scopes are one.
        """
        if getattr(self._scope, "open", False):
            yield
            return
        self._scope.open = True
        try:
            yield
        finally:
            self._scope.open = False
            self.release_scoped()

    def release_scoped(self) -> None:
        """Return the scope's connection to the pool now (the next statement of the
        scope checks out another). Called before a checkout of the engine's own
        (:mod:`issuer.store.sql`'s Core statements), so no thread ever holds one pooled
        connection while it waits for a second: a full pool could not free itself."""
        held: Connection | None = getattr(self._scope, "connection", None)
        self._scope.connection = None
        if held is not None:
            held.pooled.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection, returned to the pool (rolled back) when the block ends;
        inside a request scope, the scope's (returned when the scope ends)."""
        if getattr(self._scope, "open", False):
            held: Connection | None = getattr(self._scope, "connection", None)
            if held is None or held.pooled.dbapi_connection is None:  # none yet, or lost
                self.release_scoped()
                held = Connection(self.engine.raw_connection(), self.dialect)
                self._scope.connection = held
            yield held
            return
        pooled = self.engine.raw_connection()
        try:
            yield Connection(pooled, self.dialect)
        finally:
            pooled.close()

    def first_mapping(self, prepared: Prepared, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """:meth:`first` as a mapping of the selected columns' names to values."""
        row = self.first(prepared, values)
        return dict(zip(prepared.columns, row, strict=True)) if row is not None else None

    def first(self, prepared: Prepared, values: Mapping[str, Any]) -> Row | None:
        """The first row of a one-statement read, outside any explicit transaction.

        SQLite runs one statement on one consistent snapshot, so it needs no BEGIN.
        PostgreSQL too (READ COMMITTED: a statement's own snapshot), so the read runs in
        autocommit: no transaction is left open for the pool's reset to roll back, one
        round trip instead of two.
        """
        with self.connection() as conn:
            if self.sqlite:
                return conn.first(prepared, values)
            with conn.autocommit():
                return conn.first(prepared, values)

    def rowcount_autocommit(self, prepared: Prepared, values: Mapping[str, Any]) -> int:
        """PostgreSQL: run one writing statement as its own transaction (a statement is
        atomic: all of it commits or none), one round trip with no BEGIN or COMMIT; the
        number of rows it changed."""
        if self.sqlite:
            raise ValueError("SQLite writers take BEGIN IMMEDIATE: use transaction()")
        with self.connection() as conn, conn.autocommit():
            cursor = conn.execute(prepared, values)
            try:
                return int(cursor.rowcount)
            finally:
                cursor.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing transaction: ``BEGIN IMMEDIATE`` on SQLite (the caller holds the
        process's writer lock, see ``issuer.store.sql.Writers``); committed when the block
        ends, rolled back on any error."""
        with self.connection() as conn:
            if self.sqlite:
                conn.execute_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise


class Connection:
    """A pooled DBAPI connection with SQLAlchemy's error handling, for :class:`Runner`."""

    def __init__(self, pooled: PoolProxiedConnection, dialect: Dialect) -> None:
        self.pooled = pooled
        # Any: the DBAPI's own connection (sqlite3 or psycopg), used as PEP 249 defines.
        self._dbapi: Any = pooled.dbapi_connection
        self._dialect = dialect
        self._sqlite = dialect.name == "sqlite"
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    def execute(self, prepared: Prepared, values: Mapping[str, Any]) -> Any:
        """Run ``prepared``; the DBAPI cursor (rows, ``rowcount``)."""
        return self._run(prepared.sql, prepared.parameters(values))

    def first(self, prepared: Prepared, values: Mapping[str, Any]) -> Row | None:
        cursor = self.execute(prepared, values)
        try:
            row = cursor.fetchone()
        except self._dbapi_error as exc:
            raise self._translated(exc, prepared.sql, cursor) from exc
        finally:
            cursor.close()
        return tuple(row) if row is not None else None

    def first_mapping(self, prepared: Prepared, values: Mapping[str, Any]) -> dict[str, Any] | None:
        row = self.first(prepared, values)
        return dict(zip(prepared.columns, row, strict=True)) if row is not None else None

    @contextmanager
    def autocommit(self) -> Iterator[None]:
        """PostgreSQL: each statement of the block commits on its own; the connection
        goes back to the pool in its usual (transactional) mode, or is invalidated."""
        self._dbapi.autocommit = True
        try:
            yield
        finally:
            try:
                self._dbapi.autocommit = False
            except self._dbapi_error as exc:
                self.pooled.invalidate(exc)

    def execute_sql(self, sql: str) -> None:
        self._run(sql, ()).close()

    def commit(self) -> None:
        try:
            if self._sqlite:
                self._run("COMMIT", ()).close()
            else:
                self._dbapi.commit()
        except self._dbapi_error as exc:
            raise self._translated(exc, "COMMIT", None) from exc

    def rollback(self) -> None:
        """End the transaction; a failure here (a lost connection) is not the error the
        caller reports, and the pool invalidates or resets the connection anyway."""
        try:
            if self._sqlite:
                if self._dbapi.in_transaction:
                    self._dbapi.execute("ROLLBACK")
            else:
                self._dbapi.rollback()
        except Exception:  # noqa: S110 (the original error is what matters)
            pass

    def _run(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any]) -> Any:
        cursor = None
        try:
            cursor = self._dbapi.cursor()
            cursor.execute(sql, parameters)
        except self._dbapi_error as exc:
            if cursor is not None:
                cursor.close()
            raise self._translated(exc, sql, cursor) from exc
        return cursor

    def _translated(self, exc: Exception, sql: str, cursor: Any) -> StatementError:
        """SQLAlchemy's exception for a DBAPI error (as ``Connection.execute`` raises it),
        after invalidating the connection if the dialect says it is lost."""
        lost = self._dialect.is_disconnect(cast(Any, exc), self._dbapi, cursor)
        if lost:
            self.pooled.invalidate(exc)
        return DBAPIError.instance(
            sql,
            None,
            exc,
            self._dbapi_error,
            hide_parameters=True,
            dialect=self._dialect,
            connection_invalidated=lost,
        )
