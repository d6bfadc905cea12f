"""A staged algorithm switch, RS256 → ES256, on a running server (issue 9): PyJWT's
PyJWKClient and node jose verify every token throughout, with zero refusals; discovery
lists both algorithms while both are in the key set. The helpers are the rotation e2e's.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tests.test_e2e_rotation import (  # node_verifier: the shared fixture
    App,
    caching_verifier,
    jose_verify,
    kid_of,
    node_verifier,  # noqa: F401
    pyjwt_verify,
    rotating_server,
    stream_while,
)

pytestmark = pytest.mark.e2e


def alg_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["alg"])


def discovered_algs(app: App) -> list[str]:
    metadata = app.http.get("/.well-known/openid-configuration").json()
    return list(metadata["id_token_signing_alg_values_supported"])


def test_switching_rs256_to_es256_on_a_running_server_refuses_no_token(
    live_server_factory,
    node_verifier,  # noqa: F811
):
    max_age = 1
    server, app = rotating_server(live_server_factory, "RS256", max_age)
    verifier = caching_verifier(server, max_age)

    def verify(token: str) -> str:
        """Verify as a resource server pinning the algorithm to the key; the alg."""
        alg = str(verifier.get_signing_key_from_jwt(token).algorithm_name)
        assert jwt.get_unverified_header(token)["alg"] == alg
        pyjwt_verify(verifier, token, server, alg)
        return alg

    first = app.tokens()
    assert verify(first["access_token"]) == "RS256"
    assert discovered_algs(app) == ["RS256"]

    staged = server.cli("keys", "rotate", "--alg", "ES256")
    assert "staged   ES256" in staged.stdout
    assert "signing  RS256" in staged.stdout

    rotations: list[str] = []
    errors: list[str] = []

    def complete_the_switch() -> None:
        """The next scheduled rotation, retried until the lead time has passed."""
        for _ in range(60):  # bounded: at most ~30 s of retries
            done = server.cli("keys", "rotate", check=False)
            if done.returncode == 0:
                rotations.append(done.stdout)
                return
            if "--force" not in done.stderr:
                errors.append(done.stderr)
                return
            time.sleep(0.5)

    algs_seen: list[str] = []
    discovery_during: list[list[str]] = []

    def check(issued: dict[str, Any]) -> str | None:
        token = issued["access_token"]
        alg = alg_of(token)
        if not algs_seen or algs_seen[-1] != alg:
            algs_seen.append(alg)
            discovery_during.append(discovered_algs(app))  # the moment the alg changed
        try:
            verify(token)
        except jwt.PyJWTError as exc:
            return f"{alg} {kid_of(token)}: {exc.__class__.__name__}: {exc}"
        return None

    stream = stream_while(app, complete_the_switch, max_age, check, first["refresh_token"])
    by_alg = {alg: issued["access_token"] for alg, issued in stream.first_by(alg_of).items()}

    assert not errors, errors
    assert len(rotations) == 1
    assert "signing  ES256" in rotations[0]
    assert stream.failures == []
    assert stream.passed > 10
    assert algs_seen == stream.runs(alg_of) == ["RS256", "ES256"]
    # While RS256 still signed, the staged ES256 key was listed too; after, both remain.
    assert discovery_during == [["RS256", "ES256"], ["ES256", "RS256"]]
    assert discovered_algs(app) == ["ES256", "RS256"]

    # Tokens of the old algorithm keep verifying until they expire, everywhere.
    old_token = first["access_token"]
    assert verify(old_token) == "RS256"
    assert app.introspection_active(old_token)
    old, new = jose_verify(node_verifier, server, [old_token, by_alg["ES256"]])
    assert old["ok"] is True and old["alg"] == "RS256", old
    assert new["ok"] is True and new["alg"] == "ES256", new
    app.http.close()
