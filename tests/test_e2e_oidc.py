"""openid-client (node, panva) as the relying party of a real ``issuer serve``.

Discovery, the password grant, a refresh and UserInfo, in every signing mode. The library
validates each ID token itself (iss, aud, azp, exp, iat, auth_time, and that its alg is
one the discovery document allows) and, for RS256, ES256 and EdDSA, checks its signature
against the live jwks_uri. Under HS256 the ID token is keyed with the client secret (OIDC
Core §10.1), which openid-client does not verify; PyJWT does it here, as a client would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import PASSWORD, LiveServer, run_node_script

pytestmark = pytest.mark.e2e


def start(live_server_factory, **settings: Any) -> tuple[LiveServer, str]:
    """A running issuer with alice and the confidential client webapp; webapp's secret."""
    server = live_server_factory(**settings)
    server.cli("users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD)
    out = server.cli("clients", "add", "webapp").stdout
    secret = re.search(r"^client_secret: (\S+)$", out, re.MULTILINE)
    assert secret is not None, out
    server.start()
    return server, secret.group(1)


def relying_party(node_dir: Path, issuer: str, secret: str, **extra: Any) -> dict[str, Any]:
    """Run tests/node/oidc-client.mjs; its JSON result (never containing a token)."""
    request = {
        "issuer": issuer,
        "client_id": "webapp",
        "client_secret": secret,
        "username": "alice",
        "password": PASSWORD,
        **extra,
    }
    done = run_node_script(node_dir / "oidc-client.mjs", request)
    result: dict[str, Any] = json.loads(done.stdout)
    assert secret not in done.stdout
    return result


def assert_oidc_session(result: dict[str, Any], issuer: str) -> None:
    assert result["ok"] is True, result
    login, refresh = result["login"], result["refresh"]
    assert result["discovered_issuer"] == issuer
    for claims in (login, refresh):
        assert claims["iss"] == issuer
        assert claims["aud"] == claims["azp"] == "webapp"
    assert refresh["auth_time"] == login["auth_time"]  # the login's time, not the refresh's
    assert refresh["sid"] == login["sid"]
    assert refresh["sub"] == login["sub"] == result["userinfo"]["sub"]
    assert result["userinfo"]["preferred_username"] == "alice"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_openid_client_validates_id_tokens_signed_with_asymmetric_keys(
    live_server_factory, node_dir, alg
):
    server, secret = start(live_server_factory, signing_alg=alg, rsa_key_size=2048)
    result = relying_party(node_dir, server.url, secret)
    assert_oidc_session(result, server.url)
    assert result["alg"] == result["refresh_alg"] == alg
    # The signatures were checked against the published keys: the library fetched them.
    assert '"GET /.well-known/jwks.json" 200' in server.log()


def test_openid_client_runs_the_flow_under_hs256_with_client_secret_keyed_id_tokens(
    live_server_factory, node_dir
):
    server, secret = start(live_server_factory)
    result = relying_party(node_dir, server.url, secret, check_signatures=False)
    assert_oidc_session(result, server.url)
    assert result["alg"] == "HS256"
    # The signature a client checks with its own secret (OIDC Core §10.1).
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    login = httpx.post(server.url + "/oauth/token", data=form, auth=("webapp", secret)).json()
    claims = jwt.decode(
        login["id_token"], secret, algorithms=["HS256"], audience="webapp", issuer=server.url
    )
    assert claims["sub"] == result["login"]["sub"]
