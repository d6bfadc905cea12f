"""Shared by the tests/test_keystore_*.py modules: a settable clock, an ES256 key manager
over a tmp keys dir, and small readers of keys/. Loaded as a plugin by tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from issuer.compose import build_key_manager
from issuer.keystore import MANIFEST_NAME, KeyManager
from issuer.tokens import TokenService

START = 1_700_000_000
ISSUER = "http://127.0.0.1:8000"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def es256(make_settings):
    return make_settings(signing_alg="ES256", secret_key=None, jwks_max_age=60)


@pytest.fixture
def manager(es256, clock) -> KeyManager:
    return build_key_manager(es256, clock=clock)


def by_state(records, state):
    return [r for r in records if r.state is state]


def only(records, state):
    found = by_state(records, state)
    assert len(found) == 1, records
    return found[0]


def token_service(keys, clock) -> TokenService:
    return TokenService(keys, issuer=ISSUER, audience="issuer-api", clock=clock)


def manifest_bytes(keys_dir: Path) -> bytes:
    return (keys_dir / MANIFEST_NAME).read_bytes()


def key_files(keys_dir: Path) -> set[str]:
    return {p.name for p in keys_dir.iterdir() if p.suffix in (".pem", ".key")}
