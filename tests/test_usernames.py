"""Canonical usernames (issue 6, item 5): case and NFKC variants are one account, for
logins, the failed-login budgets and the audit log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from issuer.compose import Components
from issuer.errors import DuplicateError
from issuer.models import Role
from issuer.settings import Settings
from tests.conftest import add_client, add_user, login

TOKEN = "/oauth/token"
VARIANTS = ["alice", "ALICE", "Alice", "\uff41\uff4c\uff49\uff43\uff45", "\uff21LICE"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    overrides: dict[str, Any] = {"login_failures_per_user_address": "2/minute"}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    return make_settings(**overrides)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_case_and_width_variant_logs_in_as_the_one_user(
    client: TestClient, components: Components, variant: str
) -> None:
    alice = add_user(components.store, "alice")
    auth = ("webapp", add_client(components.store, "webapp"))

    answer = login(client, auth, variant)

    assert answer.status_code == 200, answer.text
    claims = components.tokens.decode(answer.json()["access_token"])
    assert claims["sub"] == alice.id and claims["username"] == "alice"


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_a_variant_of_a_taken_username_cannot_be_added(
    components: Components, variant: str
) -> None:
    add_user(components.store, "alice")

    with pytest.raises(DuplicateError):
        components.store.add_user(variant, "$2b$04$" + "a" * 53, Role.ADMIN)


def test_failed_logins_count_against_the_canonical_name(
    client: TestClient, components: Components, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(components.store, "alice")
    auth = ("webapp", add_client(components.store, "webapp"))

    with caplog.at_level(logging.INFO, logger="issuer.audit"):
        assert login(client, auth, "\uff21LICE").status_code == 200
        assert login(client, auth, "ALICE", "Wr0ng-password!").status_code == 400
        assert login(client, auth, "\uff41lice", "Wr0ng-password!").status_code == 400
        blocked = login(client, auth, "alice")
        assert blocked.status_code == 429
        assert login(client, auth, "Alice").status_code == 429

    named = [r.getMessage() for r in caplog.records if "username=" in r.getMessage()]
    assert named and all("username=alice " in line for line in named), named
