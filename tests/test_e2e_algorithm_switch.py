"""A staged algorithm switch, RS256 → ES256, on a running server (issue 9): PyJWT's
PyJWKClient and node jose verify every token throughout, with zero refusals; discovery
lists both algorithms while both are in the key set. The helpers are the rotation e2e's.
"""

from __future__ import annotations

import threading
import time

import jwt
import pytest

from tests.test_e2e_rotation import (  # node_verifier: the shared fixture
    App,
    jose_verify,
    kid_of,
    node_verifier,  # noqa: F401
    pyjwt_verify,
)

pytestmark = pytest.mark.e2e


def discovered_algs(app: App) -> list[str]:
    metadata = app.http.get("/.well-known/openid-configuration").json()
    return list(metadata["id_token_signing_alg_values_supported"])


def test_switching_rs256_to_es256_on_a_running_server_refuses_no_token(
    live_server_factory,
    node_verifier,  # noqa: F811
):
    max_age = 1
    server = live_server_factory(
        signing_alg="RS256",
        rsa_key_size=2048,
        jwks_max_age=max_age,
        key_reload_interval=0.2,
        workers=2,
    ).start()
    app = App(server)
    jwks_url = server.url + "/.well-known/jwks.json"
    # Caches the JWKS as long as Cache-Control allows and refetches an unknown kid only
    # after 30 s: a key that signed before it was published would be refused here.
    verifier = jwt.PyJWKClient(jwks_url, lifespan=max_age, cooldown_duration=30)

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

    rotator = threading.Thread(target=complete_the_switch)
    rotator.start()
    failures: list[str] = []
    algs_seen: list[str] = []
    by_alg: dict[str, str] = {}
    discovery_during: list[list[str]] = []
    verified = 0
    refresh_token = first["refresh_token"]
    deadline = time.monotonic() + 60
    finished_at: float | None = None
    while time.monotonic() < deadline:
        if finished_at is None and not rotator.is_alive():
            finished_at = time.monotonic()
        if finished_at is not None and time.monotonic() - finished_at > 2 * max_age + 0.5:
            break
        issued = app.refreshed(refresh_token) if verified % 2 else app.tokens()
        refresh_token = issued["refresh_token"]
        token = issued["access_token"]
        alg = jwt.get_unverified_header(token)["alg"]
        if not algs_seen or algs_seen[-1] != alg:
            algs_seen.append(alg)
            discovery_during.append(discovered_algs(app))
        by_alg.setdefault(alg, token)
        try:
            verify(token)
            verified += 1
        except jwt.PyJWTError as exc:
            failures.append(f"{alg} {kid_of(token)}: {exc.__class__.__name__}: {exc}")
    rotator.join(timeout=60)

    assert not errors, errors
    assert len(rotations) == 1
    assert "signing  ES256" in rotations[0]
    assert failures == []
    assert verified > 10
    assert algs_seen == ["RS256", "ES256"]
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
