"""The composition root: periodic purge of expired revocation state, and `issuer db purge`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components, purge_expired_state
from issuer.models import RefreshRecord
from issuer.store import migrate
from issuer.store.sql import make_engine


def refresh_record(jti: str, expires_at: int) -> RefreshRecord:
    return RefreshRecord(
        jti=jti,
        family_id="fam",
        user_id="u",
        client_id="webapp",
        scope="read",
        issued_at=expires_at - 60,
        expires_at=expires_at,
    )


def test_purge_keeps_state_of_tokens_still_inside_the_leeway(components):
    now = int(time.time())
    store = components.store
    store.deny("long-expired", now - 3600)
    store.deny("within-leeway", now - 5)
    store.create(refresh_record("old", now - 3600))
    store.create(refresh_record("recent", now - 5))

    assert purge_expired_state(store, now, leeway=30) == (1, 1)

    assert not store.is_denied("long-expired") and store.is_denied("within-leeway")
    assert store.get("old") is None and store.get("recent") is not None


def test_running_server_purges_expired_state_on_its_own(make_settings):
    settings = make_settings(purge_interval=1, leeway=0)
    migrate.upgrade(make_engine(settings.database_url))
    parts = build_components(settings)
    now = int(time.time())
    parts.store.deny("expired", now - 10)
    parts.store.create(refresh_record("expired-refresh", now - 10))
    with TestClient(create_app(components=parts), base_url=settings.url):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and parts.store.is_denied("expired"):
            time.sleep(0.1)
        assert not parts.store.is_denied("expired")
        assert parts.store.get("expired-refresh") is None


def test_db_purge_command_reports_what_it_removed(settings, tmp_path: Path):
    migrate.upgrade(make_engine(settings.database_url))
    parts = build_components(settings)
    parts.store.deny("expired", int(time.time()) - 3600)
    env = {
        "ISSUER_DATABASE_URL": settings.database_url,
        "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
        "ISSUER_CONFIG": str(Path(__file__).parent / "empty.toml"),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "issuer", "db", "purge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "purged 1 expired denied access tokens and 0 expired refresh records" in done.stdout
    assert not parts.store.is_denied("expired")
