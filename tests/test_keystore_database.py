"""The database key store (``key_store = "database"``, issue 9): keys sealed with AES-GCM
under a key-encryption key, the same timeline as ``keys/`` (one KeyManager), readers
that reload within ``key_reload_interval``, a database lock around every change, KEK
rotation by ``rewrap``, and a database that never holds a private key in clear.

Store-level tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import OctKey
from sqlalchemy import Engine, MetaData, Table, inspect, select, text, update
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components, build_key_manager, build_key_store
from issuer.errors import ConfigError, KeyStoreError
from issuer.keystore import (
    KeyManager,
    KeyState,
    ReloadingKeyStore,
    RotationTooSoonError,
    Sealer,
    kek_id,
)
from issuer.keystore.material import serialize_key
from issuer.keystore.sealing import associated_data
from issuer.sensitive import parse_kek
from issuer.store import migrate
from issuer.store.configured import open_migrated_store
from issuer.store.keys import DatabaseKeyStorage
from issuer.store.schema import key_set, signing_keys
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, add_client, add_user
from tests.keystore_support import START, FakeClock, by_state, only, token_service

# Fixed, so parallel workers collect the same test ids; random enough for AES.
KEK_A = hashlib.sha256(b"test KEK A").digest()
KEK_B = hashlib.sha256(b"test KEK B").digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- sealing (no database) -----------------------------------------------------


def test_sealed_material_opens_only_for_its_own_kid_and_alg() -> None:
    sealer = Sealer(KEK_A)
    sealed = sealer.seal(b"private bytes", kid="k1", alg="ES256")
    assert b"private bytes" not in sealed
    assert sealer.open(sealed, kid="k1", alg="ES256", sealed_by=kek_id(KEK_A)) == b"private bytes"
    for kid, alg in (("k2", "ES256"), ("k1", "RS256")):
        with pytest.raises(KeyStoreError, match="altered or copied"):
            sealer.open(sealed, kid=kid, alg=alg, sealed_by=kek_id(KEK_A))
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(KeyStoreError, match="altered or copied"):
        sealer.open(tampered, kid="k1", alg="ES256", sealed_by=kek_id(KEK_A))
    # Two seals of one plaintext differ (fresh nonce each time).
    assert sealer.seal(b"x", kid="k", alg="ES256") != sealer.seal(b"x", kid="k", alg="ES256")
    # The associated data separates kid and alg: ("a\x00b", c) is not ("a", "b\x00c").
    assert associated_data("k1", "ES256") != associated_data("k1\x00ES", "256")


def test_a_wrong_kek_is_named_by_its_id_before_any_decryption() -> None:
    sealed = Sealer(KEK_A).seal(b"secret", kid="k1", alg="HS256")
    with pytest.raises(KeyStoreError) as refused:
        Sealer(KEK_B).open(sealed, kid="k1", alg="HS256", sealed_by=kek_id(KEK_A))
    message = str(refused.value)
    assert kek_id(KEK_A) in message and kek_id(KEK_B) in message
    assert "\n" not in message and "issuer keys rewrap" in message
    # The id names the KEK without revealing it.
    assert len(kek_id(KEK_A)) == 16 and kek_id(KEK_A) not in KEK_A.hex()
    # A sealer holding the old KEK as well opens both.
    both = Sealer(KEK_B, [KEK_A])
    assert both.open(sealed, kid="k1", alg="HS256", sealed_by=kek_id(KEK_A)) == b"secret"


@pytest.mark.parametrize(
    "text_form",
    [
        base64.b64encode(KEK_A).decode(),
        base64.urlsafe_b64encode(KEK_A).decode().rstrip("="),
        KEK_A.hex(),
        KEK_A.hex().upper(),
        "  " + base64.b64encode(KEK_A).decode() + "\n",
    ],
    ids=["base64", "base64url-unpadded", "hex", "HEX", "with-whitespace"],
)
def test_a_kek_is_32_bytes_in_base64_or_hex(text_form: str) -> None:
    assert parse_kek(text_form) == KEK_A


@pytest.mark.parametrize(
    "bad",
    ["correct horse battery staple", base64.b64encode(b"x" * 31).decode(), "ab" * 33, ""],
)
def test_anything_else_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ValueError, match="32 random bytes in base64 or hex") as refused:
        parse_kek(bad)
    assert (bad.strip() or "\x00") not in str(refused.value)


def test_settings_want_a_valid_kek_for_the_database_key_store(make_settings) -> None:
    with pytest.raises(ConfigError) as missing:
        make_settings(key_store="database")
    assert missing.value.problems == [
        "key_encryption_key: key_store = database needs ISSUER_KEY_ENCRYPTION_KEY or "
        "ISSUER_KEY_ENCRYPTION_KEY_FILE (generate one: openssl rand -base64 32)"
    ]
    with pytest.raises(ConfigError) as malformed:
        make_settings(key_store="database", key_encryption_key="hunter2-hunter2")
    [problem] = malformed.value.problems
    assert "ISSUER_KEY_ENCRYPTION_KEY must be 32 random bytes" in problem
    assert "hunter2" not in problem
    settings = make_settings(key_store="DATABASE", key_encryption_key=b64(KEK_A))
    assert settings.key_store == "database"
    assert b64(KEK_A) not in repr(settings)
    assert make_settings().key_store == "directory"


def test_the_kek_may_come_from_a_file(make_settings, tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(KEK_A.hex() + "\n")
    settings = make_settings(key_store="database", key_encryption_key_file=str(path))
    assert settings.key_encryption_key is not None
    assert parse_kek(settings.key_encryption_key.reveal()) == KEK_A
    with pytest.raises(ConfigError, match="not both"):
        make_settings(
            key_store="database", key_encryption_key_file=str(path), key_encryption_key=b64(KEK_A)
        )


# -- the store, on SQLite and PostgreSQL ----------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def manager_for(engine: Engine, sealer: Sealer, clock: FakeClock, alg: str = "ES256") -> KeyManager:
    return KeyManager(
        DatabaseKeyStorage(engine, sealer),
        alg,
        jwks_max_age=60,
        retire_after=3600,
        rsa_key_size=2048,
        reload_interval=0,
        clock=clock,
    )


def reader_for(
    engine: Engine, sealer: Sealer, clock: FakeClock, alg: str = "ES256"
) -> ReloadingKeyStore:
    return ReloadingKeyStore(
        DatabaseKeyStorage(engine, sealer), alg, reload_interval=0, clock=clock
    )


def test_the_timeline_is_the_directory_stores(engine: Engine) -> None:
    clock = FakeClock()
    manager = manager_for(engine, Sealer(KEK_A), clock)
    first = manager.ensure()
    assert first is not None and first.activated is not None
    assert manager.ensure() is None
    records = manager.records()
    active, upcoming = only(records, KeyState.ACTIVE), only(records, KeyState.NEXT)
    assert active.kid == first.activated and upcoming.published_at == START

    with pytest.raises(RotationTooSoonError):
        manager.rotate()
    clock.advance(manager.lead_time("ES256"))
    result = manager.rotate()
    assert result.activated == upcoming.kid and result.demoted == [active.kid]
    records = manager.records()
    previous = only(records, KeyState.PREVIOUS)
    assert (
        previous.kid == active.kid
        and previous.retire_at == START + manager.lead_time("ES256") + 3600 + manager.propagation
    )

    clock.advance(4000)
    result = manager.rotate(force=True)
    assert active.kid in result.retired
    assert active.kid not in {r.kid for r in manager.records()}
    with engine.connect() as conn:
        kids = set(conn.execute(select(signing_keys.c.kid)).scalars())
    assert kids == {r.kid for r in manager.records()}


def test_readers_pick_up_a_rotation_and_decrypt_only_new_keys(engine: Engine) -> None:
    clock = FakeClock()
    manager = manager_for(engine, Sealer(KEK_A), clock)
    manager.ensure()
    sealer = Sealer(KEK_A)
    opened: list[str] = []
    real_open = sealer.open

    def counting(sealed: bytes, *, kid: str, alg: str, sealed_by: str) -> bytes:
        opened.append(kid)
        return real_open(sealed, kid=kid, alg=alg, sealed_by=sealed_by)

    sealer.open = counting  # type: ignore[method-assign]
    keys = reader_for(engine, sealer, clock)
    tokens = token_service(keys, clock)
    before = keys.current()
    token, _ = tokens.create_access_token({"sub": "alice"})
    assert sorted(opened) == sorted(r.kid for r in manager.records())
    opened.clear()

    keys.current()
    assert opened == []  # nothing changed: the generation row only

    result = manager.rotate(force=True)
    after = keys.current()
    assert opened == result.created  # only the new next key was decrypted
    assert after.signing is not None and after.signing.kid == result.activated
    assert after.jwks_bytes != before.jwks_bytes
    assert tokens.verify(token)["sub"] == "alice"  # the previous key still verifies


def test_changes_are_serialized_by_the_database_lock(engine: Engine) -> None:
    clock = FakeClock()
    manager_for(engine, Sealer(KEK_A), clock).ensure()
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            manager_for(engine, Sealer(KEK_A), clock).rotate(force=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    records = manager_for(engine, Sealer(KEK_A), clock).records()
    assert len(by_state(records, KeyState.ACTIVE)) == 1
    assert len(by_state(records, KeyState.NEXT)) == 1
    assert len(by_state(records, KeyState.PREVIOUS)) == 4  # one per rotation, none lost
    with engine.connect() as conn:
        assert conn.execute(select(key_set.c.generation)).scalar() == 5


def test_a_row_copied_onto_another_key_does_not_open(engine: Engine) -> None:
    clock = FakeClock()
    manager = manager_for(engine, Sealer(KEK_A), clock)
    manager.ensure()
    records = manager.records()
    active, upcoming = only(records, KeyState.ACTIVE), only(records, KeyState.NEXT)
    with engine.begin() as conn:
        stolen = conn.execute(
            select(signing_keys.c.sealed).where(signing_keys.c.kid == upcoming.kid)
        ).scalar_one()
        conn.execute(
            update(signing_keys).where(signing_keys.c.kid == active.kid).values(sealed=stolen)
        )
    with pytest.raises(KeyStoreError, match="altered or copied"):
        reader_for(engine, Sealer(KEK_A), clock).current()


def test_rewrap_reseals_every_key_under_the_new_kek_in_one_go(engine: Engine) -> None:
    clock = FakeClock()
    old = manager_for(engine, Sealer(KEK_A), clock)
    old.ensure()
    old.rotate(force=True)
    kids = {r.kid for r in old.records()}
    running = reader_for(engine, Sealer(KEK_A), clock)  # a replica on the old KEK
    jwks = running.current().jwks_bytes

    # Without the old KEK, nothing changes and the message says what to do.
    with pytest.raises(KeyStoreError, match="ISSUER_KEY_ENCRYPTION_KEY_OLD"):
        DatabaseKeyStorage(engine, Sealer(KEK_B)).rewrap()
    with pytest.raises(KeyStoreError, match=kek_id(KEK_A)):
        reader_for(engine, Sealer(KEK_B), clock).current()
    with pytest.raises(KeyStoreError, match="sealed with key-encryption key"):
        manager_for(engine, Sealer(KEK_B), clock).rotate(force=True)  # would mix KEKs

    storage = DatabaseKeyStorage(engine, Sealer(KEK_B, [KEK_A]))
    assert storage.rewrap() == len(kids)
    assert storage.rewrap() == 0  # done: running it again changes nothing
    with engine.connect() as conn:
        assert set(conn.execute(select(signing_keys.c.kek_id)).scalars()) == {kek_id(KEK_B)}

    fresh = reader_for(engine, Sealer(KEK_B), clock).current()
    assert set(fresh.verifying) == kids and fresh.jwks_bytes == jwks
    assert running.current().jwks_bytes == jwks  # parsed keys stay in force
    with pytest.raises(KeyStoreError, match=kek_id(KEK_B)):
        reader_for(engine, Sealer(KEK_A), clock).current()


def test_the_database_never_holds_a_private_key_in_clear(engine: Engine) -> None:
    clock = FakeClock()
    manager = manager_for(engine, Sealer(KEK_A), clock, alg="HS256")
    manager.ensure()
    clock.advance(10)
    manager.rotate(force=True)
    manager.rotate(alg="ES256")  # staged switch: an ES256 next key
    manager.rotate(force=True)
    manager.rotate(alg="RS256")
    manager.rotate(force=True)
    manager.rotate(alg="EdDSA")
    records = manager.records()
    assert {r.alg for r in records} == {"HS256", "ES256", "RS256", "EdDSA"}

    # Every private key, as its plaintext serializations and raw values.
    loaded = reader_for(engine, Sealer(KEK_A), clock, alg="RS256").current()
    forbidden: list[bytes] = [b"-----BEGIN", b"PRIVATE KEY"]
    for key in loaded.verifying.values():
        forbidden.append(serialize_key(key.key).strip())
        if isinstance(key.key, OctKey):
            forbidden.append(key.key.raw_value)
        else:
            private = key.key.as_dict(private=True)
            for member in ("d", "p", "q"):
                if member in private:
                    value = str(private[member])
                    forbidden.append(value.encode())
                    forbidden.append(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert len(loaded.verifying) == len(records)

    cells = dump_every_cell(engine)
    assert any(b"ES256" in cell for cell in cells)  # the scan does read the key tables
    for cell in cells:
        for secret in forbidden:
            assert secret not in cell
    assert KEK_A not in b"".join(cells) and b64(KEK_A).encode() not in b"".join(cells)


def dump_every_cell(engine: Engine) -> list[bytes]:
    """Every value of every column of every table, as bytes (text as UTF-8)."""
    cells: list[bytes] = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            reflected = Table(table, MetaData(), autoload_with=conn)
            for row in conn.execute(select(reflected)):
                for value in row:
                    if value is None:
                        continue
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        cells.append(bytes(value))
                    else:
                        cells.append(str(value).encode())
    return cells


# -- the app on the database key store ------------------------------------------

LOGIN = {"grant_type": "password", "username": "alice", "password": PASSWORD}


@pytest.fixture
def db_settings(make_settings, database_url: str, engine: Engine):
    return make_settings(
        database_url=database_url,
        key_store="database",
        key_encryption_key=b64(KEK_A),
        signing_alg="ES256",
        secret_key=None,
        key_reload_interval=0,
    )


def test_the_app_signs_with_database_keys_and_no_keys_directory(db_settings) -> None:
    store = open_migrated_store(db_settings)
    try:
        with pytest.raises(KeyStoreError, match="no active ES256 key in the database"):
            build_key_store(db_settings, store)
    finally:
        store.close()
    ensure_keys(db_settings)
    parts = build_components(db_settings)
    try:
        add_user(parts.store, "alice")
        secret = add_client(parts.store, "webapp")
        with TestClient(create_app(components=parts), base_url=db_settings.url) as client:
            response = client.post("/oauth/token", data=LOGIN, auth=("webapp", secret))
            assert response.status_code == 200, response.text
            header = json.loads(
                base64.urlsafe_b64decode(response.json()["access_token"].split(".")[0] + "==")
            )
            jwks = client.get("/.well-known/jwks.json").json()
            assert header["kid"] in {k["kid"] for k in jwks["keys"]}
            assert client.get("/readyz").status_code == 200
    finally:
        parts.close()
    assert not db_settings.keys_dir.exists()


def ensure_keys(settings) -> None:
    """`issuer init`'s part: the first keys, in the database."""
    store = open_migrated_store(settings)
    try:
        build_key_manager(settings, store=store).ensure()
    finally:
        store.close()


def test_no_signing_key_in_the_database_is_503_and_readyz_names_the_fix(db_settings) -> None:
    ensure_keys(db_settings)
    parts = build_components(db_settings)
    try:
        add_user(parts.store, "alice")
        secret = add_client(parts.store, "webapp")
        with TestClient(create_app(components=parts), base_url=db_settings.url) as client:
            auth = ("webapp", secret)
            assert client.post("/oauth/token", data=LOGIN, auth=auth).status_code == 200
            with parts.store.engine.begin() as conn:  # every active key removed by hand
                conn.execute(
                    update(signing_keys)
                    .where(signing_keys.c.state == "active")
                    .values(state="previous", retire_at=2**40)
                )
                conn.execute(update(key_set).values(generation=key_set.c.generation + 1))
            response = client.post("/oauth/token", data=LOGIN, auth=auth)
            ready = client.get("/readyz")
    finally:
        parts.close()
    assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": True, "signing_key": False}
    assert "issuer keys rotate" in ready.json()["reasons"]["signing_key"]


def test_a_dropped_database_keeps_the_last_good_keys_and_answers_503(db_settings) -> None:
    ensure_keys(db_settings)
    parts = build_components(db_settings)
    try:
        add_user(parts.store, "alice")
        secret = add_client(parts.store, "webapp")
        with TestClient(create_app(components=parts), base_url=db_settings.url) as client:
            auth = ("webapp", secret)
            assert client.post("/oauth/token", data=LOGIN, auth=auth).status_code == 200
            jwks = client.get("/.well-known/jwks.json").content
            with parts.store.engine.begin() as conn:
                for table in inspect(conn).get_table_names():
                    conn.execute(text(f'DROP TABLE "{table}"'))
            response = client.post("/oauth/token", data=LOGIN, auth=auth)
            ready = client.get("/readyz")
            assert client.get("/.well-known/jwks.json").content == jwks
    finally:
        parts.close()
    assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": False, "signing_key": True}
