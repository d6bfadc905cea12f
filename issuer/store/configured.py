"""The stores the settings name, opened for a process: the app, a CLI command, a test.

One place for "which database, which user store, is it ready": :mod:`issuer.compose`
builds the app's object graph on it, and the CLI opens only this (no token service,
no Authlib, no web stack), so commands that touch the database start fast. Whoever
opens a store closes it (:meth:`SqlStore.close`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from sqlalchemy import Engine, column, inspect, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from issuer.errors import ConfigError, NotMigratedError
from issuer.settings import Settings
from issuer.store.base import UserStore
from issuer.store.diagnose import describe_database_error
from issuer.store.sql import SqlStore, make_engine

# The newest migration shipped in issuer/store/migrations/versions/. Written here so that
# checking a database needs no Alembic (a CLI command would spend most of its start-up
# importing it); tests/test_store_configured.py keeps it equal to Alembic's head.
HEAD_REVISION = "0004"

_VERSION_TABLE = table("alembic_version", column("version_num"))


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite database file the settings name, or None (PostgreSQL, in-memory)."""
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def build_engine(settings: Settings) -> Engine:
    """The database engine, its pool and every wait on it bounded by the settings."""
    return make_engine(
        settings.database_url,
        settings.db_pool_size,
        connect_timeout=settings.db_connect_timeout,
        pool_timeout=settings.db_pool_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


def open_store(settings: Settings) -> SqlStore:
    """The issuer's own store on the configured database, migrated or not (``issuer init``)."""
    return SqlStore(build_engine(settings))


def current_revision(store: SqlStore) -> str | None:
    """The revision the database is at (Alembic's version table), None if never migrated."""
    with store.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(select(_VERSION_TABLE.c.version_num)).scalar()


def open_migrated_store(settings: Settings) -> SqlStore:
    """The store on a database at :data:`HEAD_REVISION`; NotMigratedError, changing
    nothing, otherwise.

    A missing SQLite file is reported rather than connected to: connecting would create it.
    """
    path = sqlite_path(settings)
    if path is not None and not path.exists():
        raise NotMigratedError(
            f"database not initialized ({path} does not exist): run `issuer init`"
        )
    store = open_store(settings)
    try:
        current = current_revision(store)
    except BaseException:
        store.close()
        raise
    if current != HEAD_REVISION:
        store.close()
        if current is None:
            raise NotMigratedError("database not initialized: run `issuer init`")
        raise NotMigratedError(
            f"the database is at revision {current}, expected {HEAD_REVISION}: "
            "run `issuer db upgrade`"
        )
    return store


def load_user_store(settings: Settings, default: UserStore) -> UserStore:
    """The user store named by ``user_store`` (``module:factory(settings)``), else ``default``."""
    if not settings.user_store:
        return default
    module_name, _, attribute = settings.user_store.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
        users = factory(settings)
    except Exception as exc:
        raise ConfigError(
            [f"user_store: cannot load {settings.user_store!r}: {exc.__class__.__name__}: {exc}"]
        ) from exc
    if not isinstance(users, UserStore):
        raise ConfigError([f"user_store: {settings.user_store!r} lacks get_by_username/get_by_id"])
    return users


def database_error(exc: BaseException, database_url: str = "") -> str | None:
    """One line for a database failure, safe to print; None if ``exc`` is not one.

    Never the statement or its parameters: they may hold usernames or hashes. A failure
    to connect names its cause (:mod:`issuer.store.diagnose`).
    """
    if isinstance(exc, OperationalError):
        return describe_database_error(exc, database_url)
    if isinstance(exc, SQLAlchemyError):
        return f"database error ({exc.__class__.__name__})"
    return None
