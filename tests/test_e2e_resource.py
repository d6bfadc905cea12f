"""APIs protected by issuer.resource, end to end: a real ``issuer serve`` and a real API process.

The API (tests/resource_api.py) runs in its own uvicorn process and knows only the
issuer's URL (plus, in introspection mode, its client credentials). Tokens come from the
issuer over HTTP; forged ones are signed with the issuer's real key read from its key
directory, so a refusal is the claim check's doing, not a broken signature. JWKS fetches
are counted in the issuer's access log.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import JWKRegistry

from issuer.errors import RevokedTokenError, WrongTokenTypeError
from issuer.jwtrules import registry
from issuer.resource import CachePolicy, JWKSVerifier
from tests import test_e2e_rotation
from tests.conftest import LiveServer, free_port
from tests.readme import code_blocks
from tests.test_e2e_rotation import (
    AUDIENCE,
    App,
    jose_verify,
    keys_by_state,
    kid_of,
    pyjwt_verify,
    rotate_twice,
    rotating_server,
    stream_while,
)
from tests.test_jwks import forge, hs256_with
from tests.test_resource import tampered

pytestmark = pytest.mark.e2e
node_verifier = test_e2e_rotation.node_verifier  # the fixture: tests/node with jose installed

ROOT = Path(__file__).parent.parent
JWKS_GET = '"GET /.well-known/jwks.json"'
ADMIN_PASSWORD = "Adm1n-Pa55word!"


class Api:
    """An API in a uvicorn process of its own: tests/resource_api.py unless told otherwise."""

    def __init__(
        self,
        workdir: Path,
        target: tuple[str, ...] = ("--factory", "tests.resource_api:create_app"),
        app_dir: Path = ROOT,
        ready_path: str = "/open",
        **env: str,
    ) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / f"api-{self.url.rsplit(':', 1)[1]}.log"
        self.target = target
        self.app_dir = app_dir
        self.ready_path = ready_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ISSUER_", "API_"))}
        self.env.update({"API_" + name.upper(): value for name, value in env.items()})
        self.env["PYTHONPATH"] = str(ROOT)
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> Api:
        port = self.url.rsplit(":", 1)[1]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", *self.target),
                *("--host", "127.0.0.1", "--port", port),
            ],
            cwd=self.app_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(300):
            if self.process.poll() is not None:
                raise AssertionError("API exited:\n" + self.log_path.read_text())
            try:
                if self.http.get(self.ready_path).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("API did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def get(self, path: str, token: str | None = None, method: str = "GET") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.request(method, path, headers=headers)


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    apis: list[Api] = []

    def factory(server: LiveServer, **env: str) -> Api:
        api = Api(tmp_path, issuer=server.url, audience=AUDIENCE, **env)
        apis.append(api)
        return api.start()

    factory.apis = apis  # type: ignore[attr-defined] - for tests starting their own

    yield factory
    for api in apis:
        api.stop()


def jwks_fetches(server: LiveServer) -> int:
    return server.log().count(JWKS_GET)


def signing_key(server: LiveServer) -> tuple[Any, str, str]:
    """The issuer's active private key, its alg and kid, read from its key directory."""
    keys_dir = Path(server.env["ISSUER_KEYS_DIR"])
    active = keys_by_state(server)["active"][0]
    manifest = json.loads((keys_dir / "manifest.json").read_text())
    record = next(r for r in manifest["keys"] if r["kid"] == active)
    key_type = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[record["alg"]]
    key = JWKRegistry.import_key((keys_dir / record["file"]).read_bytes(), key_type)
    return key, record["alg"], active


def resign(server: LiveServer, token: str, **changes: Any) -> str:
    """``token`` with changed claims, signed again with the issuer's real active key."""
    key, alg, kid = signing_key(server)
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    header = {"alg": alg, "kid": kid, "typ": "at+jwt"}
    return jose_jwt.encode(header, claims, key, registry=registry(alg))


def invalid_token(response: httpx.Response) -> bool:
    challenge = response.headers.get("www-authenticate", "")
    return response.status_code == 401 and challenge.startswith(
        'Bearer realm="orders", error="invalid_token", error_description="'
    )


def add_admin(server: LiveServer) -> None:
    server.cli("users", "add", "root", "--role", "admin", "--password-stdin", stdin=ADMIN_PASSWORD)


def admin_token(app: App) -> str:
    response = app.http.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "root", "password": ADMIN_PASSWORD},
        auth=("webapp", app.secret),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


# -- local verification (JWKS) ---------------------------------------------------------


def test_an_api_process_accepts_valid_tokens_and_refuses_each_bad_one(
    live_server_factory, api_factory
):
    server = live_server_factory(signing_alg="RS256", rsa_key_size=2048)
    add_admin(server)
    server.start()
    app = App(server)
    api = api_factory(server)
    issued = app.tokens()
    access = issued["access_token"]

    assert api.get("/open").json() == {"open": True}
    me = api.get("/me", access)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"
    admin = api.get("/admin", access)
    assert admin.status_code == 403
    assert 'error="insufficient_scope"' in admin.headers["www-authenticate"]
    assert api.get("/admin", admin_token(app)).json()["username"] == "root"

    bare = api.get("/me")
    assert (bare.status_code, bare.headers["www-authenticate"]) == (401, 'Bearer realm="orders"')

    header = jwt.get_unverified_header(access)
    claims = jwt.decode(access, options={"verify_signature": False})
    published = httpx.get(server.url + "/.well-known/jwks.json").json()["keys"]
    jwk = next(k for k in published if k["kid"] == header["kid"])
    public_pem = JWKRegistry.import_key(jwk).as_pem(private=False)
    bad = {
        "tampered": tampered(access),
        "expired": resign(server, access, exp=int(time.time()) - 5, iat=int(time.time()) - 65),
        "wrong audience": resign(server, access, aud="someone-else"),
        "wrong issuer": resign(server, access, iss="http://127.0.0.1:1"),
        "refresh token": issued["refresh_token"],
        "alg none": forge({**header, "alg": "none"}, claims, lambda _: b""),
        "HS256 with the public key": forge(
            {**header, "alg": "HS256"}, claims, hs256_with(public_pem)
        ),
    }
    for case, token in bad.items():
        response = api.get("/me", token)
        assert invalid_token(response), (case, response.status_code, response.headers)
        assert token not in response.text
    assert "has expired" in api.get("/me", bad["expired"]).headers["www-authenticate"]
    assert api.get("/me", access).status_code == 200  # still fine after all that
    assert token_never_logged(api, [access, *bad.values()])


def token_never_logged(api: Api, tokens: list[str]) -> bool:
    text = api.log_path.read_text()
    return not any(token in text for token in tokens)


def test_two_key_rotations_during_a_request_stream_refuse_no_valid_token(
    live_server_factory, api_factory
):
    max_age = 1
    server, app = rotating_server(live_server_factory, "ES256", max_age)
    api = api_factory(server, min_age=str(max_age), cooldown="30")
    rotations: list[str] = []
    too_soon: list[str] = []
    errors: list[str] = []

    def accepted_by_the_api(issued: dict[str, Any]) -> str | None:
        response = api.get("/me", issued["access_token"])
        if response.status_code == 200:
            return None
        return f"{kid_of(issued['access_token'])}: {response.status_code} {response.headers}"

    stream = stream_while(
        app,
        lambda: rotate_twice(server, rotations, too_soon, errors),
        max_age,
        accepted_by_the_api,
        app.tokens()["refresh_token"],
    )

    assert not errors, errors
    assert len(rotations) == 2
    assert stream.failures == []
    assert len(set(stream.runs(kid_of))) == 3  # the first key, then each rotation's new key
    assert stream.passed > 10


def test_a_flood_of_random_kids_costs_the_issuer_at_most_one_jwks_fetch_per_cooldown(
    live_server_factory, api_factory
):
    cooldown = 30.0
    server = live_server_factory(signing_alg="EdDSA").start()
    app = App(server)
    api = api_factory(server, cooldown=str(cooldown))
    access = app.tokens()["access_token"]
    assert api.get("/me", access).status_code == 200
    before = jwks_fetches(server)
    assert before == 1

    key, alg, _kid = signing_key(server)
    claims = jwt.decode(access, options={"verify_signature": False})
    started = time.monotonic()
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for _ in range(1000):
            header = {"alg": alg, "kid": secrets.token_urlsafe(24), "typ": "at+jwt"}
            forged = jose_jwt.encode(header, claims, key, registry=registry(alg))
            response = http.get("/me", headers={"Authorization": f"Bearer {forged}"})
            assert invalid_token(response)
    windows = math.ceil((time.monotonic() - started) / cooldown)
    assert api.get("/me", access).status_code == 200
    assert jwks_fetches(server) - before <= windows


def test_cached_keys_keep_verifying_while_the_issuer_is_down(live_server_factory, api_factory):
    server = live_server_factory(signing_alg="RS256", rsa_key_size=2048).start()
    app = App(server)
    api = api_factory(server, min_age="1", retry="1")
    tokens = [app.tokens()["access_token"] for _ in range(3)]
    assert api.get("/me", tokens[0]).status_code == 200

    class Timer:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    timer = Timer()
    in_process = JWKSVerifier(
        server.url, AUDIENCE, cache=CachePolicy(min_age=1, retry_interval=1), timer=timer
    )
    in_process.load()
    server.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/healthz", timeout=2)

    for _ in range(40):  # ten seconds of the verifier's time, the cache stale after one
        for token in tokens:
            assert in_process.verify(token).username == "alice"
        timer.now += 0.25
    down_until = time.monotonic() + 3  # and a few real seconds for the API process
    while time.monotonic() < down_until:
        for token in tokens:
            assert api.get("/me", token).status_code == 200
        time.sleep(0.2)
    in_process.close()


# -- introspection -------------------------------------------------------------------


def test_introspection_mode_refuses_a_revoked_token_at_once(live_server_factory, api_factory):
    server = live_server_factory().start()  # HS256: the API never sees the secret
    app = App(server)
    api_secret = resource_server_client(server, "orders-api")
    credentials = {"mode": "introspection", "client_id": "orders-api", "client_secret": api_secret}
    uncached = api_factory(server, cache_ttl="0", **credentials)
    cached = api_factory(server, **credentials)

    def revoke(token: str) -> None:
        response = app.http.post(
            "/oauth/revoke", data={"token": token}, auth=("webapp", app.secret)
        )
        assert response.status_code == 200

    issued = app.tokens()
    access = issued["access_token"]
    assert uncached.get("/me", access).json()["username"] == "alice"
    revoke(access)
    assert invalid_token(uncached.get("/me", access))

    fresh = app.tokens()["access_token"]
    revoke(fresh)  # never seen by the cached API: refused at once there too
    assert invalid_token(cached.get("/me", fresh))
    assert invalid_token(cached.get("/me", issued["refresh_token"]))
    assert cached.get("/me", app.tokens()["access_token"]).status_code == 200


# -- interop ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_the_verifier_pyjwt_and_node_jose_agree_on_real_tokens(
    live_server_factory, node_verifier, alg
):
    server = live_server_factory(signing_alg=alg, rsa_key_size=2048).start()
    app = App(server)
    issued = app.tokens()
    access, refresh = issued["access_token"], issued["refresh_token"]

    verifier = JWKSVerifier(server.url, AUDIENCE)
    ours = verifier.verify(access)
    theirs = pyjwt_verify(
        jwt.PyJWKClient(server.url + "/.well-known/jwks.json"), access, server, alg
    )
    ok, refused = jose_verify(node_verifier, server, [access, refresh])
    assert ok["ok"] is True and ok["alg"] == alg
    assert dict(ours.claims) == theirs == ok["payload"]
    assert ours.username == "alice" and ours.role == "engineer"
    assert refused["ok"] is False
    with pytest.raises(WrongTokenTypeError):
        verifier.verify(refresh)
    verifier.close()


# -- the README -------------------------------------------------------------------------

README_ISSUER = "http://127.0.0.1:8000"


def resource_server_client(server: LiveServer, client_id: str) -> str:
    """Register an API as a client that may introspect any token (RFC 7662 §4); its secret."""
    out = server.cli("clients", "add", client_id, "--introspect").stdout
    return next(
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.startswith("client_secret:")
    )


def test_the_readme_api_examples_run_as_written_against_a_live_issuer(
    live_server_factory, api_factory, tmp_path
):
    server = live_server_factory(signing_alg="ES256")
    add_admin(server)
    server.start()
    app = App(server)
    alice, root = app.tokens()["access_token"], admin_token(app)
    examples = code_blocks("Protect your API")
    fastapi_example, starlette_example = examples[0], examples[1]
    assert "from fastapi import" in fastapi_example
    assert "from starlette.applications import" in starlette_example
    (curl_lines,) = code_blocks("Protect your API", "sh")

    for name, source in (
        ("fastapi_orders", fastapi_example),
        ("starlette_orders", starlette_example),
    ):
        assert README_ISSUER in source
        app_dir = tmp_path / name
        app_dir.mkdir()
        (app_dir / "orders.py").write_text(source.replace(README_ISSUER, server.url))
        api = Api(tmp_path, ("orders:app",), app_dir, "/health")
        api_factory.apis.append(api)
        api.start()

        assert api.get("/health").json() == {"status": "ok"}
        bare = api.get("/me")
        assert (bare.status_code, bare.headers["www-authenticate"]) == (
            401,
            'Bearer realm="api"',
        )
        me = api.get("/me", alice)
        assert me.status_code == 200, (name, me.text)
        assert me.json()["username"] == "alice"
        assert api.get("/orders/7", alice, "DELETE").status_code == 403
        deleted = api.get("/orders/7", root, "DELETE")
        assert deleted.json() == {"deleted": "7", "by": "root"}, (name, deleted.text)

        shell = subprocess.run(
            [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                curl_lines.replace("http://127.0.0.1:8001", api.url),
            ],
            env={**os.environ, "ACCESS": alice},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shell.returncode == 0, shell.stderr
        assert '"username":"alice"' in shell.stdout.replace(" ", "")
        assert "HTTP/1.1 403" in shell.stdout


def test_the_readme_verifier_modes_run_as_written_against_live_issuers(
    live_server_factory, monkeypatch
):
    modes = code_blocks("Choosing a verifier")
    assert len(modes) == 1 and README_ISSUER in modes[0]
    hs256_secret = secrets.token_urlsafe(48)
    asymmetric = live_server_factory(signing_alg="EdDSA")
    shared = live_server_factory(secret_key=hs256_secret)
    for server in (asymmetric, shared):
        server.start()
        app = App(server)
        monkeypatch.setenv("ISSUER_SECRET_KEY", hs256_secret)
        monkeypatch.setenv("ORDERS_API_CLIENT_SECRET", resource_server_client(server, "orders-api"))
        namespace: dict[str, Any] = {}
        exec(compile(modes[0].replace(README_ISSUER, server.url), "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
        token = app.tokens()["access_token"]
        local = namespace["jwks"] if server is asymmetric else namespace["shared_secret"]
        assert local.verify(token).username == "alice"
        assert namespace["introspection"].verify(token).username == "alice"
        app.http.post("/oauth/revoke", data={"token": token}, auth=("webapp", app.secret))
        assert local.verify(token).username == "alice"  # local checks cannot see a logout
        fresh = app.tokens()["access_token"]
        app.http.post("/oauth/revoke", data={"token": fresh}, auth=("webapp", app.secret))
        with pytest.raises(RevokedTokenError):
            namespace["introspection"].verify(fresh)
