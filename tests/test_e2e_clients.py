"""Standard OAuth 2.0 client libraries against a real ``issuer serve`` (uvicorn, SQLite).

Users and clients are created with the real CLI; tokens are fetched with
requests-oauthlib, Authlib and raw HTTP, and verified the way a resource server would
(PyJWT with the shared HS256 secret). Nothing here imports the issuer's internals.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from oauthlib.oauth2 import InvalidClientError, InvalidGrantError, LegacyApplicationClient
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from tests.conftest import (
    LiveServer,
    as_pasted_for,
    run_pasted,
    server_env,
)
from tests.readme import code_blocks, readme_section

pytestmark = pytest.mark.e2e

PASSWORD = "Corr3ct-Horse!"  # the same as conftest.PASSWORD, spelled out for readers
AUDIENCE = "issuer-api"  # the documented default
VENV_BIN = Path(sys.executable).parent


@dataclass
class Issuer:
    """A running issuer with user alice and three clients, as an operator would set it up."""

    live: LiveServer
    hs256_secret: str
    secrets: dict[str, str | None]

    @property
    def url(self) -> str:
        return self.live.url


def add_client(server: LiveServer, client_id: str, *options: str) -> str | None:
    """Register a client with the CLI; the secret it prints once (None for public clients)."""
    out = server.cli("clients", "add", client_id, *options).stdout
    found = re.search(r"^client_secret: (\S+)$", out, re.MULTILINE)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Issuer]:
    """One ``issuer serve`` for the module, signing with a secret the tests know.

    Built like conftest's ``live_server_factory`` (which is per test): starting a server
    and running the CLI four times per test would cost about six seconds each. Tests
    only read the shared users and clients; what they revoke is their own tokens.
    """
    workdir = tmp_path_factory.mktemp("e2e-issuer")
    hs256_secret = secrets.token_urlsafe(48)
    live = LiveServer(workdir, server_env(workdir, secret_key=hs256_secret))
    live.cli("init")
    live.cli(
        "users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD + "\n"
    )
    client_secrets = {
        "webapp": add_client(live, "webapp"),
        "mobile": add_client(live, "mobile", "--auth-method", "client_secret_post"),
        "spa": add_client(live, "spa", "--public"),
    }
    live.start()
    try:
        yield Issuer(live, hs256_secret, client_secrets)
    finally:
        live.stop()


def assert_token_pair(token: dict) -> None:
    assert token["token_type"].lower() == "bearer"
    assert token["access_token"]
    assert token["refresh_token"]
    assert 0 < int(token["expires_in"]) <= 1800


def verify_with_pyjwt(server: Issuer, token: str) -> dict:
    """What a resource server does: pin HS256, check iss, aud, exp and the RFC 9068 typ."""
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    return jwt.decode(
        token,
        server.hs256_secret,
        algorithms=["HS256"],
        audience=AUDIENCE,
        issuer=server.url,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )


# -- requests-oauthlib ---------------------------------------------------------


@pytest.fixture
def insecure_loopback(monkeypatch):
    # oauthlib refuses http:// token URLs; the server listens on 127.0.0.1 only.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def test_requests_oauthlib_with_client_secret_basic_logs_in_and_rotates(server, insecure_loopback):
    secret = server.secrets["webapp"]
    token_url = server.url + "/oauth/token"
    session = OAuth2Session(client=LegacyApplicationClient(client_id="webapp"))
    # Defaults: client_id + client_secret become an HTTP Basic header.
    token = session.fetch_token(
        token_url, username="alice", password=PASSWORD, client_id="webapp", client_secret=secret
    )
    assert_token_pair(token)
    claims = verify_with_pyjwt(server, token["access_token"])
    assert claims["client_id"] == "webapp"
    assert claims["username"] == "alice"

    me = session.get(server.url + "/userinfo")
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"

    auth = HTTPBasicAuth("webapp", secret)
    renewed = session.refresh_token(token_url, refresh_token=token["refresh_token"], auth=auth)
    assert_token_pair(renewed)
    assert renewed["refresh_token"] != token["refresh_token"]
    assert renewed["access_token"] != token["access_token"]

    with pytest.raises(InvalidGrantError):
        session.refresh_token(token_url, refresh_token=token["refresh_token"], auth=auth)


def test_requests_oauthlib_with_client_secret_post_logs_in_and_rotates(server, insecure_loopback):
    secret = server.secrets["mobile"]
    token_url = server.url + "/oauth/token"
    session = OAuth2Session(client=LegacyApplicationClient(client_id="mobile"))
    # include_client_id=True puts client_id and client_secret in the form body.
    token = session.fetch_token(
        token_url,
        username="alice",
        password=PASSWORD,
        client_id="mobile",
        client_secret=secret,
        include_client_id=True,
    )
    assert_token_pair(token)
    assert verify_with_pyjwt(server, token["access_token"])["client_id"] == "mobile"

    # Basic is not this client's method: refused.
    basic = OAuth2Session(client=LegacyApplicationClient(client_id="mobile"))
    with pytest.raises(InvalidClientError):
        basic.fetch_token(
            token_url, username="alice", password=PASSWORD, client_id="mobile", client_secret=secret
        )

    post = {"client_id": "mobile", "client_secret": secret}
    renewed = session.refresh_token(token_url, refresh_token=token["refresh_token"], **post)
    assert_token_pair(renewed)
    assert renewed["refresh_token"] != token["refresh_token"]
    with pytest.raises(InvalidGrantError):
        session.refresh_token(token_url, refresh_token=token["refresh_token"], **post)


def test_requests_oauthlib_reports_a_wrong_password_as_invalid_grant(server, insecure_loopback):
    secret = server.secrets["webapp"]
    session = OAuth2Session(client=LegacyApplicationClient(client_id="webapp"))
    with pytest.raises(InvalidGrantError):
        session.fetch_token(
            server.url + "/oauth/token",
            username="alice",
            password=PASSWORD + "x",
            client_id="webapp",
            client_secret=secret,
        )


# -- Authlib ---------------------------------------------------------------------


def test_authlib_public_client_logs_in_refreshes_and_logs_out(server):
    assert server.secrets["spa"] is None
    token_url = server.url + "/oauth/token"
    revoke_url = server.url + "/oauth/revoke"
    with OAuth2Client(
        client_id="spa",
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
        timeout=10,
    ) as client:
        first = client.fetch_token(
            token_url, grant_type="password", username="alice", password=PASSWORD
        )
        assert_token_pair(first)
        assert verify_with_pyjwt(server, first["access_token"])["client_id"] == "spa"

        second = client.refresh_token(token_url, refresh_token=first["refresh_token"])
        assert_token_pair(second)
        assert second["refresh_token"] != first["refresh_token"]
        assert client.token["access_token"] == second["access_token"]

        # Under HS256 an ID token is keyed with the client secret (OIDC Core §10.1): a
        # public client has none, so its default scope leaves openid (and /userinfo) out.
        assert second["scope"] == "profile"
        assert "id_token" not in second
        me = client.get(server.url + "/userinfo")
        assert me.status_code == 403, me.text
        assert 'error="insufficient_scope"' in me.headers["www-authenticate"]

        # Logout: the access token is denied at once, the refresh token's session ends.
        assert client.revoke_token(revoke_url, token=second["access_token"]).status_code == 200
        me = client.get(server.url + "/userinfo")
        assert me.status_code == 401
        assert 'error="invalid_token"' in me.headers["www-authenticate"]

        response = client.revoke_token(
            revoke_url, token=second["refresh_token"], token_type_hint="refresh_token"
        )
        assert response.status_code == 200
        with pytest.raises(OAuthError) as refused:
            client.refresh_token(token_url, refresh_token=second["refresh_token"])
        assert refused.value.error == "invalid_grant"


def test_authlib_public_client_cannot_pass_as_a_confidential_one(server):
    with (
        OAuth2Client(
            client_id="spa", client_secret="guess", token_endpoint_auth_method="client_secret_basic"
        ) as client,
        pytest.raises(OAuthError) as refused,
    ):
        client.fetch_token(
            server.url + "/oauth/token",
            grant_type="password",
            username="alice",
            password=PASSWORD,
        )
    assert refused.value.error == "invalid_client"


# -- PyJWT -------------------------------------------------------------------------


def test_access_token_verifies_with_pyjwt_and_the_shared_secret(server):
    secret = server.secrets["webapp"]
    hs256_secret = server.hs256_secret
    r = httpx.post(
        server.url + "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=("webapp", secret),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    access = body["access_token"]

    header = jwt.get_unverified_header(access)
    assert header["alg"] == "HS256"
    assert header["kid"]
    claims = verify_with_pyjwt(server, access)
    assert claims["type"] == "access"
    assert claims["role"] == "engineer"
    assert claims["scope"] == body["scope"]
    assert claims["exp"] - claims["iat"] == 1800
    me = httpx.get(server.url + "/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert claims["sub"] == me.json()["sub"]

    # A resource server with another audience, issuer or secret refuses the token.
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(access, hs256_secret, algorithms=["HS256"], audience="other-api")
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(
            access, hs256_secret, algorithms=["HS256"], audience=AUDIENCE, issuer="https://evil"
        )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(access, secrets.token_urlsafe(48), algorithms=["HS256"], audience=AUDIENCE)

    # The refresh token is not an access token for any API of this audience.
    refresh = body["refresh_token"]
    assert jwt.get_unverified_header(refresh)["typ"] != "at+jwt"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(refresh, hs256_secret, algorithms=["HS256"], audience=AUDIENCE)


# -- the README quickstart -------------------------------------------------------


def test_readme_quickstart_flow_over_raw_http(server):
    secret = server.secrets["webapp"]
    token_url = server.url + "/oauth/token"
    with httpx.Client(auth=("webapp", secret), timeout=10) as http:
        login = http.post(
            token_url, data={"grant_type": "password", "username": "alice", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        assert login.headers["cache-control"] == "no-store"
        first = login.json()

        me = http.get(
            server.url + "/userinfo",
            headers={"Authorization": "Bearer " + first["access_token"]},
            auth=None,
        )
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "alice"

        refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        renewed = http.post(token_url, data=refresh)
        assert renewed.status_code == 200, renewed.text
        second = renewed.json()
        assert second["refresh_token"] != first["refresh_token"]

        replay = http.post(token_url, data=refresh)
        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_grant"
        assert first["refresh_token"] not in replay.text

        # Reuse of a spent token revoked the whole session, the newest token included.
        after_reuse = http.post(
            token_url,
            data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
        )
        assert after_reuse.status_code == 400
        assert after_reuse.json()["error"] == "invalid_grant"
        # ...and its access tokens, at the issuer, at once.
        for access in (first["access_token"], second["access_token"]):
            me = http.get(
                server.url + "/userinfo", headers={"Authorization": "Bearer " + access}, auth=None
            )
            assert me.status_code == 401 and me.json()["error"] == "invalid_token"


def test_quickstart_printed_commands_work_verbatim_with_curl(live_server_factory):
    """The lines ``make run`` prints (issuer.quickstart), pasted into a shell, get a token."""
    server = live_server_factory().start()
    printed = subprocess.run(
        [sys.executable, "-m", "issuer.quickstart"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [line[3:] for line in printed.splitlines() if line.startswith("   ") and line.strip()]
    script = "\n".join(lines)
    assert "curl" in script
    shell = run_pasted(script, server)
    assert shell.returncode == 0, shell.stderr
    token = httpx.Response(200, content=shell.stdout.strip().splitlines()[-1]).json()
    assert token["token_type"] == "Bearer"
    me = httpx.get(
        server.url + "/userinfo", headers={"Authorization": "Bearer " + token["access_token"]}
    )
    assert me.json()["username"] == "alice"


def test_the_readme_quickstart_and_client_snippets_run_as_written(live_server_factory):
    """The README's curl quickstart pasted into a shell, then each Python client snippet
    saved as a file and run from that shell, as the README says, against a live server."""
    server = live_server_factory().start()
    quickstart = readme_section("Quickstart")
    (shell_block,) = code_blocks("Quickstart", "sh")
    snippets = code_blocks("Quickstart", "python")
    assert [("from requests_oauthlib" in s, "from authlib" in s) for s in snippets] == [
        (True, False),
        (False, True),
    ]
    runs = []
    for number, snippet in enumerate(snippets):
        (server.workdir / f"client{number}.py").write_text(
            as_pasted_for(server, snippet), encoding="utf-8"
        )
        runs.append(
            f'echo "-- client{number}"; SECRET="$SECRET" .venv/bin/python client{number}.py'
        )
    shell = run_pasted(shell_block + "\n" + "\n".join(runs), server)
    assert shell.returncode == 0, shell.stderr
    assert "Error" not in shell.stderr, shell.stderr

    out, *clients = shell.stdout.split("\n-- client")
    answers = [line for line in out.splitlines() if line.startswith("{")]
    login, me, refreshed, reuse, after_reuse = (json.loads(a) for a in answers)
    assert login["token_type"] == "Bearer"
    assert me["username"] == "alice"
    assert refreshed["refresh_token"] != login["refresh_token"]
    assert reuse["error"] == "invalid_grant"
    assert after_reuse["error"] == "invalid_token"  # reuse ended the whole session
    # The README shows the two refusals' bodies verbatim.
    assert json.dumps(reuse, separators=(",", ":")) in quickstart
    assert json.dumps(after_reuse, separators=(",", ":")) in quickstart
    assert len(clients) == 2
    for printed in clients:
        userinfo = ast.literal_eval(printed.split("\n", 1)[1].strip())
        assert userinfo["username"] == "alice"
