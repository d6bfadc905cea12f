"""The key store: manifest, rotation timeline, revocation, reloads, file safety, crashes."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient

from issuer.app import build_components, build_key_manager, create_app
from issuer.errors import BadSignatureError, KeyStoreError
from issuer.keystore import (
    MANIFEST_NAME,
    DirectoryKeyStore,
    KeyManager,
    KeyRecord,
    KeyState,
    RotationTooSoonError,
    UnknownKeyError,
    key_id,
    public_jwk,
    read_manifest,
)
from issuer.keystore import rotation as keystore
from issuer.store import migrate
from issuer.store.sql import make_engine
from issuer.tokens import TokenService

START = 1_700_000_000
ISSUER = "http://127.0.0.1:8000"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def es256(make_settings):
    return make_settings(signing_alg="ES256", secret_key=None, jwks_max_age=60)


@pytest.fixture
def manager(es256, clock) -> KeyManager:
    return build_key_manager(es256, clock=clock)


def by_state(records, state):
    return [r for r in records if r.state is state]


def only(records, state):
    found = by_state(records, state)
    assert len(found) == 1, records
    return found[0]


def token_service(keys, clock) -> TokenService:
    return TokenService(keys, issuer=ISSUER, audience="issuer-api", clock=clock)


def manifest_bytes(keys_dir: Path) -> bytes:
    return (keys_dir / MANIFEST_NAME).read_bytes()


def key_files(keys_dir: Path) -> set[str]:
    return {p.name for p in keys_dir.iterdir() if p.suffix in (".pem", ".key")}


# -- the manifest --------------------------------------------------------------


def test_manifest_record_survives_a_json_round_trip():
    record = KeyRecord(
        kid="abc",
        alg="ES256",
        state=KeyState.PREVIOUS,
        file="es256-0123456789abcdef.pem",
        created_at=1,
        published_at=2,
        activated_at=3,
        retire_at=4,
    )
    assert KeyRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_manifest_on_disk_reads_back_as_the_records_rotation_wrote(manager, es256):
    result = manager.ensure()
    assert result is not None
    assert read_manifest(es256.keys_dir) == result.records
    assert manager.records() == result.records


@pytest.mark.parametrize(
    "entry",
    [
        {"kid": "k", "alg": "ES256", "state": "active", "file": "../etc/passwd", "created_at": 1},
        {"kid": "k", "alg": "ES256", "state": "active", "file": ".lock", "created_at": 1},
        {"kid": "k", "alg": "none", "state": "active", "file": "x.pem", "created_at": 1},
        {"kid": "k", "alg": "ES256", "state": "signing", "file": "x.pem", "created_at": 1},
        {"kid": "", "alg": "ES256", "state": "active", "file": "x.pem", "created_at": 1},
        {"kid": "k", "alg": "ES256", "state": "active", "file": "x.pem", "created_at": "1"},
        {"kid": "k", "alg": "ES256", "state": "active", "file": "x.pem"},
    ],
)
def test_malformed_manifest_entry_is_refused(entry):
    with pytest.raises(KeyStoreError):
        KeyRecord.from_json(entry)


def test_manifest_with_two_active_keys_of_one_algorithm_is_refused(manager, es256):
    manager.ensure()
    data = json.loads(manifest_bytes(es256.keys_dir))
    for entry in data["keys"]:
        entry["state"] = "active"
    (es256.keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(KeyStoreError, match="more than one active"):
        read_manifest(es256.keys_dir)


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


def test_retired_key_stops_verifying_at_its_retire_time_without_a_rotation(manager, clock, es256):
    manager.ensure()
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=3600, clock=clock)
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


def test_switching_signing_alg_activates_the_new_algorithm_and_keeps_old_tokens_valid(
    make_settings, clock
):
    es = make_settings(signing_alg="ES256", secret_key=None)
    build_key_manager(es, clock=clock).ensure()
    es_keys = DirectoryKeyStore(es.keys_dir, "ES256", reload_interval=0, clock=clock)
    es_token, _ = token_service(es_keys, clock).create_access_token({"sub": "u1"})
    old = read_manifest(es.keys_dir)
    old_next = only(old, KeyState.NEXT)

    ed = make_settings(signing_alg="EdDSA", secret_key=None)
    clock.advance(1)
    result = build_key_manager(ed, clock=clock).rotate()

    assert only(result.records, KeyState.ACTIVE).alg == "EdDSA"
    assert only(result.records, KeyState.NEXT).alg == "EdDSA"
    assert only(result.records, KeyState.PREVIOUS).kid == only(old, KeyState.ACTIVE).kid
    assert old_next.kid in result.retired  # it never signed
    assert old_next.file not in key_files(ed.keys_dir)
    ed_keys = DirectoryKeyStore(ed.keys_dir, "EdDSA", reload_interval=0, clock=clock)
    tokens = token_service(ed_keys, clock)
    assert tokens.verify(es_token)["sub"] == "u1"
    new_token, _ = tokens.create_access_token({"sub": "u2"})
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["alg"] == "EdDSA"


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


@pytest.mark.parametrize(
    ("alg", "check"),
    [
        ("RS256", lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048),
        (
            "ES256",
            lambda k: (
                isinstance(k, ec.EllipticCurvePrivateKey) and isinstance(k.curve, ec.SECP256R1)
            ),
        ),
        ("EdDSA", lambda k: isinstance(k, ed25519.Ed25519PrivateKey)),
    ],
)
def test_key_files_are_unencrypted_pem_private_keys_of_their_algorithm(make_settings, alg, check):
    settings = make_settings(signing_alg=alg, secret_key=None, rsa_key_size=2048)
    build_key_manager(settings).ensure()
    for record in read_manifest(settings.keys_dir):
        data = (settings.keys_dir / record.file).read_bytes()
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----")
        assert check(load_pem_private_key(data, password=None))


def test_default_rsa_keys_are_3072_bits(make_settings):
    settings = make_settings(signing_alg="RS256", secret_key=None)
    assert settings.rsa_key_size == 3072
    key = keystore.generate_key("RS256", settings.rsa_key_size)
    assert key.raw_value.key_size == 3072


def rfc7638_thumbprint(jwk: dict) -> str:
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def test_kid_is_the_rfc7638_thumbprint_of_the_public_key(make_settings):
    for alg in ("RS256", "ES256", "EdDSA"):
        settings = make_settings(signing_alg=alg, secret_key=None, rsa_key_size=2048)
        build_key_manager(settings).ensure()
        keys = DirectoryKeyStore(settings.keys_dir, alg, reload_interval=0)
        for loaded in keys.current().verifying.values():
            assert loaded.kid == rfc7638_thumbprint(public_jwk(loaded))


def test_key_id_matches_the_rfc7638_example():
    # RFC 7638 §3.1: this RSA public key's thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJ"
        "ECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
        "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
        "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    key = RSAKey.import_key({"kty": "RSA", "n": n, "e": "AQAB"})
    assert key_id(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


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


# -- the reading side in running servers ---------------------------------------


@pytest.fixture
def count_loads(monkeypatch):
    loads: list[str] = []
    real = keystore._load_key

    def counting(keys_dir, record):
        loads.append(record.kid)
        return real(keys_dir, record)

    monkeypatch.setattr(keystore, "_load_key", counting)
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
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=5, clock=clock)
    old = keys.current()
    result = manager.rotate(force=True)
    clock.advance(4.9)
    assert keys.current() is old
    clock.advance(0.1)
    assert keys.current().signing.kid == result.activated


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
        parts.engine.dispose()


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
    real = keystore._atomic_write
    written: list[str] = []

    def fail_on_manifest(path, data):
        if path.name == MANIFEST_NAME:
            raise OSError("disk full")
        real(path, data)
        written.append(path.name)

    monkeypatch.setattr(keystore, "_atomic_write", fail_on_manifest)
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


# -- the `issuer keys` command -------------------------------------------------


def keys_table(server) -> list[list[str]]:
    lines = server.cli("keys", "list").stdout.splitlines()
    assert lines[0].split() == ["KID", "ALG", "STATE", "CREATED", "RETIRES"]
    return [line.split() for line in lines[1:]]


def test_keys_cli_lists_rotates_and_refuses_a_rotation_before_the_lead_time(
    live_server_factory,
):
    server = live_server_factory(signing_alg="ES256", jwks_max_age=60)  # `issuer init` ran
    keys_dir = Path(server.env["ISSUER_KEYS_DIR"])
    rows = keys_table(server)
    assert sorted(row[2] for row in rows) == ["active", "next"]
    assert {row[1] for row in rows} == {"ES256"}
    assert all(row[3].endswith("Z") and row[4] == "-" for row in rows)
    active_kid = next(row[0] for row in rows if row[2] == "active")

    before = manifest_bytes(keys_dir)
    refused = server.cli("keys", "rotate", check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("issuer: error: ")
    assert "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert manifest_bytes(keys_dir) == before

    forced = server.cli("keys", "rotate", "--force")
    assert "active" in forced.stdout
    assert "created" in forced.stdout
    rows = keys_table(server)
    assert sorted(row[2] for row in rows) == ["active", "next", "previous"]
    previous = next(row for row in rows if row[2] == "previous")
    assert previous[0] == active_kid
    assert previous[4].endswith("Z")  # when it retires


def test_keys_cli_revokes_a_key_and_refuses_an_unknown_kid(live_server_factory):
    server = live_server_factory(signing_alg="EdDSA")
    before = manifest_bytes(Path(server.env["ISSUER_KEYS_DIR"]))
    unknown = server.cli("keys", "revoke", "no-such-kid", check=False)
    assert unknown.returncode == 2
    assert "no key with kid" in unknown.stderr
    assert manifest_bytes(Path(server.env["ISSUER_KEYS_DIR"])) == before

    active_kid = next(row[0] for row in keys_table(server) if row[2] == "active")
    revoked = server.cli("keys", "revoke", "--", active_kid)
    assert "revoked" in revoked.stdout
    rows = keys_table(server)
    assert active_kid not in {row[0] for row in rows}
    assert sorted(row[2] for row in rows) == ["active", "next"]


def test_keys_cli_leaves_an_environment_secret_alone(live_server_factory, secret_key):
    server = live_server_factory(secret_key=secret_key)
    keys_dir = Path(server.env["ISSUER_KEYS_DIR"])
    refused = server.cli("keys", "rotate", check=False)
    assert refused.returncode == 2
    assert "ISSUER_SECRET_KEY" in refused.stderr
    assert not (keys_dir / MANIFEST_NAME).exists()


def add_key_whose_kid_starts_with_a_dash(keys_dir: Path) -> str:
    """A thumbprint is base64url: one in 64 begins with '-'. Make one and add it."""
    for _ in range(5000):
        key = keystore.generate_key("ES256")
        kid = key_id(key)
        if kid.startswith("-"):
            break
    else:  # pragma: no cover - (63/64)**5000
        raise AssertionError("no dash-led thumbprint found")
    name = "es256-" + hashlib.sha256(kid.encode()).hexdigest()[:16] + ".pem"
    path = keys_dir / name
    path.write_bytes(key.as_pem(private=True))
    path.chmod(0o600)
    data = json.loads(manifest_bytes(keys_dir))
    data["keys"].append(
        {
            "kid": kid,
            "alg": "ES256",
            "state": "previous",
            "file": name,
            "created_at": int(time.time()),
            "retire_at": int(time.time()) + 3600,
        }
    )
    (keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
    return kid


def test_keys_cli_revokes_a_kid_starting_with_a_dash(live_server_factory):
    server = live_server_factory(signing_alg="ES256")
    kid = add_key_whose_kid_starts_with_a_dash(Path(server.env["ISSUER_KEYS_DIR"]))
    done = server.cli("keys", "revoke", kid, check=False)
    assert done.returncode == 0, done.stderr
    assert kid not in {row[0] for row in keys_table(server)}
