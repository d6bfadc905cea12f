"""The endpoints around the token endpoint, over HTTP: revocation (RFC 7009),
introspection (RFC 7662), userinfo (RFC 6750), JWKS, discovery (RFC 8414) and health.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
from functools import partial
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components
from issuer.models import AuthMethod
from issuer.store import migrate
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, add_client, add_user
from tests.conftest import login as password_grant

TOKEN = "/oauth/token"
REVOKE = "/oauth/revoke"
INTROSPECT = "/oauth/introspect"
USERINFO = "/userinfo"


@pytest.fixture
def resource_server(components):
    """A confidential client that introspects tokens for an API (``--introspect``)."""
    return ("api", add_client(components.store, "api", grants=(), introspect=True))


@pytest.fixture
def login(client, alice, basic):
    """A successful password grant for alice through the Basic client: the token response."""
    return partial(password_grant, client, basic, ok=True)


def refresh(client, token: str, auth) -> object:
    return client.post(
        TOKEN, data={"grant_type": "refresh_token", "refresh_token": token}, auth=auth
    )


def introspect(client, token: str, auth, **extra: str) -> dict:
    response = client.post(INTROSPECT, data={"token": token, **extra}, auth=auth)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forged(token: str, claims_update: dict | None = None) -> str:
    """The same header and claims, signed with a secret this issuer never had."""
    header = json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    payload.update(claims_update or {})
    key = OctKey.import_key(secrets.token_bytes(48))
    return jwt.encode(header, payload, key, algorithms=["HS256"])


def unsigned(token: str) -> str:
    """The token re-encoded with ``alg: none`` and no signature."""
    header = json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))
    header["alg"] = "none"
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.{token.split('.')[1]}."


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(settings):
    """(TestClient, components, clock): an app whose tokens follow a hand-moved clock."""
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    clock = Clock(1_700_000_000)
    parts = build_components(settings, clock=clock)
    with TestClient(create_app(components=parts), base_url=settings.url) as test_client:
        yield test_client, parts, clock
    parts.close()


# -- revocation (RFC 7009) -------------------------------------------------------


def test_revoking_a_refresh_token_revokes_its_family(client, components, login, basic):
    first = login()
    second = refresh(client, first["refresh_token"], basic).json()
    response = client.post(REVOKE, data={"token": second["refresh_token"]}, auth=basic)
    assert response.status_code == 200
    assert response.json() == {}
    after = refresh(client, second["refresh_token"], basic)
    assert (after.status_code, after.json()["error"]) == (400, "invalid_grant")
    for token in (first["refresh_token"], second["refresh_token"]):
        jti = components.tokens.decode(token)["jti"]
        assert components.store.get(jti).revoked_at is not None


def test_revoking_a_spent_refresh_token_still_ends_the_session(client, login, basic):
    """A client logging out with a stale refresh token still cuts the whole family."""
    first = login()
    second = refresh(client, first["refresh_token"], basic).json()
    assert (
        client.post(REVOKE, data={"token": first["refresh_token"]}, auth=basic).status_code == 200
    )
    assert refresh(client, second["refresh_token"], basic).json()["error"] == "invalid_grant"


def test_revoking_an_access_token_logs_it_out(client, login, basic, resource_server):
    access = login()["access_token"]
    assert client.get(USERINFO, headers=bearer(access)).status_code == 200
    response = client.post(
        REVOKE, data={"token": access, "token_type_hint": "access_token"}, auth=basic
    )
    assert response.status_code == 200
    userinfo = client.get(USERINFO, headers=bearer(access))
    assert userinfo.status_code == 401
    assert 'error="invalid_token"' in userinfo.headers["www-authenticate"]
    assert introspect(client, access, resource_server) == {"active": False}


def test_revoking_an_access_token_leaves_its_refresh_token_alone(client, login, basic):
    tokens = login()
    client.post(REVOKE, data={"token": tokens["access_token"]}, auth=basic)
    assert refresh(client, tokens["refresh_token"], basic).status_code == 200


def test_a_wrong_hint_does_not_stop_revocation(client, login, basic):
    tokens = login()
    client.post(
        REVOKE,
        data={"token": tokens["refresh_token"], "token_type_hint": "access_token"},
        auth=basic,
    )
    assert refresh(client, tokens["refresh_token"], basic).status_code == 400


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "x" * 10_000, "ünïcødé"],
)
def test_revoking_an_unknown_or_garbage_token_answers_200(client, basic, token):
    response = client.post(REVOKE, data={"token": token}, auth=basic)
    assert response.status_code == 200, response.text
    assert response.json() == {}


def test_revoking_a_foreign_signed_token_answers_200_and_changes_nothing(
    client, components, login, basic
):
    tokens = login()
    fake = forged(tokens["refresh_token"])
    assert client.post(REVOKE, data={"token": fake}, auth=basic).status_code == 200
    assert (
        client.post(
            REVOKE, data={"token": unsigned(tokens["access_token"])}, auth=basic
        ).status_code
        == 200
    )
    assert refresh(client, tokens["refresh_token"], basic).status_code == 200
    assert client.get(USERINFO, headers=bearer(tokens["access_token"])).status_code == 200


def test_revoking_another_clients_token_is_refused_and_changes_nothing(
    client, components, login, basic
):
    tokens = login()
    other = ("other", add_client(components.store, "other"))
    for token in (tokens["refresh_token"], tokens["access_token"]):
        response = client.post(REVOKE, data={"token": token}, auth=other)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_grant"
    assert client.get(USERINFO, headers=bearer(tokens["access_token"])).status_code == 200
    assert refresh(client, tokens["refresh_token"], basic).status_code == 200


def test_a_public_client_can_revoke_its_own_tokens(client, components, alice):
    add_client(components.store, "spa", method=AuthMethod.NONE)
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    tokens = client.post(TOKEN, data={**form, "client_id": "spa"}).json()
    response = client.post(REVOKE, data={"token": tokens["refresh_token"], "client_id": "spa"})
    assert response.status_code == 200
    again = client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "spa",
        },
    )
    assert again.json()["error"] == "invalid_grant"


def test_revocation_requires_client_authentication(client, login, basic):
    tokens = login()
    anonymous = client.post(REVOKE, data={"token": tokens["refresh_token"]})
    assert (anonymous.status_code, anonymous.json()["error"]) == (400, "invalid_client")
    wrong = client.post(REVOKE, data={"token": tokens["refresh_token"]}, auth=("webapp", "nope"))
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert wrong.headers["www-authenticate"].startswith(
        'Basic realm="issuer", error="invalid_client"'
    )
    assert refresh(client, tokens["refresh_token"], basic).status_code == 200


def test_revocation_without_a_token_is_invalid_request(client, basic):
    response = client.post(REVOKE, data={"token_type_hint": "access_token"}, auth=basic)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_revocation_ignores_an_unknown_hint(client, login, basic):
    """RFC 7009 §2.1: the server may ignore the hint; it detects the type itself."""
    tokens = login()
    response = client.post(
        REVOKE, data={"token": tokens["refresh_token"], "token_type_hint": "id_token"}, auth=basic
    )
    assert response.status_code == 200
    assert refresh(client, tokens["refresh_token"], basic).json()["error"] == "invalid_grant"


# -- introspection (RFC 7662) --------------------------------------------------------


def test_introspecting_a_valid_access_token_shows_its_claims(
    client, components, alice, login, resource_server
):
    access = login(scope="read")["access_token"]
    body = introspect(client, access, resource_server)
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["sub"] == alice.id
    assert body["username"] == "alice"
    assert body["role"] == "engineer"
    assert body["scope"] == "read"
    assert body["client_id"] == "webapp"
    assert body["iss"] == components.settings.url
    assert body["aud"] == components.settings.audience
    assert body["exp"] - body["iat"] == 1800


def test_introspecting_a_valid_refresh_token_is_active(client, alice, login, resource_server):
    token = login()["refresh_token"]
    for hint in ({}, {"token_type_hint": "refresh_token"}, {"token_type_hint": "access_token"}):
        body = introspect(client, token, resource_server, **hint)
        assert body["active"] is True, hint
        assert "token_type" not in body  # RFC 7662 §2.2: not a token type of RFC 6749 §7.1
        assert body["sub"] == alice.id
        assert body["client_id"] == "webapp"


def test_introspecting_an_access_token_with_a_refresh_hint_still_finds_it(
    client, login, resource_server
):
    access = login()["access_token"]
    body = introspect(client, access, resource_server, token_type_hint="refresh_token")
    assert body["active"] is True
    assert body["token_type"] == "Bearer"


def test_introspecting_a_spent_or_revoked_refresh_token_is_inactive(
    client, login, basic, resource_server
):
    first = login()
    second = refresh(client, first["refresh_token"], basic).json()
    assert introspect(client, first["refresh_token"], resource_server) == {"active": False}
    assert introspect(client, second["refresh_token"], resource_server)["active"] is True
    client.post(REVOKE, data={"token": second["refresh_token"]}, auth=basic)
    assert introspect(client, second["refresh_token"], resource_server) == {"active": False}


@pytest.mark.parametrize(
    "token", ["", "garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 10_000, "ünïcødé"]
)
def test_introspecting_a_malformed_token_is_inactive(client, resource_server, token):
    assert introspect(client, token, resource_server) == {"active": False}


def test_introspecting_foreign_signed_or_unsigned_tokens_is_inactive(
    client, make_settings, alice, login, resource_server
):
    tokens = login()
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert introspect(client, forged(token), resource_server) == {"active": False}
        assert introspect(client, unsigned(token), resource_server) == {"active": False}
    other = build_components(make_settings(secret_key=secrets.token_urlsafe(48)))
    try:
        foreign, _ = other.tokens.create_access_token(
            other.tokens.access_claims_for(alice, "webapp", "read")
        )
    finally:
        other.close()
    assert introspect(client, foreign, resource_server) == {"active": False}


def test_introspecting_an_expired_token_is_inactive(clocked):
    client, parts, clock = clocked
    add_user(parts.store, "alice")
    auth = ("webapp", add_client(parts.store, "webapp"))
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    tokens = client.post(TOKEN, data=data, auth=auth).json()
    assert introspect(client, tokens["access_token"], auth)["active"] is True
    clock.now += parts.settings.access_token_ttl + parts.settings.leeway + 1
    assert introspect(client, tokens["access_token"], auth) == {"active": False}
    assert introspect(client, tokens["refresh_token"], auth)["active"] is True
    clock.now += parts.settings.refresh_token_ttl
    assert introspect(client, tokens["refresh_token"], auth) == {"active": False}
    userinfo = client.get(USERINFO, headers=bearer(tokens["access_token"]))
    assert userinfo.status_code == 401
    assert 'error="invalid_token"' in userinfo.headers["www-authenticate"]


def test_a_client_without_the_permission_sees_other_clients_tokens_as_inactive(
    client, components, login, basic
):
    """RFC 7662 §4: an ordinary client learns nothing about tokens not issued to it."""
    theirs = login()
    app_secret = add_client(components.store, "other-app")
    for token in (theirs["access_token"], theirs["refresh_token"]):
        assert introspect(client, token, ("other-app", app_secret)) == {"active": False}
    # Its own tokens, and webapp's own, it may still ask about.
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    own = client.post(TOKEN, data=data, auth=("other-app", app_secret)).json()
    assert introspect(client, own["access_token"], ("other-app", app_secret))["active"] is True
    assert introspect(client, theirs["access_token"], basic)["active"] is True


def test_a_resource_server_may_introspect_every_clients_tokens(
    client, components, login, resource_server
):
    tokens = login()
    assert introspect(client, tokens["access_token"], resource_server)["client_id"] == "webapp"
    assert introspect(client, tokens["refresh_token"], resource_server)["active"] is True


def test_introspection_refuses_a_public_client(client, components, login, alice):
    access = login()["access_token"]
    add_client(components.store, "spa", method=AuthMethod.NONE)
    response = client.post(INTROSPECT, data={"token": access, "client_id": "spa"})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client")
    assert "active" not in response.json()


def test_introspection_refuses_unauthenticated_and_wrong_secret_callers(client, login, basic):
    access = login()["access_token"]
    anonymous = client.post(INTROSPECT, data={"token": access})
    assert (anonymous.status_code, anonymous.json()["error"]) == (400, "invalid_client")
    wrong = client.post(INTROSPECT, data={"token": access}, auth=("webapp", "nope"))
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert "active" not in wrong.json()


def test_introspection_accepts_client_secret_post(client, components, login):
    access = login()["access_token"]
    secret = add_client(
        components.store, "poster", method=AuthMethod.CLIENT_SECRET_POST, introspect=True
    )
    response = client.post(
        INTROSPECT, data={"token": access, "client_id": "poster", "client_secret": secret}
    )
    assert response.status_code == 200
    assert response.json()["active"] is True


def test_introspection_ignores_an_unknown_hint(client, login, resource_server):
    """RFC 7662 §2.1: the server searches every token type whatever the hint says."""
    access = login()["access_token"]
    body = introspect(client, access, resource_server, token_type_hint="id_token")
    assert body["active"] is True


def test_introspecting_a_disabled_users_tokens_is_inactive(
    client, components, login, resource_server
):
    tokens = login()
    components.store.set_active("alice", False)
    assert introspect(client, tokens["access_token"], resource_server) == {"active": False}
    assert introspect(client, tokens["refresh_token"], resource_server) == {"active": False}
    components.store.set_active("alice", True)
    assert introspect(client, tokens["access_token"], resource_server)["active"] is True


# -- userinfo (RFC 6750) -------------------------------------------------------------


def test_userinfo_returns_the_user_behind_the_token(client, alice, login):
    access = login()["access_token"]
    response = client.get(USERINFO, headers=bearer(access))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "sub": alice.id,
        "username": "alice",
        "role": "engineer",
        "preferred_username": "alice",
    }


def test_userinfo_also_answers_post(client, alice, login):
    access = login()["access_token"]
    response = client.post(USERINFO, headers=bearer(access))
    assert response.json()["sub"] == alice.id


def test_userinfo_accepts_the_scheme_in_any_case(client, alice, login):
    access = login()["access_token"]
    response = client.get(USERINFO, headers={"Authorization": f"bearer {access}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic d2ViYXBwOnM="}, {"Authorization": "Bearer"}]
)
def test_userinfo_without_a_token_challenges_without_an_error_code(client, headers):
    """RFC 6750 §3.1: a request without credentials gets a bare challenge."""
    response = client.get(USERINFO, headers=headers)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'realm="' in challenge
    assert "error=" not in challenge
    assert "error" not in response.json()


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 10_000, "eyJhbGciOiJub25lIn0.e30."])
def test_userinfo_with_an_invalid_token_is_invalid_token(client, token):
    response = client.get(USERINFO, headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="')
    assert 'error="invalid_token"' in challenge


def test_userinfo_refuses_a_refresh_token_as_bearer(client, login):
    response = client.get(USERINFO, headers=bearer(login()["refresh_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_userinfo_refuses_forged_and_unsigned_tokens(client, login):
    access = login()["access_token"]
    for token in (forged(access), unsigned(access), forged(access, {"role": "admin"})):
        response = client.get(USERINFO, headers=bearer(token))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_userinfo_refuses_a_disabled_user(client, components, login):
    access = login()["access_token"]
    components.store.set_active("alice", False)
    response = client.get(USERINFO, headers=bearer(access))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# -- JWKS and discovery ----------------------------------------------------------------


def test_jwks_is_empty_under_hs256_and_cacheable(client):
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"keys": []}
    assert response.headers["cache-control"] == "public, max-age=300"
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    for candidate in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = client.get("/.well-known/jwks.json", headers={"If-None-Match": candidate})
        assert cached.status_code == 304, candidate
        assert cached.content == b""
        assert cached.headers["etag"] == etag
    stale = client.get("/.well-known/jwks.json", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200
    assert stale.json() == {"keys": []}


def test_jwks_max_age_follows_settings(make_settings, tmp_path):
    settings = make_settings(jwks_max_age=42)
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), base_url=settings.url) as test_client:
            response = test_client.get("/.well-known/jwks.json")
    finally:
        parts.close()
    assert response.headers["cache-control"] == "public, max-age=42"


def test_both_discovery_documents_are_the_same(client):
    oauth = client.get("/.well-known/oauth-authorization-server")
    oidc = client.get("/.well-known/openid-configuration")
    assert oauth.status_code == oidc.status_code == 200
    assert oauth.headers["content-type"].startswith("application/json")
    assert oauth.content == oidc.content


def test_discovery_describes_this_issuer(client, components):
    settings = components.settings
    doc = client.get("/.well-known/oauth-authorization-server").json()
    assert doc["issuer"] == settings.url
    assert doc["grant_types_supported"] == ["password", "refresh_token"]
    assert doc["response_types_supported"] == []
    assert doc["scopes_supported"] == list(settings.scopes)
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "none",
    }
    assert "none" not in doc["introspection_endpoint_auth_methods_supported"]
    assert doc["token_endpoint"] == settings.url + TOKEN
    assert doc["jwks_uri"] == settings.url + "/.well-known/jwks.json"
    endpoints = [v for k, v in doc.items() if k.endswith(("_endpoint", "_uri"))]
    assert len(endpoints) == 5
    assert all(url.startswith(settings.url + "/") for url in endpoints)


def test_discovery_issuer_follows_the_configured_url(make_settings):
    settings = make_settings(url="https://login.example.com")
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), base_url="http://other") as test_client:
            doc = test_client.get("/.well-known/openid-configuration").json()
    finally:
        parts.close()
    assert doc["issuer"] == "https://login.example.com"
    assert doc["token_endpoint"] == "https://login.example.com/oauth/token"


def test_every_endpoint_in_discovery_answers_at_its_path(client, login, basic, resource_server):
    doc = client.get("/.well-known/oauth-authorization-server").json()
    tokens = client.post(
        doc["token_endpoint"],
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=basic,
    )
    assert tokens.status_code == 200
    access = tokens.json()["access_token"]
    assert client.get(doc["jwks_uri"]).json() == {"keys": []}
    assert (
        client.get(doc["userinfo_endpoint"], headers=bearer(access)).json()["username"] == "alice"
    )
    assert introspect(client, access, resource_server)["active"] is True
    assert (
        client.post(
            doc["introspection_endpoint"], data={"token": access}, auth=resource_server
        ).json()["active"]
        is True
    )
    assert (
        client.post(doc["revocation_endpoint"], data={"token": access}, auth=basic).status_code
        == 200
    )
    assert client.post(
        doc["introspection_endpoint"], data={"token": access}, auth=resource_server
    ).json() == {"active": False}


def test_discovery_lists_the_signing_algorithm(client):
    doc = client.get("/.well-known/openid-configuration").json()
    assert "HS256" in json.dumps(doc)
    assert "none" not in doc.get("id_token_signing_alg_values_supported", [])


# -- health ----------------------------------------------------------------------------


def test_healthz_is_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_database_and_keys(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": True, "signing_key": True}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readyz_is_503_when_postgresql_is_unreachable(make_settings):
    settings = make_settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), base_url=settings.url) as test_client:
            ready = test_client.get("/readyz")
            alive = test_client.get("/healthz")
    finally:
        parts.close()
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "not ready",
        "checks": {"database": False, "signing_key": True},
        "reasons": {
            "database": "the database is unreachable or not initialized: check database_url, "
            "then run `issuer db upgrade`"
        },
    }
    assert alive.status_code == 200


def test_readyz_turns_503_when_the_sqlite_volume_goes_away(make_settings, tmp_path: Path):
    volume = tmp_path / "volume"
    volume.mkdir()
    settings = make_settings(database_url=f"sqlite:///{volume / 'issuer.db'}")
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), base_url=settings.url) as test_client:
            assert test_client.get("/readyz").status_code == 200
            # The volume disappears and something else takes its path: no new connection opens.
            parts.close()
            shutil.rmtree(volume)
            volume.write_text("not a directory")
            ready = test_client.get("/readyz")
    finally:
        parts.close()
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": False, "signing_key": True}


@pytest.fixture
def outage(make_settings, caplog):
    """A TestClient on an issuer whose PostgreSQL is unreachable (nothing listens there)."""
    settings = make_settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    parts = build_components(settings)
    app = create_app(components=parts)
    with TestClient(app, base_url=settings.url, raise_server_exceptions=False) as test_client:
        yield test_client
    parts.close()


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (TOKEN, {"grant_type": "password", "username": "alice", "password": PASSWORD}),
        (REVOKE, {"token": "x"}),
        (INTROSPECT, {"token": "x"}),
    ],
)
def test_a_database_outage_is_503_with_retry_after(outage, caplog, path, form):
    response = outage.post(path, data=form, auth=("webapp", "s3cret-value"))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"] == "temporarily_unavailable"
    assert "s3cret-value" not in caplog.text and PASSWORD not in caplog.text


def test_a_database_outage_at_userinfo_is_503(outage, components, alice):
    access, _ = components.tokens.create_access_token(
        components.tokens.access_claims_for(alice, "webapp", "read")
    )
    # The outage app signs with the same secret (same settings factory), so the token verifies
    # and the failure is the user lookup.
    response = outage.get(USERINFO, headers=bearer(access))
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
