"""Real servers, real keys, independent verifiers: PyJWT's PyJWKClient and node's jose.

Nothing here imports the package: tokens come from `issuer serve` over HTTP, keys change
through the `issuer keys` command, and verification is what a resource server would do.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import PASSWORD, LiveServer, login, run_node_script

pytestmark = pytest.mark.e2e

AUDIENCE = "issuer-api"


@pytest.fixture(scope="session")
def node_verifier(node_dir: Path) -> Path:
    """The jose verifier script (tests/node/verify.mjs), its packages installed."""
    return node_dir / "verify.mjs"


def jose_verify(script: Path, server, tokens: list[str]) -> list[dict[str, Any]]:
    """Verify ``tokens`` with node jose against the server's JWKS; one result per token."""
    request = {
        "tokens": tokens,
        "jwks_url": server.url + "/.well-known/jwks.json",
        "issuer": server.url,
        "audience": AUDIENCE,
    }
    done = run_node_script(script, request)
    results = json.loads(done.stdout)["results"]
    assert (done.returncode == 0) == all(r["ok"] for r in results)
    return results


class App:
    """A client application of the live server: a user, a confidential client, HTTP calls."""

    def __init__(self, server) -> None:
        self.server = server
        server.cli(
            "users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD
        )
        out = server.cli("clients", "add", "webapp").stdout
        self.secret = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("client_secret:")
        )
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def tokens(self) -> dict[str, Any]:
        body: dict[str, Any] = login(self.http, ("webapp", self.secret), ok=True)
        return body

    def refreshed(self, refresh_token: str) -> dict[str, Any]:
        response = self.http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=("webapp", self.secret),
        )
        assert response.status_code == 200, response.text
        return response.json()

    def introspection_active(self, token: str) -> bool:
        response = self.http.post(
            "/oauth/introspect", data={"token": token}, auth=("webapp", self.secret)
        )
        assert response.status_code == 200, response.text
        return bool(response.json()["active"])

    def userinfo_status(self, token: str) -> int:
        return self.http.get("/userinfo", headers={"Authorization": f"Bearer {token}"}).status_code


def pyjwt_verify(client: jwt.PyJWKClient, token: str, server, alg: str) -> dict[str, Any]:
    """What a Python resource server does: key by kid from the JWKS, alg pinned, claims checked."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=[alg],
        audience=AUDIENCE,
        issuer=server.url,
        options={"require": ["exp", "iat", "sub", "jti"]},
    )


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def keys_by_state(server) -> dict[str, list[str]]:
    """``issuer keys list``, parsed: state -> kids."""
    lines = server.cli("keys", "list").stdout.splitlines()
    assert lines[0].split() == ["KID", "ALG", "STATE", "CREATED", "RETIRES"]
    states: dict[str, list[str]] = {}
    for line in lines[1:]:
        kid, _alg, state, *_ = line.split()
        states.setdefault(state, []).append(kid)
    return states


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_pyjwt_and_node_jose_verify_real_tokens_from_a_running_server(
    live_server_factory, node_verifier, alg
):
    server = live_server_factory(signing_alg=alg, rsa_key_size=2048).start()
    jwks_url = server.url + "/.well-known/jwks.json"
    app = App(server)
    issued = app.tokens()
    access, refresh = issued["access_token"], issued["refresh_token"]
    active_kid = keys_by_state(server)["active"][0]

    claims = pyjwt_verify(jwt.PyJWKClient(jwks_url), access, server, alg)
    assert claims["username"] == "alice"
    assert claims["type"] == "access"
    assert kid_of(access) == active_kid

    metadata = app.http.get("/.well-known/openid-configuration").json()
    assert alg in metadata["id_token_signing_alg_values_supported"]

    ok, refused = jose_verify(node_verifier, server, [access, refresh])
    assert ok["ok"] is True, ok
    assert ok["alg"] == alg
    assert ok["kid"] == active_kid
    assert ok["payload"]["sub"] == claims["sub"]
    assert ok["payload"]["aud"] == AUDIENCE
    assert refused["ok"] is False  # a refresh token never passes for an access token
    assert refused["code"] in ("ERR_JWT_CLAIM_VALIDATION_FAILED", "ERR_JWT_INVALID")

    by_argv = subprocess.run(
        ["node", str(node_verifier), access, jwks_url, server.url, AUDIENCE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert by_argv.returncode == 0, by_argv.stdout
    assert json.loads(by_argv.stdout)["results"][0]["kid"] == active_kid


def rotating_server(live_server_factory: Any, alg: str, max_age: int) -> tuple[LiveServer, App]:
    """Two workers that reload keys every 0.2 s and let the JWKS be cached ``max_age`` s."""
    server = live_server_factory(
        signing_alg=alg,
        rsa_key_size=2048,
        jwks_max_age=max_age,
        key_reload_interval=0.2,
        workers=2,
    ).start()
    return server, App(server)


def caching_verifier(server: LiveServer, max_age: int) -> jwt.PyJWKClient:
    """A verifier that caches the JWKS exactly as long as Cache-Control allows and, like
    PyJWT's default, refetches on an unknown kid only after a 30 s cooldown: a key that
    signed before it was published would fail here."""
    return jwt.PyJWKClient(
        server.url + "/.well-known/jwks.json", lifespan=max_age, cooldown_duration=30
    )


@dataclass
class Stream:
    """What a token stream saw: every token response in order, and the check's failures."""

    issued: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return len(self.issued) - len(self.failures)

    def runs(self, key: Callable[[str], str]) -> list[str]:
        """``key`` of each access token, in order, each run of equal values once."""
        values = [key(issued["access_token"]) for issued in self.issued]
        return [value for i, value in enumerate(values) if i == 0 or values[i - 1] != value]

    def first_by(self, key: Callable[[str], str]) -> dict[str, dict[str, Any]]:
        """The first token response for each ``key`` of its access token."""
        found: dict[str, dict[str, Any]] = {}
        for issued in self.issued:
            found.setdefault(key(issued["access_token"]), issued)
        return found


def stream_while(
    app: App,
    change: Callable[[], None],
    max_age: int,
    check: Callable[[dict[str, Any]], str | None],
    refresh_token: str,
) -> Stream:
    """Alternate logins and refreshes (from ``refresh_token``, each chain rotating), checking
    every response (``check`` returns a failure or None), while ``change`` runs in a thread
    and for two JWKS lifetimes after it ends, so every cache has seen the final key set;
    at most 60 s."""
    changer = threading.Thread(target=change)
    changer.start()
    stream = Stream()
    deadline = time.monotonic() + 60
    finished_at: float | None = None
    while time.monotonic() < deadline:
        if finished_at is None and not changer.is_alive():
            finished_at = time.monotonic()
        if finished_at is not None and time.monotonic() - finished_at > 2 * max_age + 0.5:
            break
        issued = app.refreshed(refresh_token) if len(stream.issued) % 2 else app.tokens()
        refresh_token = issued["refresh_token"]
        stream.issued.append(issued)
        failure = check(issued)
        if failure is not None:
            stream.failures.append(failure)
    changer.join(timeout=60)
    return stream


def rotate_twice(server, rotations: list[str], too_soon: list[str], errors: list[str]) -> None:
    """``issuer keys rotate`` until it has worked twice, retrying while it says too soon."""
    for _ in range(60):  # bounded: at most ~30 s of retries
        done = server.cli("keys", "rotate", check=False)
        if done.returncode == 0:
            rotations.append(done.stdout)
            if len(rotations) == 2:
                return
        elif "--force" in done.stderr:
            too_soon.append(done.stderr)
        else:
            errors.append(done.stderr)
            return
        time.sleep(0.5)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_two_rotations_under_load_then_a_revocation(live_server_factory, node_verifier, alg):
    """Zero failed verifications while keys rotate twice; a revoked key's tokens are refused."""
    max_age = 1
    server, app = rotating_server(live_server_factory, alg, max_age)
    jwks_url = server.url + "/.well-known/jwks.json"
    verifier = caching_verifier(server, max_age)
    assert app.http.get("/.well-known/jwks.json").headers["cache-control"] == (
        f"public, max-age={max_age}"
    )

    first = app.tokens()
    old_kid = kid_of(first["access_token"])
    pyjwt_verify(verifier, first["access_token"], server, alg)

    rotations: list[str] = []
    too_soon: list[str] = []
    errors: list[str] = []

    def verify(issued: dict[str, Any]) -> str | None:
        token = issued["access_token"]
        try:
            pyjwt_verify(verifier, token, server, alg)
        except jwt.PyJWTError as exc:
            return f"{kid_of(token)}: {exc.__class__.__name__}: {exc}"
        return None

    stream = stream_while(
        app,
        lambda: rotate_twice(server, rotations, too_soon, errors),
        max_age,
        verify,
        first["refresh_token"],
    )
    kids_seen = stream.runs(kid_of)
    tokens_by_kid = stream.first_by(kid_of)

    assert not errors, errors
    assert len(rotations) == 2, (rotations, too_soon)
    assert stream.failures == []
    assert stream.passed > 10
    states = keys_by_state(server)
    assert len(states["active"]) == 1
    new_kid = states["active"][0]
    assert old_kid in states["previous"]
    assert len(states["previous"]) == 2
    assert len(set(kids_seen)) == 3  # the first key, then each rotation's new key
    assert kids_seen[0] == old_kid
    assert kids_seen[-1] == new_kid

    # Every key's tokens verify through the issuer itself, old ones included.
    for issued in tokens_by_kid.values():
        assert app.introspection_active(issued["access_token"])

    # Revoke the first key: its tokens are refused from now on, everywhere.
    old = tokens_by_kid[old_kid]
    middle_kid = next(k for k in kids_seen if k not in (old_kid, new_kid))
    # "--": a thumbprint may begin with "-" (see test_keystore's CLI tests).
    revoked = server.cli("keys", "revoke", "--", old_kid)
    assert old_kid in revoked.stdout
    refused_in_a_row = 0
    for _ in range(200):  # bounded wait for every worker's reload (0.2 s each)
        if app.introspection_active(old["access_token"]):
            refused_in_a_row = 0
            time.sleep(0.05)
            continue
        refused_in_a_row += 1
        if refused_in_a_row >= 10:
            break
    assert refused_in_a_row >= 10
    for _ in range(10):  # whichever worker answers
        assert app.userinfo_status(old["access_token"]) == 401
        assert not app.introspection_active(old["access_token"])
        assert app.introspection_active(tokens_by_kid[middle_kid]["access_token"])
    refused = app.http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]},
        auth=("webapp", app.secret),
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"

    fresh_verifier = jwt.PyJWKClient(jwks_url)
    with pytest.raises(jwt.PyJWKClientError):
        fresh_verifier.get_signing_key_from_jwt(old["access_token"])
    latest = app.tokens()["access_token"]
    pyjwt_verify(fresh_verifier, latest, server, alg)
    old_result, latest_result = jose_verify(node_verifier, server, [old["access_token"], latest])
    assert old_result["ok"] is False
    assert old_result["code"] == "ERR_JWKS_NO_MATCHING_KEY"
    assert latest_result["ok"] is True

    with contextlib.suppress(Exception):
        app.http.close()
