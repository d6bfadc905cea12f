"""The README's "Deploying several replicas", followed on one machine with two ports:
one configuration file for both replicas, PostgreSQL, Redis, the database key store (no
shared keys/ directory: each replica has its own, which stays empty); migrations and the
rotation run once; both replicas ready, serving one session and one key set; a replica
stopped with SIGTERM leaves the other serving (issue 9)."""

from __future__ import annotations

import base64
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD, LiveServer, free_port, server_env
from tests.test_ratelimit import REDIS_URL, fresh_redis_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def redis_namespace():
    yield from fresh_redis_namespace()


def signing_kid(replica: LiveServer) -> str:
    return str(httpx.get(replica.url + "/.well-known/jwks.json").json()["keys"][0]["kid"])


def test_two_replicas_deployed_as_the_readme_says(tmp_path, postgres_url, redis_namespace):
    public_url = f"http://127.0.0.1:{free_port()}"  # what the proxy would serve
    config = tmp_path / "issuer.toml"
    config.write_text(
        "[issuer]\n"
        f'url = "{public_url}"\n'
        f'database_url = "{postgres_url}"\n'
        f'rate_limit_storage = "{REDIS_URL}"\n'
        f'rate_limit_key_prefix = "{redis_namespace}"\n'
        'trusted_proxies = ["127.0.0.1"]\n'
        'signing_alg = "ES256"\n'
        'key_store = "database"\n'
        "workers = 2\n"
        "shutdown_timeout = 30\n"
        "jwks_max_age = 1\n"
        "key_reload_interval = 0.2\n"
        "bcrypt_rounds = 4\n"
    )
    kek = base64.b64encode(secrets.token_bytes(32)).decode()  # `openssl rand -base64 32`
    replicas = []
    for name in ("replica1", "replica2"):
        workdir = tmp_path / name
        workdir.mkdir()
        # Only the file configures keys and database, as in production.
        env = {
            k: v
            for k, v in server_env(workdir).items()
            if k not in ("ISSUER_KEYS_DIR", "ISSUER_DATABASE_URL", "ISSUER_BCRYPT_ROUNDS")
        }
        # The KEK comes from the environment (a secret store), never from the file.
        env.update(
            {
                "ISSUER_CONFIG": str(config),
                "ISSUER_URL": public_url,
                "ISSUER_KEY_ENCRYPTION_KEY": kek,
            }
        )
        replica = LiveServer(workdir, env)
        replica.url = f"http://127.0.0.1:{free_port()}"  # its own port behind the proxy
        replicas.append(replica)
    first, second = replicas
    try:
        # Once for all replicas: the migration and the first rotation (creates the keys).
        assert "database at revision" in first.cli("db", "upgrade").stdout
        assert "signing  ES256" in first.cli("keys", "rotate").stdout
        for replica in replicas:
            replica.start()
            ready = httpx.get(replica.url + "/readyz")
            assert ready.status_code == 200, ready.text
            assert httpx.get(replica.url + "/healthz").status_code == 200
        first.cli("users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD)
        added = first.cli("clients", "add", "webapp").stdout
        secret = next(
            line.split(":", 1)[1].strip()
            for line in added.splitlines()
            if line.startswith("client_secret:")
        )
        auth = ("webapp", secret)
        forwarded = {"X-Forwarded-For": "203.0.113.7"}  # as nginx adds it

        login = httpx.post(
            first.url + "/oauth/token",
            data={"grant_type": "password", "username": "alice", "password": PASSWORD},
            auth=auth,
            headers=forwarded,
        )
        assert login.status_code == 200, login.text
        refreshed = httpx.post(
            second.url + "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": login.json()["refresh_token"]},
            auth=auth,
            headers=forwarded,
        )
        assert refreshed.status_code == 200, refreshed.text
        assert signing_kid(first) == signing_kid(second)

        # One rotation, through one host's CLI: both replicas serve the new key set.
        before = httpx.get(first.url + "/.well-known/jwks.json").json()["keys"]
        first.cli("keys", "rotate", "--force")
        deadline = time.monotonic() + 30
        after: list[list[str]] = []
        while time.monotonic() < deadline:
            after = [
                sorted(k["kid"] for k in httpx.get(r.url + "/.well-known/jwks.json").json()["keys"])
                for r in replicas
            ]
            if after[0] == after[1] and len(after[0]) > len(before):
                break
            time.sleep(0.1)
        assert after[0] == after[1] and len(after[0]) == len(before) + 1

        # A replica stopped with SIGTERM exits cleanly; the other keeps serving.
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=60) == 0
        again = httpx.post(
            second.url + "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refreshed.json()["refresh_token"],
            },
            auth=auth,
        )
        assert again.status_code == 200, again.text
        assert httpx.get(second.url + "/readyz").status_code == 200
        for replica in replicas:
            assert not (replica.workdir / "keys").exists()  # nothing on disk to share
    finally:
        for replica in replicas:
            replica.stop()


def test_the_readme_guide_names_what_this_test_follows():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    guide = readme.split("## Deploying several replicas", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "trusted_proxies",
        "proxy_pass",
        "issuer db upgrade",
        "/readyz",
        "SIGTERM",
        'key_store = "database"',
        "ISSUER_KEY_ENCRYPTION_KEY",
    ):
        assert needle in guide, needle
    assert "tests/test_e2e_deployment.py" in guide
