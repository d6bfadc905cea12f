"""The read side: key files checked against their records, reloads after rotation, the last
good key set kept when keys/ breaks, readiness."""

from __future__ import annotations

import json
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components, build_key_manager
from issuer.errors import BadSignatureError, KeyStoreError
from issuer.keystore import MANIFEST_NAME, DirectoryKeyStore, KeyState, read_manifest, storage
from issuer.store import migrate
from issuer.store.sql import make_engine
from tests.keystore_support import manifest_bytes, only, token_service

# -- key files are checked against their records -------------------------------


def test_key_file_that_does_not_match_its_kid_is_refused(manager, es256):
    manager.ensure()
    records = read_manifest(es256.keys_dir)
    active, upcoming = only(records, KeyState.ACTIVE), only(records, KeyState.NEXT)
    # Swap the two PEM files: each record now names someone else's key.
    a, b = es256.keys_dir / active.file, es256.keys_dir / upcoming.file
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    with pytest.raises(KeyStoreError, match="thumbprint"):
        DirectoryKeyStore(es256.keys_dir, "ES256").current()


def test_key_file_holding_only_a_public_key_is_refused(manager, es256):
    manager.ensure()
    active = only(read_manifest(es256.keys_dir), KeyState.ACTIVE)
    path = es256.keys_dir / active.file
    private = load_pem_private_key(path.read_bytes(), password=None)
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyStoreError, match="public key"):
        DirectoryKeyStore(es256.keys_dir, "ES256").current()


# -- running servers reload ----------------------------------------------------


@pytest.fixture
def count_loads(monkeypatch):
    loads: list[str] = []
    real = storage.load_key

    def counting(keys_dir, record):
        loads.append(record.kid)
        return real(keys_dir, record)

    monkeypatch.setattr(storage, "load_key", counting)
    return loads


def test_running_store_picks_up_a_rotation_and_parses_only_the_new_key(
    manager, clock, es256, count_loads
):
    first = manager.ensure()
    assert first is not None
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0, clock=clock)
    assert keys.current().signing.kid == only(first.records, KeyState.ACTIVE).kid
    assert len(count_loads) == 2
    for _ in range(20):
        keys.current()
    assert len(count_loads) == 2

    clock.advance(manager.lead_time("ES256"))
    second = manager.rotate()
    assert keys.current().signing.kid == second.activated
    assert count_loads[2:] == second.created  # only the new next key was parsed


def test_running_store_sees_changes_only_after_its_reload_interval(manager, clock, es256):
    first = manager.ensure()
    assert first is not None
    keys = DirectoryKeyStore(
        es256.keys_dir, "ES256", reload_interval=5, clock=clock, monotonic=clock
    )
    old = keys.current()
    result = manager.rotate(force=True)
    clock.advance(4.9)
    assert keys.current() is old
    clock.advance(0.1)
    assert keys.current().signing.kid == result.activated


def test_retired_key_stops_verifying_at_its_retire_time_without_a_rotation(manager, clock, es256):
    manager.ensure()
    keys = DirectoryKeyStore(
        es256.keys_dir, "ES256", reload_interval=3600, clock=clock, monotonic=clock
    )
    tokens = token_service(keys, clock)
    old_token, _ = tokens.create_access_token({"sub": "u1"}, expires_in=10**7)
    clock.advance(manager.lead_time("ES256"))
    previous = only(manager.rotate().records, KeyState.PREVIOUS)

    clock.now = previous.retire_at - 1
    assert tokens.verify(old_token)["sub"] == "u1"
    clock.now = previous.retire_at
    with pytest.raises(BadSignatureError):
        tokens.verify(old_token)
    assert previous.kid not in keys.current().jwks_bytes.decode()


def test_corrupt_manifest_while_running_keeps_the_last_good_key_set(manager, clock, es256, caplog):
    manager.ensure()
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0, clock=clock)
    tokens = token_service(keys, clock)
    good = keys.current()
    token, _ = tokens.create_access_token({"sub": "u1"})
    saved = manifest_bytes(es256.keys_dir)

    (es256.keys_dir / MANIFEST_NAME).write_bytes(saved[: len(saved) // 2])
    with caplog.at_level(logging.WARNING, logger="issuer.keystore"):
        for _ in range(5):
            assert keys.current() is good
    assert len([r for r in caplog.records if "last good" in r.getMessage()]) == 1
    assert tokens.verify(token)["sub"] == "u1"
    assert tokens.verify(tokens.create_access_token({"sub": "u2"})[0])["sub"] == "u2"
    with pytest.raises(KeyStoreError):
        DirectoryKeyStore(es256.keys_dir, "ES256").current()  # a fresh start fails loudly

    (es256.keys_dir / MANIFEST_NAME).write_bytes(saved)
    clock.advance(manager.lead_time("ES256"))
    rotated = manager.rotate()
    assert keys.current().signing.kid == rotated.activated


def test_manifest_naming_a_missing_key_file_keeps_the_last_good_key_set(manager, clock, es256):
    manager.ensure()
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0, clock=clock)
    good = keys.current()
    data = json.loads(manifest_bytes(es256.keys_dir))
    data["keys"][0]["file"] = "es256-ffffffffffffffff.pem"
    (es256.keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
    assert keys.current() is good
    (es256.keys_dir / MANIFEST_NAME).unlink()
    assert keys.current() is good


def test_readyz_fails_while_no_valid_signing_key_exists(make_settings):
    settings = make_settings(signing_alg="ES256", secret_key=None, key_reload_interval=0)
    build_key_manager(settings).ensure()
    migrate.upgrade(make_engine(settings.database_url))
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), base_url=settings.url) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"]["signing_key"] is True

            data = json.loads(manifest_bytes(settings.keys_dir))
            for entry in data["keys"]:
                if entry["state"] == "active":
                    entry["state"] = "previous"
                    entry["retire_at"] = 2**40
            (settings.keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"]["signing_key"] is False

            build_key_manager(settings).rotate()  # nothing signs: a key takes over at once
            assert client.get("/readyz").status_code == 200
    finally:
        parts.close()
