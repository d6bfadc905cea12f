"""keys/manifest.json: records round-trip, what rotation wrote reads back, broken
manifests are refused."""

from __future__ import annotations

import json

import pytest

from issuer.errors import KeyStoreError
from issuer.keystore import MANIFEST_NAME, KeyRecord, KeyState, read_manifest
from tests.keystore_support import manifest_bytes


def test_manifest_record_survives_a_json_round_trip():
    record = KeyRecord(
        kid="abc",
        alg="ES256",
        state=KeyState.PREVIOUS,
        file="es256-0123456789abcdef.pem",
        created_at=1,
        published_at=2,
        activated_at=3,
        retire_at=4,
    )
    assert KeyRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_manifest_on_disk_reads_back_as_the_records_rotation_wrote(manager, es256):
    result = manager.ensure()
    assert result is not None
    assert read_manifest(es256.keys_dir) == result.records
    assert manager.records() == result.records


@pytest.mark.parametrize(
    "entry",
    [
        {"kid": "k", "alg": "ES256", "state": "active", "file": "../etc/passwd", "created_at": 1},
        {"kid": "k", "alg": "ES256", "state": "active", "file": ".lock", "created_at": 1},
        {"kid": "k", "alg": "none", "state": "active", "file": "x.pem", "created_at": 1},
        {"kid": "k", "alg": "ES256", "state": "signing", "file": "x.pem", "created_at": 1},
        {"kid": "", "alg": "ES256", "state": "active", "file": "x.pem", "created_at": 1},
        {"kid": "k", "alg": "ES256", "state": "active", "file": "x.pem", "created_at": "1"},
        {"kid": "k", "alg": "ES256", "state": "active", "file": "x.pem"},
    ],
)
def test_malformed_manifest_entry_is_refused(entry):
    with pytest.raises(KeyStoreError):
        KeyRecord.from_json(entry)


def test_manifest_with_two_active_keys_of_one_algorithm_is_refused(manager, es256):
    manager.ensure()
    data = json.loads(manifest_bytes(es256.keys_dir))
    for entry in data["keys"]:
        entry["state"] = "active"
    (es256.keys_dir / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(KeyStoreError, match="more than one active"):
        read_manifest(es256.keys_dir)
