"""Opening the configured stores: the revision check without Alembic agrees with Alembic."""

from __future__ import annotations

import pytest

from issuer.errors import NotMigratedError
from issuer.settings import Settings
from issuer.store import configured, migrate


def test_head_revision_is_alembics_head() -> None:
    """If this fails, a migration was added: set HEAD_REVISION in issuer/store/configured.py
    to its revision id."""
    assert migrate.head_revision() == configured.HEAD_REVISION


def test_current_revision_agrees_with_alembic(tmp_path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'issuer.db'}")
    store = configured.open_store(settings)
    try:
        assert configured.current_revision(store) is None
        assert migrate.current_revision(store.engine) is None
        migrate.upgrade(store.engine, "0002")
        assert configured.current_revision(store) == "0002"
        assert configured.current_revision(store) == migrate.current_revision(store.engine)
        with pytest.raises(NotMigratedError, match=r"at revision 0002, expected .*db upgrade"):
            configured.open_migrated_store(settings)
        migrate.upgrade(store.engine)
        migrated = configured.open_migrated_store(settings)
        assert configured.current_revision(migrated) == configured.HEAD_REVISION
        migrated.close()
    finally:
        store.close()


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(NotMigratedError, match="does not exist"):
        configured.open_migrated_store(Settings(database_url=f"sqlite:///{path}"))
    assert not path.exists()
