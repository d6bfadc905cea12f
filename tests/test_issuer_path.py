"""An issuer URL with a path (``https://host/tenant``): every endpoint lives under the path,
and the discovery document is where RFC 8414 §3.1 and OIDC Discovery §4 put it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components
from issuer.store import migrate
from issuer.store.sql import make_engine
from tests.conftest import PASSWORD, add_client, add_user, free_port
from tests.test_e2e_oidc import assert_oidc_session, relying_party, start

ISSUER = "https://login.example.com/tenant"
METADATA_LOCATIONS = (
    "/.well-known/oauth-authorization-server/tenant",  # RFC 8414 §3.1
    "/tenant/.well-known/openid-configuration",  # OIDC Discovery §4
    "/.well-known/openid-configuration/tenant",  # RFC 8414 §5
)


@pytest.fixture
def tenant(make_settings) -> Iterator[tuple[TestClient, Any]]:
    settings = make_settings(url=ISSUER)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(settings)
    add_user(parts.store)
    with TestClient(create_app(components=parts), base_url="https://login.example.com") as http:
        yield http, parts
    parts.close()


def test_the_metadata_is_served_at_every_standard_location_for_a_path(tenant):
    http, _ = tenant
    documents = [http.get(location) for location in METADATA_LOCATIONS]
    assert [d.status_code for d in documents] == [200, 200, 200]
    assert documents[0].content == documents[1].content == documents[2].content
    doc = documents[0].json()
    assert doc["issuer"] == ISSUER
    endpoints = [v for k, v in doc.items() if k.endswith(("_endpoint", "_uri"))]
    assert len(endpoints) == 5
    assert all(url.startswith(ISSUER + "/") for url in endpoints)


def test_every_advertised_endpoint_answers_under_the_path(tenant):
    http, parts = tenant
    secret = add_client(parts.store, "webapp")
    api = add_client(parts.store, "api", grants=(), introspect=True)
    doc = http.get(METADATA_LOCATIONS[0]).json()
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    login = http.post(doc["token_endpoint"], data=form, auth=("webapp", secret))
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert parts.tokens.verify(tokens["access_token"])["iss"] == ISSUER
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.get(doc["userinfo_endpoint"], headers=bearer).json()["username"] == "alice"
    assert http.get(doc["jwks_uri"]).json() == {"keys": []}
    answer = http.post(
        doc["introspection_endpoint"], data={"token": tokens["access_token"]}, auth=("api", api)
    )
    assert answer.json()["active"] is True
    revoked = http.post(
        doc["revocation_endpoint"], data={"token": tokens["access_token"]}, auth=("webapp", secret)
    )
    assert revoked.status_code == 200
    assert http.get(doc["userinfo_endpoint"], headers=bearer).status_code == 401
    refreshed = http.post(
        doc["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=("webapp", secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    assert http.get("/tenant/healthz").json() == {"status": "ok"}
    assert http.get("/tenant/readyz").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/oauth/token",
        "/userinfo",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/other",
        "/healthz",
    ],
)
def test_nothing_answers_outside_the_path(tenant, path):
    http, _ = tenant
    assert http.get(path).status_code == 404
    assert http.post(path).status_code in (404, 405)


@pytest.mark.e2e
def test_openid_client_discovers_and_logs_in_under_a_path(live_server_factory, node_dir):
    """A real relying party finds the metadata by the issuer URL alone (OIDC Discovery §4)."""
    url = f"http://127.0.0.1:{free_port()}/tenant"
    server, secret = start(live_server_factory, url=url, signing_alg="EdDSA")
    result = relying_party(node_dir, url, secret)
    assert_oidc_session(result, url)
    log = server.log()
    assert '"GET /tenant/.well-known/openid-configuration" 200' in log
    assert '"GET /tenant/.well-known/jwks.json" 200' in log
