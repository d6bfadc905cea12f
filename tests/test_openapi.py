"""``GET /openapi.json``: an OpenAPI 3.1 description that matches what the server sends.

Why: ``/openapi.json`` answered 404 although the design lists it; client generators,
gateways and fuzzers had nothing to read. schemathesis generates requests for every
operation from the document (a bounded number of examples each) and checks every answer
against it: status code, content type, headers and body documented, and never a 5xx.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from starlette.applications import Starlette
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import build_components
from issuer.http import routes
from issuer.http.openapi import openapi_document
from issuer.settings import load_settings
from tests.conftest import TEST_ROUNDS, add_client, add_user, migrate_database

MAX_EXAMPLES = 25  # per operation: bounded, so `make test` stays quick
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_app(
    tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_template: Path
) -> Iterator[Starlette]:
    """One issuer for the whole run: SQLite, HS256 keys from the environment, a user and
    a client (so some generated requests reach real grants)."""
    tmp = tmp_path_factory.mktemp("openapi")
    settings = load_settings(
        {
            "ISSUER_URL": "http://127.0.0.1:8000",
            "ISSUER_DATABASE_URL": f"sqlite:///{tmp / 'issuer.db'}",
            "ISSUER_KEYS_DIR": str(tmp / "keys"),
            "ISSUER_SECRET_KEY": secrets.token_urlsafe(48),
            "ISSUER_BCRYPT_ROUNDS": str(TEST_ROUNDS),
            "ISSUER_CONFIG": str(Path(__file__).parent / "empty.toml"),
        }
    )
    migrate_database(settings.database_url, migrated_sqlite_template)
    parts = build_components(settings)
    add_user(parts.store, "alice")
    add_client(parts.store, "webapp")
    app = create_app(components=parts)
    with TestClient(app):  # runs the lifespan
        yield app
    parts.close()


# Every operation of the document, one test each: "POST /oauth/token", "GET /healthz", …
OPERATIONS = [
    f"{method.upper()} {path}"
    for path, methods in openapi_document("")["paths"].items()
    for method in methods
]


@pytest.fixture(scope="module")
def fuzzed_schema(fuzzed_app: Starlette) -> Any:
    """The document as the app serves it, bound to the app (requests go to it in-process)."""
    return schemathesis.openapi.from_asgi(routes.OPENAPI, fuzzed_app)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_answer_conforms_and_none_is_a_server_error(fuzzed_schema: Any, label: str) -> None:
    operation = fuzzed_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_the_document_lists_every_served_path(fuzzed_app: Starlette) -> None:
    with TestClient(fuzzed_app) as client:
        document = client.get(routes.OPENAPI).json()
    assert document["openapi"].startswith("3.1")
    served = {getattr(route, "path", "") for route in fuzzed_app.routes}
    assert set(document["paths"]) == served
    assert routes.PASSWORD_RESET in document["paths"]


def test_an_issuer_with_a_path_describes_its_own_locations() -> None:
    paths = set(openapi_document("/tenant")["paths"])
    assert "/tenant/oauth/token" in paths
    assert "/.well-known/oauth-authorization-server/tenant" in paths
    assert "/tenant/.well-known/openid-configuration" in paths
    assert "/.well-known/openid-configuration/tenant" in paths
