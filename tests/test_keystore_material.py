"""Key material: generated key types and sizes, PEM files, RFC 7638 kids, public JWK members."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import OctKey, RSAKey

from issuer.compose import build_key_manager
from issuer.errors import KeyStoreError
from issuer.keystore import (
    DirectoryKeyStore,
    KeyRecord,
    KeyState,
    LoadedKey,
    generate_key,
    key_id,
    public_jwk,
    read_manifest,
)
from issuer.keystore.material import (
    HS_SECRET_BYTES,
    MIN_HS_SECRET_BYTES,
    PUBLIC_MEMBERS,
    check_key,
    deserialize_key,
    public_members,
    serialize_key,
)


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


def test_default_rsa_keys_are_2048_bits(make_settings):
    settings = make_settings(signing_alg="RS256", secret_key=None)
    assert settings.rsa_key_size == 2048
    key = generate_key("RS256")
    assert key.raw_value.key_size == 2048


@pytest.mark.parametrize(("configured", "bits"), [(None, 2048), (3072, 3072)])
def test_a_new_key_sets_rsa_keys_have_the_configured_size(make_settings, configured, bits):
    overrides = {} if configured is None else {"rsa_key_size": configured}
    settings = make_settings(signing_alg="RS256", secret_key=None, **overrides)
    build_key_manager(settings).ensure()
    records = read_manifest(settings.keys_dir)
    assert records
    for record in records:
        data = (settings.keys_dir / record.file).read_bytes()
        key = load_pem_private_key(data, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == bits


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


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_key_file_reads_back_as_the_same_key(alg):
    key = generate_key(alg, rsa_key_size=2048)
    again = deserialize_key(alg, serialize_key(key))
    assert again.thumbprint() == key.thumbprint() and again.is_private
    check_key(again, alg=alg, kid=key_id(key), where="test")


def test_an_hs256_secret_file_reads_back_as_the_same_secret():
    key = generate_key("HS256")
    assert len(key.raw_value) == HS_SECRET_BYTES
    assert deserialize_key("HS256", serialize_key(key)).raw_value == key.raw_value


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA", "HS256"])
def test_an_unparsable_key_file_is_refused_without_echoing_it(alg):
    garbage = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n\xff"
    with pytest.raises(KeyStoreError, match=f"cannot parse a {alg} key") as caught:
        deserialize_key(alg, garbage)
    assert "bm90IGEga2V5" not in str(caught.value)


@pytest.mark.parametrize(
    ("alg", "file_alg", "says"),
    [
        ("ES256", "EdDSA", "needs curve P-256"),
        ("EdDSA", "ES256", "needs curve Ed25519"),
    ],
)
def test_a_key_of_the_wrong_curve_is_refused(alg, file_alg, says):
    key = generate_key(file_alg)
    with pytest.raises(KeyStoreError, match=says):
        check_key(key, alg=alg, kid=key_id(key), where="key file x.pem")


def test_rsa_keys_under_2048_bits_are_neither_made_nor_accepted():
    with pytest.raises(KeyStoreError, match="2048"):
        generate_key("RS256", rsa_key_size=1024)
    with pytest.warns(match="Key size should be >= 2048"):  # joserfc warns too
        small = RSAKey.generate_key(1024, private=True)
    with pytest.raises(KeyStoreError, match="2048"):
        check_key(small, alg="RS256", kid=key_id(small), where="key file x.pem")


def test_a_short_hs256_secret_file_is_refused():
    short = OctKey.import_key(b"x" * (MIN_HS_SECRET_BYTES - 1))
    with pytest.raises(KeyStoreError, match=f"{MIN_HS_SECRET_BYTES} bytes"):
        check_key(short, alg="HS256", kid="hs-1", where="key file x.key")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_public_jwk_carries_only_public_members_kid_use_and_alg(alg):
    key = generate_key(alg, rsa_key_size=2048)
    record = KeyRecord(kid=key_id(key), alg=alg, state=KeyState.ACTIVE, file="", created_at=0)
    jwk = public_jwk(LoadedKey(record, key))
    kty = jwk["kty"]
    assert set(jwk) == {*PUBLIC_MEMBERS[kty], "kid", "use", "alg"}
    assert jwk["kid"] == key_id(key) and jwk["use"] == "sig" and jwk["alg"] == alg
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)


def test_a_secret_is_never_published():
    key = generate_key("HS256")
    record = KeyRecord(kid=key_id(key), alg="HS256", state=KeyState.ACTIVE, file="", created_at=0)
    with pytest.raises(KeyStoreError, match="never published"):
        public_jwk(LoadedKey(record, key))
    with pytest.raises(KeyStoreError, match="never published"):
        public_members(key)


def test_an_unsupported_algorithm_is_refused():
    with pytest.raises(KeyStoreError, match="unsupported"):
        generate_key("PS256")
