"""`issuer keys list|rotate|revoke`, run for real as subprocesses against a fresh `issuer init`."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from issuer.keystore import MANIFEST_NAME, generate_key, key_id
from tests.keystore_support import manifest_bytes


def keys_table(server) -> list[list[str]]:
    lines = server.cli("keys", "list").stdout.splitlines()
    assert lines[0].split() == ["KID", "ALG", "STATE", "CREATED", "RETIRES"]
    return [line.split() for line in lines[1:]]


def test_keys_cli_lists_rotates_and_refuses_a_rotation_before_the_lead_time(
    live_server_factory,
):
    server = live_server_factory(signing_alg="ES256", jwks_max_age=60)  # `issuer init` ran
    keys_dir = Path(server.env["ISSUER_KEYS_DIR"])
    rows = keys_table(server)
    assert sorted(row[2] for row in rows) == ["active", "next"]
    assert {row[1] for row in rows} == {"ES256"}
    assert all(row[3].endswith("Z") and row[4] == "-" for row in rows)
    active_kid = next(row[0] for row in rows if row[2] == "active")

    before = manifest_bytes(keys_dir)
    refused = server.cli("keys", "rotate", check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("issuer: error: ")
    assert "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert manifest_bytes(keys_dir) == before

    forced = server.cli("keys", "rotate", "--force")
    assert "active" in forced.stdout
    assert "created" in forced.stdout
    rows = keys_table(server)
    assert sorted(row[2] for row in rows) == ["active", "next", "previous"]
    previous = next(row for row in rows if row[2] == "previous")
    assert previous[0] == active_kid
    assert previous[4].endswith("Z")  # when it retires


def test_keys_cli_revokes_a_key_and_refuses_an_unknown_kid(live_server_factory):
    server = live_server_factory(signing_alg="EdDSA")
    before = manifest_bytes(Path(server.env["ISSUER_KEYS_DIR"]))
    unknown = server.cli("keys", "revoke", "no-such-kid", check=False)
    assert unknown.returncode == 2
    assert "no key with kid" in unknown.stderr
    assert manifest_bytes(Path(server.env["ISSUER_KEYS_DIR"])) == before

    active_kid = next(row[0] for row in keys_table(server) if row[2] == "active")
    revoked = server.cli("keys", "revoke", "--", active_kid)
    assert "revoked" in revoked.stdout
    rows = keys_table(server)
    assert active_kid not in {row[0] for row in rows}
    assert sorted(row[2] for row in rows) == ["active", "next"]


def test_keys_cli_leaves_an_environment_secret_alone(live_server_factory, secret_key):
    server = live_server_factory(secret_key=secret_key)
    keys_dir = Path(server.env["ISSUER_KEYS_DIR"])
    refused = server.cli("keys", "rotate", check=False)
    assert refused.returncode == 2
    assert "ISSUER_SECRET_KEY" in refused.stderr
    assert not (keys_dir / MANIFEST_NAME).exists()


def add_key_whose_kid_starts_with_a_dash(keys_dir: Path) -> str:
    """A thumbprint is base64url: one in 64 begins with '-'. Make one and add it."""
    for _ in range(5000):
        key = generate_key("ES256")
        kid = key_id(key)
        if kid.startswith("-"):
            break
    else:  # pragma: no cover - (63/64)**5000
        raise AssertionError("no dash-led thumbprint found")
    name = "es256-" + hashlib.sha256(kid.encode()).hexdigest()[:16] + ".pem"
    path = keys_dir / name
    path.write_bytes(key.as_pem(private=True))
    path.chmod(0o600)
    data = json.loads(manifest_bytes(keys_dir))
    data["keys"].append(
        {
            "kid": kid,
            "alg": "ES256",
            "state": "previous",
            "file": name,
            "created_at": int(time.time()),
            "retire_at": int(time.time()) + 3600,
        }
    )
    (keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
    return kid


def test_keys_cli_revokes_a_kid_starting_with_a_dash(live_server_factory):
    server = live_server_factory(signing_alg="ES256")
    kid = add_key_whose_kid_starts_with_a_dash(Path(server.env["ISSUER_KEYS_DIR"]))
    done = server.cli("keys", "revoke", kid, check=False)
    assert done.returncode == 0, done.stderr
    assert kid not in {row[0] for row in keys_table(server)}
