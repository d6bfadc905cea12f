"""OpenID Connect over HTTP: ID tokens (OIDC Core §2, §3.1.3.3), UserInfo (§5.3), and a
discovery document whose every advertised item is exercised against the server.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, OctKey
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components, build_key_manager
from issuer.errors import TokenError
from issuer.models import AuthMethod
from issuer.store import migrate
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, add_client, add_user
from tests.conftest import login as password_grant
from tests.test_http_endpoints import Clock
from tests.test_jwks import MODES, parts_of


def header_of(token: str) -> dict[str, Any]:
    return parts_of(token)[0]


# joserfc prefers the name Ed25519 and warns on every EdDSA verification; the wire name
# stays EdDSA (see issuer.tokens), so the warning says nothing about these tests.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

TOKEN = "/oauth/token"
USERINFO = "/userinfo"
START = 1_700_000_000
ID_TOKEN_ALGS = ["HS256", "RS256", "ES256", "EdDSA"]


class Issuer:
    """An app in one signing mode, on a hand-moved clock, with alice and client webapp."""

    def __init__(self, make_settings, mode: str) -> None:
        self.settings = make_settings(key_reload_interval=0, **MODES[mode])
        if self.settings.secret_key is None:
            build_key_manager(self.settings).ensure()
        engine = make_engine(self.settings.database_url)
        migrate.upgrade(engine)
        engine.dispose()
        self.clock = Clock(START)
        self.parts = build_components(self.settings, clock=self.clock)
        self.alice = add_user(self.parts.store)
        self.secret = add_client(self.parts.store, "webapp")
        self.http = TestClient(create_app(components=self.parts), base_url=self.settings.url)

    @property
    def alg(self) -> str:
        return self.settings.signing_alg

    def token(self, form: dict[str, str], auth: Any = None) -> Any:
        auth = auth if auth is not None else ("webapp", self.secret)
        return self.http.post(TOKEN, data=form, auth=auth)

    def login(self, auth: Any = None, **extra: str) -> dict[str, Any]:
        auth = auth if auth is not None else ("webapp", self.secret)
        return dict(password_grant(self.http, auth, ok=True, **extra))

    def refresh(self, refresh_token: str, auth: Any = None, **extra: str) -> dict[str, Any]:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
        response = self.token(form, auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def id_token_claims(self, id_token: str, client_secret: str | None = None) -> dict[str, Any]:
        """Verified the way an OIDC client does: JWKS (asymmetric) or its secret (HS256)."""
        header = header_of(id_token)
        assert header["typ"] == "JWT"
        assert header["alg"] == self.alg
        if self.alg == "HS256":
            assert "kid" not in header  # keyed with the client secret, not an issuer key
            key = OctKey.import_key((client_secret or self.secret or "").encode())
            return dict(jwt.decode(id_token, key, algorithms=["HS256"]).claims)
        jwks = KeySet.import_key_set(self.http.get("/.well-known/jwks.json").json())
        return dict(jwt.decode(id_token, jwks, algorithms=[self.alg]).claims)


@pytest.fixture(params=list(MODES))
def issuer(request, make_settings) -> Iterator[Issuer]:
    running = Issuer(make_settings, request.param)
    with running.http:
        yield running
    running.parts.close()


@pytest.fixture(params=["RS256", "ES256", "EdDSA"])
def asymmetric(request, make_settings) -> Iterator[Issuer]:
    running = Issuer(make_settings, request.param)
    with running.http:
        yield running
    running.parts.close()


@pytest.fixture
def hs256(make_settings) -> Iterator[Issuer]:
    running = Issuer(make_settings, "HS256-env-secret")
    with running.http:
        yield running
    running.parts.close()


# -- ID tokens -----------------------------------------------------------------------


def test_an_openid_login_returns_an_id_token_with_the_oidc_core_claims(issuer):
    body = issuer.login()
    claims = issuer.id_token_claims(body["id_token"])
    family = issuer.parts.tokens.verify(body["refresh_token"], "refresh")["fam"]
    assert claims == {
        "iss": issuer.settings.url,
        "sub": issuer.alice.id,
        "aud": "webapp",
        "azp": "webapp",
        "iat": START,
        "exp": START + issuer.settings.access_token_ttl,
        "auth_time": START,
        "sid": family,
    }


def test_a_refresh_returns_a_new_id_token_with_the_original_auth_time(issuer):
    first = issuer.login()
    issuer.clock.now += 600
    second = issuer.refresh(first["refresh_token"])
    issuer.clock.now += 600
    third = issuer.refresh(second["refresh_token"])
    claims = [issuer.id_token_claims(b["id_token"]) for b in (first, second, third)]
    assert [c["auth_time"] for c in claims] == [START, START, START]
    assert [c["iat"] for c in claims] == [START, START + 600, START + 1200]
    assert len({c["sid"] for c in claims}) == 1
    assert {c["sub"] for c in claims} == {issuer.alice.id}


def test_no_id_token_without_the_openid_scope(issuer):
    body = issuer.login(scope="profile read")
    assert "id_token" not in body
    narrowed = issuer.refresh(issuer.login()["refresh_token"], scope="profile")
    assert "id_token" not in narrowed
    assert narrowed["scope"] == "profile"


def test_a_client_without_refresh_tokens_gets_an_id_token_without_sid(issuer):
    secret = add_client(issuer.parts.store, "once", grants=("password",))
    body = issuer.login(auth=("once", secret))
    assert "refresh_token" not in body
    claims = issuer.id_token_claims(body["id_token"], client_secret=secret)
    assert claims["aud"] == claims["azp"] == "once"
    assert "sid" not in claims


def test_an_id_token_is_never_accepted_as_an_access_token(issuer):
    id_token = issuer.login()["id_token"]
    with pytest.raises(TokenError):
        issuer.parts.tokens.verify(id_token)
    response = issuer.http.get(USERINFO, headers={"Authorization": f"Bearer {id_token}"})
    assert response.status_code == 401
    resource_server = add_client(issuer.parts.store, "api", grants=(), introspect=True)
    introspected = issuer.http.post(
        "/oauth/introspect", data={"token": id_token}, auth=("api", resource_server)
    )
    assert introspected.json() == {"active": False}


def test_under_hs256_the_id_token_is_keyed_with_the_client_secret_only(hs256):
    """OIDC Core §10.1: the client verifies with its own secret; the issuer's never signs it."""
    id_token = hs256.login()["id_token"]
    assert hs256.id_token_claims(id_token)["aud"] == "webapp"
    for wrong in (hs256.settings.secret_key.reveal(), secrets.token_urlsafe(32)):
        with pytest.raises(BadSignatureError):
            jwt.decode(id_token, OctKey.import_key(wrong.encode()), algorithms=["HS256"])


def test_under_hs256_a_client_secret_post_client_verifies_with_its_secret_too(hs256):
    secret = add_client(hs256.parts.store, "poster", method=AuthMethod.CLIENT_SECRET_POST)
    post = {"client_id": "poster", "client_secret": secret}
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD, **post}
    login = hs256.http.post(TOKEN, data=form).json()
    form = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"], **post}
    renewed = hs256.http.post(TOKEN, data=form).json()
    for body in (login, renewed):
        assert hs256.id_token_claims(body["id_token"], client_secret=secret)["aud"] == "poster"


def test_under_hs256_a_public_client_may_not_have_openid(hs256):
    add_client(hs256.parts.store, "spa", method=AuthMethod.NONE)
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    default = hs256.http.post(TOKEN, data={**form, "client_id": "spa"})
    assert default.status_code == 200, default.text
    assert default.json()["scope"] == "profile"  # the default scope less openid
    assert "id_token" not in default.json()
    asked = hs256.http.post(TOKEN, data={**form, "client_id": "spa", "scope": "openid"})
    assert asked.status_code == 400
    assert asked.json()["error"] == "invalid_scope"
    assert "public client" in asked.json()["error_description"]


def test_with_asymmetric_keys_a_public_client_gets_an_id_token(asymmetric):
    add_client(asymmetric.parts.store, "spa", method=AuthMethod.NONE)
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    body = asymmetric.http.post(TOKEN, data={**form, "client_id": "spa"}).json()
    claims = asymmetric.id_token_claims(body["id_token"])
    assert claims["aud"] == "spa"
    renewed = asymmetric.http.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": "spa",
        },
    ).json()
    assert asymmetric.id_token_claims(renewed["id_token"])["auth_time"] == START


# -- UserInfo (OIDC Core §5.3) -----------------------------------------------------------


def userinfo(issuer: Issuer, access_token: str) -> Any:
    return issuer.http.get(USERINFO, headers={"Authorization": f"Bearer {access_token}"})


def test_userinfo_answers_an_openid_token_with_the_id_tokens_subject(issuer):
    body = issuer.login()
    response = userinfo(issuer, body["access_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "sub": issuer.alice.id,
        "username": "alice",
        "role": "engineer",
        "preferred_username": "alice",
    }
    assert response.json()["sub"] == issuer.id_token_claims(body["id_token"])["sub"]


def test_userinfo_returns_preferred_username_only_with_the_profile_scope(issuer):
    response = userinfo(issuer, issuer.login(scope="openid read")["access_token"])
    assert response.json() == {"sub": issuer.alice.id, "username": "alice", "role": "engineer"}


def test_userinfo_refuses_a_token_without_openid_as_insufficient_scope(issuer):
    """RFC 6750 §3.1: 403, and the challenge names the scope that is missing."""
    response = userinfo(issuer, issuer.login(scope="profile read")["access_token"])
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="issuer", error="insufficient_scope"')
    assert 'scope="openid"' in challenge


# -- discovery tells the truth -----------------------------------------------------------

EXERCISED = {
    "issuer",
    "token_endpoint",
    "jwks_uri",
    "revocation_endpoint",
    "introspection_endpoint",
    "userinfo_endpoint",
    "grant_types_supported",
    "response_types_supported",
    "token_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_methods_supported",
    "introspection_endpoint_auth_methods_supported",
    "scopes_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
    "claims_supported",
    "claims_parameter_supported",
    "request_parameter_supported",
    "request_uri_parameter_supported",
}


def client_auth(method: str, client_id: str, secret: str | None) -> dict[str, Any]:
    """httpx arguments that authenticate ``client_id`` with ``method`` (RFC 6749 §2.3)."""
    if method == "client_secret_basic":
        return {"auth": (client_id, secret), "data": {}}
    if method == "client_secret_post":
        return {"data": {"client_id": client_id, "client_secret": secret}}
    assert method == "none"
    return {"data": {"client_id": client_id}}


def register(issuer: Issuer, method: str, client_id: str, **options: Any) -> str | None:
    return add_client(issuer.parts.store, client_id, method=AuthMethod(method), **options)


def post(issuer: Issuer, url: str, form: dict[str, str], how: dict[str, Any]) -> Any:
    return issuer.http.post(url, data={**form, **how["data"]}, auth=how.get("auth"))


def test_every_item_the_discovery_document_advertises_works(issuer):
    url = issuer.settings.url
    doc = issuer.http.get("/.well-known/openid-configuration").json()
    assert issuer.http.get("/.well-known/oauth-authorization-server").json() == doc
    assert set(doc) == EXERCISED, "a new advertised item needs its exercise below"
    assert doc["issuer"] == url
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}

    # Every token endpoint auth method logs in; every grant type works for it.
    assert doc["grant_types_supported"] == ["password", "refresh_token"]
    for method in doc["token_endpoint_auth_methods_supported"]:
        client_id = f"c-{method}"
        how = client_auth(method, client_id, register(issuer, method, client_id))
        login = post(issuer, doc["token_endpoint"], {**form, "scope": "read"}, how)
        assert login.status_code == 200, (method, login.text)
        renewed = post(
            issuer,
            doc["token_endpoint"],
            {"grant_type": "refresh_token", "refresh_token": login.json()["refresh_token"]},
            how,
        )
        assert renewed.status_code == 200, (method, renewed.text)

    # Every revocation method revokes the caller's own token.
    for method in doc["revocation_endpoint_auth_methods_supported"]:
        client_id = f"r-{method}"
        how = client_auth(method, client_id, register(issuer, method, client_id))
        access = post(issuer, doc["token_endpoint"], {**form, "scope": "read"}, how).json()
        revoked = post(issuer, doc["revocation_endpoint"], {"token": access["access_token"]}, how)
        assert revoked.status_code == 200, (method, revoked.text)
        assert userinfo(issuer, access["access_token"]).status_code == 401
        assert issuer.parts.store.is_denied(
            issuer.parts.tokens.decode(access["access_token"])["jti"]
        )

    # Every introspection method introspects (a resource server registered for it).
    access = issuer.login()["access_token"]
    for method in doc["introspection_endpoint_auth_methods_supported"]:
        client_id = f"i-{method}"
        secret = register(issuer, method, client_id, grants=(), introspect=True)
        how = client_auth(method, client_id, secret)
        answer = post(issuer, doc["introspection_endpoint"], {"token": access}, how)
        assert answer.status_code == 200, (method, answer.text)
        assert answer.json()["active"] is True

    # Every scope can be asked for and is granted.
    for scope in doc["scopes_supported"]:
        assert issuer.login(scope=scope)["scope"] == scope
    assert doc["response_types_supported"] == []  # no authorization endpoint, no response type

    # The ID token: signed with an advertised alg, by a key in jwks_uri when asymmetric.
    body = issuer.login()
    header = header_of(body["id_token"])
    assert header["alg"] in doc["id_token_signing_alg_values_supported"]
    jwks = issuer.http.get(doc["jwks_uri"]).json()
    if header["alg"] == "HS256":
        assert jwks == {"keys": []}
    else:
        assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    id_claims = issuer.id_token_claims(body["id_token"])

    # UserInfo answers; every advertised claim is returned by the ID token or UserInfo.
    info = issuer.http.get(
        doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {body['access_token']}"}
    ).json()
    assert set(doc["claims_supported"]) == set(id_claims) | set(info)

    # "public" subjects: every client sees the same sub for alice.
    assert doc["subject_types_supported"] == ["public"]
    other = register(issuer, "client_secret_basic", "other")
    other_claims = issuer.id_token_claims(
        issuer.login(auth=("other", other))["id_token"], client_secret=other
    )
    assert other_claims["sub"] == id_claims["sub"] == info["sub"]

    # Request objects and the claims parameter are not supported, and say so (their
    # registered defaults would claim otherwise for request_uri).
    assert doc["claims_parameter_supported"] is False
    assert doc["request_parameter_supported"] is False
    assert doc["request_uri_parameter_supported"] is False

    endpoints = [v for k, v in doc.items() if k.endswith(("_endpoint", "_uri"))]
    assert all(e.startswith(url + "/") for e in endpoints)


def test_without_the_openid_scope_discovery_advertises_no_oidc(make_settings):
    settings = make_settings(scopes="profile read", default_scope="read")
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), base_url=settings.url) as http:
            doc = http.get("/.well-known/openid-configuration").json()
    finally:
        parts.close()
    assert doc["scopes_supported"] == ["profile", "read"]
    for oidc_only in ("userinfo_endpoint", "id_token_signing_alg_values_supported"):
        assert oidc_only not in doc
