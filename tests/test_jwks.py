"""JWKS, discovery and algorithm pinning, for every signing configuration, over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import Components, build_components, build_key_manager
from issuer.errors import BadSignatureError, TokenError
from issuer.keystore import KeyState, read_manifest
from issuer.settings import Settings
from issuer.store import migrate
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, add_client, add_user

# Every member a published JWK may have, per key type; anything else is a leak.
ALLOWED_MEMBERS = {
    "RSA": {"kty", "n", "e", "kid", "use", "alg"},
    "EC": {"kty", "crv", "x", "y", "kid", "use", "alg"},
    "OKP": {"kty", "crv", "x", "kid", "use", "alg"},
}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}
KTY_OF_ALG = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
ASYMMETRIC = ("RS256", "ES256", "EdDSA")

MODES = {
    "HS256-keys-dir": {"signing_alg": "HS256", "secret_key": None},
    "HS256-env-secret": {"signing_alg": "HS256"},
    "RS256": {"signing_alg": "RS256", "secret_key": None, "rsa_key_size": 2048},
    "ES256": {"signing_alg": "ES256", "secret_key": None},
    "EdDSA": {"signing_alg": "EdDSA", "secret_key": None},
}


@dataclass
class Issuer:
    settings: Settings
    parts: Components
    http: TestClient
    client_secret: str

    @property
    def alg(self) -> str:
        return self.settings.signing_alg

    @property
    def uses_keys_dir(self) -> bool:
        return self.settings.secret_key is None

    def password_grant(self) -> dict[str, Any]:
        response = self.http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": "alice", "password": PASSWORD},
            auth=("webapp", self.client_secret),
        )
        assert response.status_code == 200, response.text
        return response.json()

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.http.post(
            "/oauth/introspect", data={"token": token}, auth=("webapp", self.client_secret)
        )
        assert response.status_code == 200, response.text
        return response.json()

    def userinfo_status(self, token: str) -> int:
        return self.http.get("/userinfo", headers={"Authorization": f"Bearer {token}"}).status_code

    def assert_refused(self, token: str) -> None:
        """Refused by every verifying path the issuer has: API, introspection, userinfo."""
        with pytest.raises(TokenError):
            self.parts.tokens.verify(token)
        assert self.introspect(token) == {"active": False}
        assert self.userinfo_status(token) == 401

    def rotate(self) -> None:
        build_key_manager(self.settings).rotate(force=True)


def start_issuer(make_settings, **overrides) -> Issuer:
    settings = make_settings(key_reload_interval=0, **overrides)
    if settings.secret_key is None:
        build_key_manager(settings).ensure()
    migrate.upgrade(make_engine(settings.database_url))
    parts = build_components(settings)
    add_user(parts.store)
    secret = add_client(parts.store)
    assert secret is not None
    http = TestClient(create_app(components=parts), base_url=settings.url)
    return Issuer(settings, parts, http, secret)


@pytest.fixture(params=list(MODES))
def issuer(request, make_settings):
    running = start_issuer(make_settings, **MODES[request.param])
    with running.http:
        yield running
    running.parts.close()


@pytest.fixture(params=ASYMMETRIC)
def asymmetric_issuer(request, make_settings):
    running = start_issuer(make_settings, **MODES[request.param])
    with running.http:
        yield running
    running.parts.close()


@pytest.fixture(params=[mode for mode in MODES if mode != "HS256-env-secret"])
def managed_issuer(request, make_settings):
    """An issuer whose keys live in keys/ (an environment secret never rotates)."""
    running = start_issuer(make_settings, **MODES[request.param])
    with running.http:
        yield running
    running.parts.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
    )


def forge(header: dict[str, Any], claims: dict[str, Any], sign) -> str:
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return signing_input + "." + b64url(sign(signing_input.encode()))


def hs256_with(secret: bytes):
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def check_jwks_document(body: dict[str, Any], alg: str) -> None:
    assert set(body) == {"keys"}
    for jwk in body["keys"]:
        kty = jwk["kty"]
        assert kty in ALLOWED_MEMBERS, f"{kty} keys are never published"
        assert set(jwk) <= ALLOWED_MEMBERS[kty], set(jwk) - ALLOWED_MEMBERS[kty]
        assert not set(jwk) & PRIVATE_MEMBERS
        assert jwk["use"] == "sig"
        assert kty == KTY_OF_ALG[jwk["alg"]]
        assert isinstance(jwk["kid"], str)
        assert jwk["kid"]
    if alg == "HS256":
        assert body == {"keys": []}


# -- JWKS ----------------------------------------------------------------------


def test_jwks_publishes_only_public_members_of_asymmetric_keys(issuer):
    for _ in range(2):  # with next and active, then with previous keys too
        response = issuer.http.get("/.well-known/jwks.json")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        check_jwks_document(body, issuer.alg)
        if issuer.alg != "HS256":
            records = read_manifest(issuer.settings.keys_dir)
            assert {jwk["kid"] for jwk in body["keys"]} == {r.kid for r in records}
            assert {jwk["alg"] for jwk in body["keys"]} == {issuer.alg}
        if issuer.uses_keys_dir:
            issuer.rotate()
    if issuer.alg != "HS256":
        assert len(body["keys"]) == 3  # previous, active and next


def test_jwks_is_cacheable_for_no_longer_than_the_rotation_lead_time(issuer):
    response = issuer.http.get("/.well-known/jwks.json")
    directives = [d.strip() for d in response.headers["cache-control"].split(",")]
    assert "public" in directives
    max_age = int(next(d for d in directives if d.startswith("max-age=")).split("=")[1])
    assert max_age == issuer.settings.jwks_max_age
    if issuer.alg in ASYMMETRIC:
        assert max_age <= build_key_manager(issuer.settings).lead_time(issuer.alg)


def test_jwks_answers_304_to_a_matching_etag_and_200_after_a_change(issuer):
    first = issuer.http.get("/.well-known/jwks.json")
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = issuer.http.get("/.well-known/jwks.json", headers={"If-None-Match": header})
        assert cached.status_code == 304, header
        assert cached.content == b""
        assert cached.headers["etag"] == etag
        assert "max-age=" in cached.headers["cache-control"]
    stale = issuer.http.get("/.well-known/jwks.json", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200
    assert stale.content == first.content

    if issuer.alg != "HS256":
        issuer.rotate()
        changed = issuer.http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        check_jwks_document(changed.json(), issuer.alg)


# -- discovery and tokens ------------------------------------------------------


def test_discovery_lists_the_signing_algorithm_in_use(issuer):
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        metadata = issuer.http.get(path).json()
        assert metadata["id_token_signing_alg_values_supported"] == [issuer.alg]
        assert metadata["jwks_uri"] == issuer.settings.url + "/.well-known/jwks.json"


def test_issued_tokens_are_signed_by_the_active_key_with_its_algorithm(issuer):
    tokens = issuer.password_grant()
    header, claims = parts_of(tokens["access_token"])
    assert header["alg"] == issuer.alg
    assert header["typ"] == "at+jwt"
    signing = issuer.parts.keys.current().signing
    assert signing is not None
    assert header["kid"] == signing.kid
    if issuer.uses_keys_dir:
        active = [r for r in read_manifest(issuer.settings.keys_dir) if r.state is KeyState.ACTIVE]
        assert [r.kid for r in active] == [header["kid"]]
    assert parts_of(tokens["refresh_token"])[0]["kid"] == header["kid"]
    assert issuer.introspect(tokens["access_token"])["active"] is True
    assert issuer.userinfo_status(tokens["access_token"]) == 200
    assert claims["type"] == "access"


def test_tokens_of_a_previous_key_still_verify_after_a_rotation(managed_issuer):
    issuer = managed_issuer
    before = issuer.password_grant()
    issuer.rotate()
    after = issuer.password_grant()
    assert parts_of(after["access_token"])[0]["kid"] != parts_of(before["access_token"])[0]["kid"]
    for token in (before["access_token"], after["access_token"]):
        assert issuer.introspect(token)["active"] is True
        assert issuer.userinfo_status(token) == 200
    refreshed = issuer.http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]},
        auth=("webapp", issuer.client_secret),
    )
    assert refreshed.status_code == 200, refreshed.text


# -- confusion attacks ---------------------------------------------------------


def public_pems(issuer: Issuer) -> list[bytes]:
    """The public keys as an attacker gets them (from the JWKS), in PEM form."""
    pems = []
    for record in read_manifest(issuer.settings.keys_dir):
        private = load_pem_private_key(
            (issuer.settings.keys_dir / record.file).read_bytes(), password=None
        )
        pems.append(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pems


def test_hs256_token_keyed_with_the_public_key_pem_is_refused(asymmetric_issuer):
    issuer = asymmetric_issuer
    header, claims = parts_of(issuer.password_grant()["access_token"])
    assert header["alg"] == issuer.alg
    for pem in public_pems(issuer):
        for secret in (pem, pem.strip()):
            forged = forge({**header, "alg": "HS256"}, claims, hs256_with(secret))
            with pytest.raises(BadSignatureError):
                issuer.parts.tokens.verify(forged)
            issuer.assert_refused(forged)


def test_token_with_alg_none_is_refused(issuer):
    header, claims = parts_of(issuer.password_grant()["access_token"])
    for alg in ("none", "None", "NONE"):
        unsigned = forge({**header, "alg": alg}, claims, lambda _: b"")
        issuer.assert_refused(unsigned)
        issuer.assert_refused(unsigned.rsplit(".", 1)[0] + ".")


def test_token_whose_alg_differs_from_its_keys_algorithm_is_refused(issuer):
    token = issuer.password_grant()["access_token"]
    header, claims = parts_of(token)
    signature = token.rsplit(".", 1)[1]
    for alg in ("HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "EdDSA"):
        if alg == issuer.alg:
            continue
        relabelled = forge({**header, "alg": alg}, claims, lambda _: b"")
        relabelled = relabelled.rsplit(".", 1)[0] + "." + signature
        with pytest.raises(BadSignatureError):
            issuer.parts.tokens.verify(relabelled)
        issuer.assert_refused(relabelled)


def test_kid_that_looks_like_a_path_is_just_an_unknown_kid(issuer):
    header, claims = parts_of(issuer.password_grant()["access_token"])
    for kid in ("../../etc/passwd", "/etc/passwd", "manifest.json", ".lock", ""):
        forged = forge({**header, "kid": kid}, claims, hs256_with(b"x" * 32))
        with pytest.raises(BadSignatureError):
            issuer.parts.tokens.verify(forged)
        issuer.assert_refused(forged)


def test_hs256_token_signed_with_another_secret_is_refused(issuer):
    header, claims = parts_of(issuer.password_grant()["access_token"])
    forged = forge({**header, "alg": "HS256"}, claims, hs256_with(b"guess" * 10))
    with pytest.raises(BadSignatureError):
        issuer.parts.tokens.verify(forged)
    issuer.assert_refused(forged)


def test_revoked_key_tokens_are_refused_and_its_jwk_withdrawn(managed_issuer):
    issuer = managed_issuer
    token = issuer.password_grant()["access_token"]
    kid = parts_of(token)[0]["kid"]
    assert issuer.introspect(token)["active"] is True
    build_key_manager(issuer.settings).revoke(kid)
    issuer.assert_refused(token)
    kids = {jwk["kid"] for jwk in issuer.http.get("/.well-known/jwks.json").json()["keys"]}
    assert kid not in kids
    fresh = issuer.password_grant()["access_token"]
    assert parts_of(fresh)[0]["kid"] != kid
    assert issuer.introspect(fresh)["active"] is True
