"""The write side: the rotation timeline, revocation, file modes, HS256 secrets in keys/,
concurrent rotations and crashes at every step."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from issuer.compose import build_key_manager
from issuer.errors import BadSignatureError, KeyStoreError
from issuer.keystore import (
    MANIFEST_NAME,
    DirectoryKeyStore,
    KeyManager,
    KeyState,
    RotationTooSoonError,
    UnknownKeyError,
    read_manifest,
    storage,
)
from tests.keystore_support import START, by_state, key_files, manifest_bytes, only, token_service

# -- the rotation timeline -----------------------------------------------------


def test_first_rotation_creates_an_active_key_and_a_published_next_key(manager):
    result = manager.rotate()
    active = only(result.records, KeyState.ACTIVE)
    upcoming = only(result.records, KeyState.NEXT)
    assert result.activated == active.kid
    assert set(result.created) == {active.kid, upcoming.kid}
    assert {r.alg for r in result.records} == {"ES256"}
    assert upcoming.published_at == START


def test_keys_move_next_active_previous_retired_through_rotations(manager, clock, es256):
    first = manager.ensure()
    assert first is not None
    a = only(first.records, KeyState.ACTIVE)
    b = only(first.records, KeyState.NEXT)
    lead = manager.lead_time("ES256")

    clock.advance(lead)
    second = manager.rotate()
    assert second.activated == b.kid
    assert only(second.records, KeyState.PREVIOUS).kid == a.kid
    c = only(second.records, KeyState.NEXT)
    assert second.created == [c.kid]

    clock.advance(lead)
    third = manager.rotate()
    assert third.activated == c.kid
    assert {r.kid for r in by_state(third.records, KeyState.PREVIOUS)} == {a.kid, b.kid}
    d = only(third.records, KeyState.NEXT)

    a_retires = only(second.records, KeyState.PREVIOUS).retire_at
    clock.now = a_retires
    fourth = manager.rotate()
    assert fourth.retired == [a.kid]
    assert fourth.activated == d.kid
    assert {r.kid for r in by_state(fourth.records, KeyState.PREVIOUS)} == {b.kid, c.kid}
    assert a.kid not in {r.kid for r in manager.records()}
    assert a.file not in key_files(es256.keys_dir)
    assert key_files(es256.keys_dir) == {r.file for r in manager.records()}


def test_demoted_key_retires_after_every_token_it_signed_has_expired(manager, clock, es256):
    manager.ensure()
    clock.advance(manager.lead_time("ES256"))
    now = int(clock())
    result = manager.rotate()
    previous = only(result.records, KeyState.PREVIOUS)
    # The longest token (refresh) plus leeway, plus the delay before every server stops
    # signing with it (reload interval, whole-second timestamps).
    bound = es256.refresh_lifetime_bound
    assert bound == es256.refresh_token_ttl + es256.leeway
    assert previous.retire_at == now + bound + manager.propagation
    assert previous.retire_at >= now + bound + es256.key_reload_interval


def test_rotation_before_the_lead_time_is_refused_and_changes_nothing(manager, clock, es256):
    manager.ensure()
    before = manifest_bytes(es256.keys_dir)
    files_before = key_files(es256.keys_dir)
    lead = manager.lead_time("ES256")
    assert lead > es256.jwks_max_age

    clock.advance(lead - 1)
    with pytest.raises(RotationTooSoonError, match="--force"):
        manager.rotate()
    assert manifest_bytes(es256.keys_dir) == before
    assert key_files(es256.keys_dir) == files_before

    forced = manager.rotate(force=True)
    assert forced.activated is not None
    clock.advance(1)
    with pytest.raises(RotationTooSoonError):
        manager.rotate()


def test_lead_time_and_retirement_follow_the_configured_reload_interval(make_settings, clock):
    settings = make_settings(signing_alg="ES256", secret_key=None, key_reload_interval=5)
    manager = build_key_manager(settings, clock=clock)
    assert manager.lead_time("ES256") > settings.jwks_max_age + settings.key_reload_interval
    manager.ensure()
    clock.advance(manager.lead_time("ES256"))
    now = int(clock())
    previous = only(manager.rotate().records, KeyState.PREVIOUS)
    assert previous.retire_at > now + settings.refresh_lifetime_bound + 5


def test_rotation_at_the_lead_time_is_allowed(manager, clock):
    manager.ensure()
    clock.advance(manager.lead_time("ES256"))
    assert manager.rotate().activated is not None


def test_ensure_does_nothing_when_a_signing_key_exists(manager, es256):
    assert manager.ensure() is not None
    before = manifest_bytes(es256.keys_dir)
    assert manager.ensure() is None
    assert manifest_bytes(es256.keys_dir) == before


def test_changing_the_signing_alg_setting_does_not_switch_an_existing_key_set(make_settings, clock):
    """The key set owns its algorithm; a switch is `rotate(alg=...)`, staged (see
    tests/test_keystore_algorithm.py)."""
    es = make_settings(signing_alg="ES256", secret_key=None)
    build_key_manager(es, clock=clock).ensure()
    old = read_manifest(es.keys_dir)

    ed = make_settings(signing_alg="EdDSA", secret_key=None)
    clock.advance(build_key_manager(ed).lead_time("ES256"))
    result = build_key_manager(ed, clock=clock).rotate()

    assert result.signing_alg == "ES256"
    assert {r.alg for r in result.records} == {"ES256"}
    assert result.activated == only(old, KeyState.NEXT).kid
    ed_keys = DirectoryKeyStore(ed.keys_dir, "EdDSA", reload_interval=0, clock=clock)
    token, _ = token_service(ed_keys, clock).create_access_token({"sub": "u2"})
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "ES256"


# -- revocation ----------------------------------------------------------------


def test_revoking_the_active_key_promotes_the_next_key_at_once(manager, clock, es256):
    first = manager.ensure()
    assert first is not None
    a = only(first.records, KeyState.ACTIVE)
    b = only(first.records, KeyState.NEXT)
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0, clock=clock)
    tokens = token_service(keys, clock)
    leaked, _ = tokens.create_access_token({"sub": "u1"})

    result = manager.revoke(a.kid)

    assert result.activated == b.kid
    assert only(result.records, KeyState.ACTIVE).kid == b.kid
    assert only(result.records, KeyState.NEXT).kid not in (a.kid, b.kid)  # a successor
    assert a.kid not in {r.kid for r in manager.records()}
    assert a.file not in key_files(es256.keys_dir)
    with pytest.raises(BadSignatureError, match="unknown key id"):
        tokens.verify(leaked)
    fresh, _ = tokens.create_access_token({"sub": "u1"})
    assert tokens.verify(fresh)["sub"] == "u1"


def test_revoking_a_previous_key_leaves_the_signing_key_alone(manager, clock, es256):
    manager.ensure()
    clock.advance(manager.lead_time("ES256"))
    rotated = manager.rotate()
    previous = only(rotated.records, KeyState.PREVIOUS)
    result = manager.revoke(previous.kid)
    assert result.activated is None
    assert result.created == []
    assert only(result.records, KeyState.ACTIVE) == only(rotated.records, KeyState.ACTIVE)


def test_revoking_an_unknown_kid_is_an_error_and_changes_nothing(manager, es256):
    manager.ensure()
    before = manifest_bytes(es256.keys_dir)
    with pytest.raises(UnknownKeyError, match="no key with kid"):
        manager.revoke("../../etc/passwd")
    assert isinstance(UnknownKeyError("x"), KeyStoreError)
    assert manifest_bytes(es256.keys_dir) == before


# -- files ---------------------------------------------------------------------


def test_keys_dir_is_0700_and_every_file_in_it_0600(manager, es256):
    manager.ensure()
    assert stat.S_IMODE(es256.keys_dir.stat().st_mode) == 0o700
    names = {p.name for p in es256.keys_dir.iterdir()}
    assert MANIFEST_NAME in names
    assert len(key_files(es256.keys_dir)) == 2
    for path in es256.keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_keys_dir_readable_by_others_is_tightened(manager, es256):
    es256.keys_dir.mkdir(mode=0o755)
    es256.keys_dir.chmod(0o755)
    manager.ensure()
    assert stat.S_IMODE(es256.keys_dir.stat().st_mode) == 0o700


# -- HS256 secrets in keys/ ----------------------------------------------------


def test_hs256_secrets_in_keys_dir_rotate_the_same_way_and_are_never_published(
    make_settings, clock
):
    settings = make_settings(signing_alg="HS256", secret_key=None)
    manager = build_key_manager(settings, clock=clock)
    first = manager.ensure()
    assert first is not None
    assert {r.alg for r in first.records} == {"HS256"}
    keys = DirectoryKeyStore(settings.keys_dir, "HS256", reload_interval=0, clock=clock)
    tokens = token_service(keys, clock)
    old_token, _ = tokens.create_access_token({"sub": "u1"})

    assert manager.lead_time("HS256") == manager.propagation  # never published: no JWKS wait
    with pytest.raises(RotationTooSoonError):
        manager.rotate()
    clock.advance(manager.lead_time("HS256"))
    second = manager.rotate()
    assert keys.current().signing.kid == second.activated
    assert tokens.verify(old_token)["sub"] == "u1"
    assert json.loads(keys.current().jwks_bytes) == {"keys": []}
    for record in second.records:
        path = settings.keys_dir / record.file
        assert path.suffix == ".key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(base64.urlsafe_b64decode(path.read_text().strip() + "==")) >= 32

    manager.revoke(only(second.records, KeyState.PREVIOUS).kid)
    with pytest.raises(BadSignatureError):
        tokens.verify(old_token)


# -- concurrency and crashes ---------------------------------------------------


def _rotate_forcefully(keys_dir: str, times: int) -> None:
    manager = KeyManager(
        Path(keys_dir), "ES256", jwks_max_age=60, retire_after=3600, reload_interval=0
    )
    for _ in range(times):
        manager.rotate(force=True)


def test_concurrent_rotations_from_several_processes_leave_one_valid_key_set(manager, es256):
    manager.ensure()
    workers, times = 4, 3
    ctx = multiprocessing.get_context("fork")
    processes = [
        ctx.Process(target=_rotate_forcefully, args=(str(es256.keys_dir), times))
        for _ in range(workers)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0

    records = read_manifest(es256.keys_dir)
    only(records, KeyState.ACTIVE)
    only(records, KeyState.NEXT)
    # No rotation was lost: each one demoted exactly one key.
    assert len(by_state(records, KeyState.PREVIOUS)) == workers * times
    assert key_files(es256.keys_dir) == {r.file for r in records}
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0)
    tokens = token_service(keys, time.time)
    assert tokens.verify(tokens.create_access_token({"sub": "u"})[0])["sub"] == "u"


def assert_key_set_loads_and_signs(keys_dir: Path, expected_active: str) -> None:
    keys = DirectoryKeyStore(keys_dir, "ES256", reload_interval=0)
    assert keys.current().signing.kid == expected_active
    tokens = token_service(keys, time.time)
    assert tokens.verify(tokens.create_access_token({"sub": "u"})[0])["sub"] == "u"


def test_failure_writing_the_manifest_leaves_the_old_key_set(manager, es256, monkeypatch):
    first = manager.ensure()
    assert first is not None
    before = manifest_bytes(es256.keys_dir)
    real = storage.atomic_write
    written: list[str] = []

    def fail_on_manifest(path, data):
        if path.name == MANIFEST_NAME:
            raise OSError("disk full")
        real(path, data)
        written.append(path.name)

    monkeypatch.setattr(storage, "atomic_write", fail_on_manifest)
    with pytest.raises(OSError, match="disk full"):
        manager.rotate(force=True)
    monkeypatch.undo()

    assert written  # the crash came after the new key file was on disk
    assert manifest_bytes(es256.keys_dir) == before
    assert_key_set_loads_and_signs(es256.keys_dir, first.activated)
    # The orphaned key file goes with the next successful write.
    manager.rotate(force=True)
    assert key_files(es256.keys_dir) == {r.file for r in manager.records()}


def test_failure_renaming_the_manifest_leaves_the_old_key_set_and_no_temp_file(
    manager, es256, monkeypatch
):
    first = manager.ensure()
    assert first is not None
    before = manifest_bytes(es256.keys_dir)
    real_replace = os.replace

    def fail_on_manifest(src, dst):
        if Path(dst).name == MANIFEST_NAME:
            raise OSError("I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_manifest)
    with pytest.raises(OSError, match="I/O error"):
        manager.rotate(force=True)
    monkeypatch.undo()

    assert manifest_bytes(es256.keys_dir) == before
    assert not [p for p in es256.keys_dir.iterdir() if p.name.endswith(".tmp")]
    assert_key_set_loads_and_signs(es256.keys_dir, first.activated)


def test_failure_after_the_manifest_is_written_leaves_the_new_key_set(manager, es256, monkeypatch):
    first = manager.ensure()
    assert first is not None
    a = only(first.records, KeyState.ACTIVE)
    real_unlink = Path.unlink

    def fail_unlink(self, missing_ok=False):
        raise OSError("read-only file system")

    monkeypatch.setattr(Path, "unlink", fail_unlink)
    with pytest.raises(OSError):
        manager.revoke(a.kid)
    monkeypatch.setattr(Path, "unlink", real_unlink)

    assert a.kid not in {r.kid for r in read_manifest(es256.keys_dir)}
    b = only(first.records, KeyState.NEXT)
    assert_key_set_loads_and_signs(es256.keys_dir, b.kid)
    assert a.file in key_files(es256.keys_dir)  # the revoked private key is still there...
    manager.rotate(force=True)
    assert a.file not in key_files(es256.keys_dir)  # ...until the next write removes it


def _crash_mid_rotation(keys_dir: str) -> None:
    real_replace = os.replace

    def crash(src, dst):
        if Path(dst).name == MANIFEST_NAME:
            os._exit(3)  # the process dies with the new manifest only in a temp file
        real_replace(src, dst)

    os.replace = crash
    KeyManager(Path(keys_dir), "ES256", jwks_max_age=60, retire_after=3600).rotate(force=True)


def test_process_killed_mid_rotation_leaves_a_valid_key_set(manager, es256):
    first = manager.ensure()
    assert first is not None
    before = manifest_bytes(es256.keys_dir)
    child = multiprocessing.get_context("fork").Process(
        target=_crash_mid_rotation, args=(str(es256.keys_dir),)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 3

    leftovers = {p.name for p in es256.keys_dir.iterdir()} - {MANIFEST_NAME, ".lock"}
    assert leftovers - {r.file for r in first.records}  # a temp manifest and a new key file
    assert manifest_bytes(es256.keys_dir) == before
    assert_key_set_loads_and_signs(es256.keys_dir, first.activated)
    manager.rotate(force=True)
    names = {p.name for p in es256.keys_dir.iterdir()}
    assert names == {MANIFEST_NAME, ".lock"} | {r.file for r in manager.records()}
