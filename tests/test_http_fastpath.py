"""The prepared documents answered in front of routing (issuer.http.fastpath).

They must answer exactly as the routes do (status, body, validators, caching headers,
conditional GET, HEAD), leave every other method and path to the router, and still pass
through the access log, which never shows a query string. Issuer URLs with a path: see
tests/test_issuer_path.py.
"""

from __future__ import annotations

import logging

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from issuer.http.fastpath import PreparedDocuments
from issuer.http.routes import HEALTHZ, JWKS, OIDC_METADATA
from issuer.logs import TextFormatter


def route_answer(client: TestClient, path: str, headers: dict[str, str] | None = None):
    """The answer of the route itself, with the fast path taken out of the stack."""
    app = client.app
    assert not isinstance(app, PreparedDocuments)
    endpoint = next(r.endpoint for r in app.routes if getattr(r, "path", None) == path)  # type: ignore[attr-defined]
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    request = Request({"type": "http", "method": "GET", "path": path, "headers": raw})
    return client.portal.call(endpoint, request)  # type: ignore[union-attr]


@pytest.mark.parametrize("path", [JWKS, OIDC_METADATA, HEALTHZ])
def test_a_prepared_document_is_answered_as_its_route_answers_it(client, path) -> None:
    response = client.get(path)
    expected = route_answer(client, path)
    assert response.status_code == expected.status_code == 200
    assert response.content == expected.body
    assert sorted(response.headers.raw) == sorted(expected.raw_headers)
    assert response.headers["content-type"] == "application/json"


def test_the_jwks_answers_a_matching_if_none_match_with_304(client) -> None:
    etag = client.get(JWKS).headers["etag"]
    response = client.get(JWKS, headers={"If-None-Match": f'W/"x", {etag}'})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    expected = route_answer(client, JWKS, {"If-None-Match": etag})
    assert sorted(response.headers.raw) == sorted(expected.raw_headers)
    assert client.get(JWKS, headers={"If-None-Match": '"other"'}).status_code == 200


def test_head_gets_the_headers_without_the_body(client) -> None:
    get, head = client.get(JWKS), client.head(JWKS)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["etag"] == get.headers["etag"]


def test_other_methods_and_paths_go_to_the_router(client) -> None:
    assert client.post(JWKS).status_code == 405
    # The router, not the fast path, redirects the trailing slash.
    assert client.get(JWKS + "/", follow_redirects=False).status_code == 307
    assert client.get("/nowhere").status_code == 404


def test_the_access_log_still_sees_them_without_the_query_string(client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="issuer.access"):
        client.get(JWKS + "?client_secret=hunter2")
    lines = [r.getMessage() for r in caplog.records if r.name == "issuer.access"]
    assert any(f'GET {JWKS}" 200' in line for line in lines)
    assert not any("hunter2" in line for line in lines)


def test_an_access_line_with_percent_signs_and_controls_stays_one_escaped_line(
    client, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="issuer.access")
    client.get("/no%25s%25d/x%0Ay")  # the path decodes to /no%s%d/x<LF>y
    [record] = [r for r in caplog.records if r.name == "issuer.access"]
    assert '"GET /no%s%d/x\ny" 404' in record.getMessage()
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert '"GET /no%s%d/x\\ny" 404' in line
