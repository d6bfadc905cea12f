"""The key set owns its algorithm (issue 9): the manifest records it, a different
``signing_alg`` setting is followed by nobody and said, and a switch is staged like any
rotation. Also: reloads run on a monotonic clock, so a clock stepped back never keeps a
revoked key in force."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import pytest

from issuer import cli
from issuer.compose import build_key_manager, build_key_store
from issuer.errors import BadSignatureError
from issuer.keystore import MANIFEST_NAME, DirectoryKeyStore, KeyState, RotationTooSoonError
from tests.keystore_support import FakeClock, manifest_bytes, only, token_service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rs256(make_settings):
    return make_settings(signing_alg="RS256", secret_key=None, rsa_key_size=2048, jwks_max_age=60)


@pytest.fixture
def unset(make_settings, rs256):
    """The same keys dir, configured as if ISSUER_SIGNING_ALG were not set (HS256)."""
    return make_settings(secret_key=None, keys_dir=str(rs256.keys_dir))


def test_the_manifest_records_the_key_sets_algorithm(rs256, clock):
    build_key_manager(rs256, clock=clock).ensure()
    assert json.loads(manifest_bytes(rs256.keys_dir))["signing_alg"] == "RS256"


def test_a_plain_rotation_with_another_configured_alg_keeps_the_key_sets(rs256, unset, clock):
    """Why: a plain `make rotate-keys` made an HS256 key active under an RS256 server."""
    build_key_manager(rs256, clock=clock).ensure()
    running = DirectoryKeyStore(rs256.keys_dir, "RS256", reload_interval=0, clock=clock)
    tokens = token_service(running, clock)
    before, _ = tokens.create_access_token({"sub": "u1"})
    upcoming = only(build_key_manager(rs256).records(), KeyState.NEXT)

    clock.advance(build_key_manager(unset).lead_time("RS256"))
    result = build_key_manager(unset, clock=clock).rotate()

    assert result.activated == upcoming.kid
    assert result.signing_alg == "RS256"
    assert {r.alg for r in result.records} == {"RS256"}
    assert result.retired == []
    token, _ = tokens.create_access_token({"sub": "u2"})
    assert running.current().signing.alg == "RS256"
    assert tokens.verify(token)["sub"] == "u2"
    assert tokens.verify(before)["sub"] == "u1"


def test_a_plain_rotation_too_soon_is_refused_whatever_the_configured_alg(rs256, unset, clock):
    """Why: recovering with the right variable activated a key before it was published."""
    build_key_manager(rs256, clock=clock).ensure()
    before = manifest_bytes(rs256.keys_dir)
    for settings in (rs256, unset):
        with pytest.raises(RotationTooSoonError, match="--force"):
            build_key_manager(settings, clock=clock).rotate()
    assert manifest_bytes(rs256.keys_dir) == before


def test_a_server_configured_with_another_alg_follows_the_key_set_and_says_so(rs256, unset, caplog):
    """Why: `issuer serve` without the variable said there was no active HS256 key."""
    build_key_manager(rs256).ensure()
    with caplog.at_level(logging.WARNING, logger="issuer.app"):
        keys = build_key_store(unset)
    assert keys.current().signing.alg == "RS256"
    [note] = [r.getMessage() for r in caplog.records if r.name == "issuer.app"]
    assert "signs with RS256" in note
    assert "signing_alg = HS256" in note
    assert "issuer keys rotate --alg HS256" in note


def test_init_with_another_alg_changes_nothing_and_says_so(rs256, unset, monkeypatch, capsys):
    """Why: a plain `make run` or `issuer init` flipped the key set to HS256."""
    build_key_manager(rs256).ensure()
    before = manifest_bytes(rs256.keys_dir)
    monkeypatch.setenv("ISSUER_DATABASE_URL", unset.database_url)
    monkeypatch.setenv("ISSUER_KEYS_DIR", str(unset.keys_dir))
    monkeypatch.setenv("ISSUER_CONFIG", str(REPO / "tests" / "empty.toml"))
    monkeypatch.delenv("ISSUER_SIGNING_ALG", raising=False)
    monkeypatch.delenv("ISSUER_SECRET_KEY", raising=False)

    assert cli.main(["init"]) == 0

    out, err = capsys.readouterr()
    assert "RS256 keys already present" in out
    assert "signs with RS256" in err
    assert manifest_bytes(rs256.keys_dir) == before


def test_a_staged_switch_publishes_first_and_activates_at_the_next_rotation(rs256, clock):
    manager = build_key_manager(rs256, clock=clock)
    manager.ensure()
    keys = DirectoryKeyStore(rs256.keys_dir, "RS256", reload_interval=0, clock=clock)
    tokens = token_service(keys, clock)
    rs_token, _ = tokens.create_access_token({"sub": "u1"}, expires_in=10**6)
    old_next = only(manager.records(), KeyState.NEXT)

    staged = manager.rotate(alg="ES256")

    assert staged.activated is None
    assert staged.signing_alg == "RS256"
    assert staged.staged is not None and staged.staged.alg == "ES256"
    assert old_next.kid in staged.retired  # it never signed
    assert keys.current().signing.alg == "RS256"
    assert staged.staged.kid in keys.current().jwks_bytes.decode()  # published before it signs
    assert keys.current().algorithms == {"RS256", "ES256"}
    with pytest.raises(RotationTooSoonError):
        manager.rotate()  # the usual lead time applies to the new algorithm too

    clock.advance(manager.lead_time("ES256"))
    switched = manager.rotate()  # a plain (scheduled) rotation completes the switch

    assert switched.activated == staged.staged.kid
    assert switched.signing_alg == "ES256"
    assert json.loads(manifest_bytes(rs256.keys_dir))["signing_alg"] == "ES256"
    assert only(switched.records, KeyState.NEXT).alg == "ES256"
    assert only(switched.records, KeyState.PREVIOUS).alg == "RS256"
    es_token, _ = tokens.create_access_token({"sub": "u2"})
    assert tokens.verify(es_token)["sub"] == "u2"
    assert tokens.verify(rs_token)["sub"] == "u1"  # old-algorithm tokens verify until expiry
    assert keys.current().algorithms == {"RS256", "ES256"}


def test_a_forced_switch_activates_the_new_algorithm_at_once(rs256, clock):
    manager = build_key_manager(rs256, clock=clock)
    manager.ensure()
    result = manager.rotate(alg="EdDSA", force=True)
    assert result.signing_alg == "EdDSA"
    assert only(result.records, KeyState.ACTIVE).alg == "EdDSA"
    assert only(result.records, KeyState.PREVIOUS).alg == "RS256"


def test_a_manifest_without_signing_alg_takes_it_from_its_active_key(rs256, unset, clock):
    """Key sets written before the algorithm was recorded keep working as they are."""
    build_key_manager(rs256, clock=clock).ensure()
    data = json.loads(manifest_bytes(rs256.keys_dir))
    del data["signing_alg"]
    (rs256.keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
    assert build_key_manager(unset).key_set_alg() == "RS256"
    keys = DirectoryKeyStore(rs256.keys_dir, "HS256", reload_interval=0)
    assert keys.current().signing.alg == "RS256"


def test_a_clock_stepped_back_does_not_keep_a_revoked_key_in_force(make_settings):
    """Why: reloads were timed with the wall clock; stepped back an hour, a revoked key
    kept signing and verifying until the clock caught up."""
    settings = make_settings(signing_alg="ES256", secret_key=None, key_reload_interval=5)
    wall, ticks = FakeClock(), FakeClock(0)
    manager = build_key_manager(settings, clock=wall)
    first = manager.ensure()
    assert first is not None
    revoked = only(first.records, KeyState.ACTIVE)
    keys = DirectoryKeyStore(
        settings.keys_dir, "ES256", reload_interval=5, clock=wall, monotonic=ticks
    )
    tokens = token_service(keys, wall)
    leaked, _ = tokens.create_access_token({"sub": "u1"})
    assert keys.current().signing.kid == revoked.kid

    manager.revoke(revoked.kid)
    wall.advance(-3600)  # NTP correction, VM restore
    ticks.advance(5)  # one reload interval later, by the monotonic clock

    assert keys.current().signing.kid != revoked.kid
    with pytest.raises(BadSignatureError):
        tokens.verify(leaked)


def test_make_rotate_keys_passes_its_arguments_through():
    """Why: `make rotate-keys` could not pass --force, which the "too soon" message advises."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "rotate-keys", "ARGS=--force --alg ES256"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    command = done.stdout.strip().splitlines()[-1]
    assert command.endswith("issuer keys rotate --force --alg ES256")


def test_the_readme_cron_line_carries_the_configuration():
    readme = (REPO / "README.md").read_text()
    schedule = re.compile(r"^([0-9*/,-]+\s+){5}.*make rotate-keys")  # a crontab entry
    cron = [line for line in readme.splitlines() if schedule.match(line)]
    assert cron, "no cron example"
    assert all("ISSUER_CONFIG=" in line for line in cron), cron
