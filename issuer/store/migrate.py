"""Apply the Alembic migrations that ship inside the package (``issuer db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from issuer.store.sql import writer

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# pg_advisory_xact_lock key held while migrating: the bytes of "issuer:m" as an int64.
_PG_MIGRATION_LOCK = int.from_bytes(b"issuer:m", "big") & 0x7FFF_FFFF_FFFF_FFFF


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database at ``engine`` to ``revision``, all steps in one transaction.

    Safe to run from several processes at once (replicas each running ``issuer init``):
    the first migrates, the others wait for it, then find nothing left to do.
    """
    backend = engine.url.get_backend_name()
    if backend == "sqlite" and engine.url.database and engine.url.database != ":memory:":
        # The database file holds password hashes: its directory is the owner's only.
        Path(engine.url.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = _config()
    # writer(): BEGIN IMMEDIATE on SQLite, so a second migrator waits for the write
    # lock before it reads the current revision, instead of reading "none" and then
    # failing on "table already exists". PostgreSQL's DDL is transactional but two
    # CREATE TABLEs still collide, so migrators queue on an advisory lock there.
    with writer(engine).begin() as conn:
        if backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(_config()).get_current_head()
