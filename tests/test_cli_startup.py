"""The ``issuer`` command starts fast because it imports only what a command uses.

Checked on the modules a fresh interpreter imports (``python -X importtime``), never on
time: bench/cli_startup.py measures the seconds. ``--help`` loads no database, web,
protocol or token library; a command that reads the database loads SQLAlchemy and
nothing of the web stack or Alembic; only ``serve`` imports issuer.app.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.pool import QueuePool

from issuer.store import configured
from tests.test_cli import Cli

WEB = {"starlette", "uvicorn", "issuer.app", "issuer.http", "issuer.compose"}
PROTOCOL_AND_TOKENS = {"authlib", "joserfc", "issuer.oauth", "issuer.tokens"}
DATABASE = {"sqlalchemy", "alembic", "issuer.store.sql"}


@pytest.fixture
def home(tmp_path, sqlite_url, monkeypatch, capsys) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(tmp_path, sqlite_url, monkeypatch, capsys)


def imported_modules(home: Cli, *args: str) -> set[str]:
    """Every module ``python -m issuer ARGS`` imports, as ``-X importtime`` names them."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "issuer", *args],
        cwd=home.tmp_path,
        env=home.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def loaded(modules: set[str], packages: set[str]) -> set[str]:
    """The ``modules`` that are one of ``packages`` or inside one."""
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_help_imports_no_database_web_or_protocol_library(home: Cli) -> None:
    modules = imported_modules(home, "--help")
    assert "issuer.cli" in modules  # the parse above sees the issuer's own imports
    assert loaded(modules, WEB | PROTOCOL_AND_TOKENS | DATABASE | {"limits"}) == set()


def test_a_database_command_imports_sqlalchemy_but_no_web_stack_or_alembic(home: Cli) -> None:
    assert home("init").code == 0
    modules = imported_modules(home, "users", "list")
    assert "sqlalchemy" in modules
    assert loaded(modules, WEB | PROTOCOL_AND_TOKENS | {"alembic"}) == set()
    # SQLite users pay nothing for the PostgreSQL dialect.
    assert loaded(modules, {"sqlalchemy.dialects.postgresql"}) == set()


def test_each_command_closes_the_stores_it_opened(
    home: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines are disposed when a command ends: no pooled connection outlives it."""
    assert home("init").code == 0
    opened = []
    real_open = configured.open_migrated_store

    def spy(settings):  # type: ignore[no-untyped-def]
        store = real_open(settings)
        opened.append(store)
        return store

    monkeypatch.setattr(configured, "open_migrated_store", spy)
    for command in (("users", "list"), ("clients", "list"), ("db", "purge")):
        assert home(*command).code == 0, command
    assert len(opened) == 3
    for store in opened:
        pool = store.engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedin() == 0 and pool.checkedout() == 0


def test_a_command_on_a_database_it_cannot_use_closes_it_too(
    home: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty database file: refused, one line, exit 2, and its engine disposed."""
    Path(home.db_path).touch()
    disposed = []
    real_close = configured.SqlStore.close
    monkeypatch.setattr(configured.SqlStore, "close", lambda s: (disposed.append(s), real_close(s)))
    result = home("users", "list")
    assert result.code == 2
    assert "database not initialized: run `issuer init`" in result.err
    assert len(disposed) == 1
