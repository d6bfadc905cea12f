"""Files at rest: the SQLite database (bcrypt hashes) is private to its owner.

Why: a database created in an existing 0755 directory was 0644, with its -wal and -shm,
so every local user could read the password hashes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from issuer.store import migrate
from issuer.store.sql import make_engine

EMPTY_TOML = Path(__file__).parent / "empty.toml"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common umask 022, under which files are created world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def open_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "var"
    directory.mkdir()
    directory.chmod(0o755)
    return directory


def test_a_new_database_and_its_wal_and_shm_are_0600_in_a_0755_directory(
    open_directory, usual_umask
):
    engine = make_engine(f"sqlite:///{open_directory / 'issuer.db'}")
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("SELECT count(*) FROM users"))
        files = sorted(p.name for p in open_directory.iterdir())
        assert files == ["issuer.db", "issuer.db-shm", "issuer.db-wal"]
        for name in files:
            assert mode(open_directory / name) == 0o600, name
    finally:
        engine.dispose()
    # The process umask is back as it was: only the connect held 077.
    current = os.umask(0o022)
    assert current == 0o022
    probe = open_directory / "probe"
    probe.touch()
    assert mode(probe) == 0o644


def run_init(workdir: Path, database: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
    env.update(
        {
            "ISSUER_DATABASE_URL": f"sqlite:///{database}",
            "ISSUER_KEYS_DIR": str(workdir / "keys"),
            "ISSUER_CONFIG": str(EMPTY_TOML),
        }
    )
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0o022); sys.argv[0] = 'issuer'; "
            "from issuer.cli import main; sys.exit(main(['init']))",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_init_is_silent_when_everything_is_private(tmp_path, open_directory):
    result = run_init(tmp_path, open_directory / "issuer.db")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert mode(open_directory / "issuer.db") == 0o600


def test_init_warns_when_the_database_or_keys_are_open_to_others(tmp_path, open_directory):
    database = open_directory / "issuer.db"
    assert run_init(tmp_path, database).returncode == 0
    database.chmod(0o644)
    key_file = next(p for p in (tmp_path / "keys").iterdir() if p.suffix == ".key")
    key_file.chmod(0o640)
    result = run_init(tmp_path, database)
    assert result.returncode == 0, result.stderr
    assert f"warning: {database} is open to other users (mode 0644): chmod 600 {database}" in (
        result.stderr
    )
    assert f"warning: {key_file} is open to other users (mode 0640)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2, result.stderr
