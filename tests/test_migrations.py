"""``issuer db upgrade``: the shipped migrations build exactly the schema the code uses,
on SQLite and PostgreSQL, idempotently, atomically, and safely from several processes.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from issuer.errors import MigrationRefusedError
from issuer.models import Role
from issuer.store import migrate
from issuer.store.schema import metadata
from issuer.store.sql import SqlStore, make_engine

TABLES = {
    "users",
    "clients",
    "refresh_tokens",
    "revoked_access_tokens",
    "password_resets",
    "signing_keys",
    "key_set",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_an_empty_database_is_upgraded_to_head(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    assert tables(engine) == set()

    migrate.upgrade(engine)

    assert migrate.current_revision(engine) == migrate.head_revision()
    assert tables(engine) == TABLES | {"alembic_version"}


def test_upgrading_twice_is_a_no_op_that_keeps_the_data(engine: Engine) -> None:
    migrate.upgrade(engine)
    alice = SqlStore(engine).add_user("alice", "$2b$04$" + "a" * 53, Role.ADMIN)

    migrate.upgrade(engine)

    assert migrate.current_revision(engine) == migrate.head_revision()
    assert SqlStore(engine).list_users() == [alice]
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    assert versions == [(migrate.head_revision(),)]


def test_head_revision_is_the_single_newest_shipped_revision() -> None:
    config = migrate._config()
    scripts = ScriptDirectory.from_config(config)

    assert scripts.get_heads() == [migrate.head_revision()]
    assert migrate.head_revision() is not None
    revisions = list(scripts.walk_revisions())
    assert revisions[0].revision == migrate.head_revision()
    assert revisions[-1].down_revision is None


def test_the_migrated_schema_is_exactly_the_schema_the_code_uses(engine: Engine) -> None:
    migrate.upgrade(engine)

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)

    assert differences == []


def test_clients_registered_before_the_introspection_permission_keep_only_their_own(
    engine: Engine,
) -> None:
    """Revision 0003 adds clients.may_introspect; rows already there get false."""
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO clients (client_id, secret_hash, auth_method, grant_types, scopes,"
                " name, created_at) VALUES ('webapp', NULL, 'none', 'password', '', '', 0)"
            )
        )

    migrate.upgrade(engine)

    client = SqlStore(engine).get_client("webapp")
    assert client is not None
    assert client.may_introspect is False
    assert client.grant_types == ("password",)


def test_the_schema_comparison_does_notice_a_difference(engine: Engine) -> None:
    """Guards the test above: an empty diff must not come from a blind comparison."""
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_refresh_tokens_family_id"))
        conn.execute(text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))

    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)

    kinds = {(diff[0], getattr(diff[1], "name", None)) for diff in differences}
    assert ("add_index", "ix_refresh_tokens_family_id") in kinds
    assert ("remove_table", "stray") in kinds


def test_migrating_creates_the_sqlite_directory_private_to_its_owner(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "issuer"
    engine = make_engine(f"sqlite:///{directory / 'issuer.db'}")

    migrate.upgrade(engine)
    engine.dispose()

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / "issuer.db").is_file()


def test_a_migration_that_fails_half_way_leaves_the_sqlite_database_unchanged(
    sqlite_url: str,
) -> None:
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # in the way of the third CREATE TABLE of revision 0001
        conn.execute(text("CREATE TABLE refresh_tokens (something_else INTEGER)"))

    with pytest.raises(Exception, match="refresh_tokens"):
        migrate.upgrade(engine)

    assert tables(engine) == {"refresh_tokens"}
    assert migrate.current_revision(engine) is None
    engine.dispose()


def run_upgrades_at_once(database_url: str, workdir: Path, count: int) -> list[str]:
    """``issuer db upgrade`` in ``count`` processes started together; their stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    env.update(
        ISSUER_DATABASE_URL=database_url,
        ISSUER_SECRET_KEY=secrets.token_urlsafe(48),
        ISSUER_KEYS_DIR=str(workdir / "keys"),
        ISSUER_CONFIG=str(Path(__file__).parent / "empty.toml"),
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "issuer", "db", "upgrade"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outputs.append(out)
    return outputs


def test_replicas_upgrading_at_once_all_succeed(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    outputs = run_upgrades_at_once(database_url, tmp_path, count=3)

    head = migrate.head_revision()
    assert all(f"database at revision {head}" in out for out in outputs)
    assert migrate.current_revision(engine) == head
    assert tables(engine) == TABLES | {"alembic_version"}


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_can_be_migrated_and_used(url: str) -> None:
    engine = make_engine(url)

    migrate.upgrade(engine)

    store = SqlStore(engine)
    alice = store.add_user("alice", "$2b$04$" + "a" * 53, Role.VIEWER)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert store.list_users() == [alice]
    engine.dispose()


def add_user_at_0001(engine: Engine, user_id: str, username: str) -> None:
    """A user row as revision 0001 stored it (no canonical column yet)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, is_active, created_at,"
                " updated_at) VALUES (:id, :name, NULL, 'viewer', true, 1, 1)"
            ),
            {"id": user_id, "name": username},
        )


def test_upgrading_from_0001_canonicalizes_usernames_and_dates_sessions(engine: Engine) -> None:
    migrate.upgrade(engine, "0001")
    add_user_at_0001(engine, "u-1", "Alice")
    add_user_at_0001(engine, "u-2", "bob")
    with engine.begin() as conn:
        for jti, issued_at in (("first", 100), ("second", 200)):
            conn.execute(
                text(
                    "INSERT INTO refresh_tokens (jti, family_id, user_id, client_id, scope,"
                    " issued_at, expires_at) VALUES (:jti, 'fam', 'u-1', 'web', '', :at, :exp)"
                ),
                {"jti": jti, "at": issued_at, "exp": issued_at + 1000},
            )

    migrate.upgrade(engine)

    store = SqlStore(engine)
    alice = store.get_by_username("ALICE")
    assert alice is not None and alice.id == "u-1" and alice.username == "Alice"
    assert store.get(jti="second").session_started_at == 100  # type: ignore[union-attr]
    assert store.session_revoked("fam") is False


def test_the_migration_refuses_colliding_usernames_naming_them_and_changes_nothing(
    engine: Engine,
) -> None:
    migrate.upgrade(engine, "0001")
    for user_id, name in (("u-1", "alice"), ("u-2", "Alice"), ("u-3", "bob"), ("u-4", "BOB")):
        add_user_at_0001(engine, user_id, name)

    with pytest.raises(MigrationRefusedError) as refused:
        migrate.upgrade(engine)

    message = str(refused.value)
    for name in ("'alice'", "'Alice'", "'bob'", "'BOB'"):
        assert name in message
    assert migrate.current_revision(engine) == "0001"
    assert "username_canonical" not in {c["name"] for c in inspect(engine).get_columns("users")}
    assert "password_resets" not in tables(engine)


def test_db_upgrade_refuses_colliding_usernames_in_one_line_exit_2(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    migrate.upgrade(engine, "0001")
    add_user_at_0001(engine, "u-1", "alice")
    add_user_at_0001(engine, "u-2", "\uff41\uff4c\uff49\uff43\uff45")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    env.update(
        ISSUER_DATABASE_URL=database_url,
        ISSUER_SECRET_KEY=secrets.token_urlsafe(48),
        ISSUER_CONFIG=str(Path(__file__).parent / "empty.toml"),
    )

    result = subprocess.run(
        [sys.executable, "-m", "issuer", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "'alice'" in result.stderr and "\uff41\uff4c\uff49\uff43\uff45" in result.stderr
    assert migrate.current_revision(engine) == "0001"
