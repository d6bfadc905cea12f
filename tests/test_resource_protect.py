"""Protect(verifier) guarding a real FastAPI app and a plain Starlette app (RFC 6750 answers).

The verifier is a SecretVerifier with tokens signed here (the live-issuer version of these
checks is in test_e2e_resource.py); what is under test is the HTTP answer of each case.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import time
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from joserfc.jwk import OctKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from issuer.resource import JWKSVerifier, Principal, Protect, SecretVerifier
from tests.conftest import free_port
from tests.test_resource import AUDIENCE, ISSUER, claims_for, new_key, sign

SECRET = secrets.token_urlsafe(48)
KEY = OctKey.import_key(SECRET.encode())
protect = Protect(SecretVerifier(SECRET, ISSUER, AUDIENCE), realm="orders")

Me = Annotated[Principal, Depends(protect.current_principal)]
Admin = Annotated[Principal, Depends(protect.require_role("admin"))]
Staff = Annotated[Principal, Depends(protect.require_role("admin", "engineer"))]
Writer = Annotated[Principal, Depends(protect.require_scope("write"))]
SeedUser = Annotated[Principal, Depends(protect.get_current_active_user)]


def as_json(who: Principal) -> dict[str, Any]:
    return {"sub": who.sub, "username": who.username, "role": who.role}


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/open")
    async def open_route() -> dict[str, str]:
        return {"hello": "world"}

    @api.get("/me")
    async def me(who: Me) -> dict[str, Any]:
        return as_json(who)

    @api.get("/admin")
    async def admin(who: Admin) -> dict[str, Any]:
        return as_json(who)

    @api.get("/staff")
    async def staff(who: Staff, again: Me) -> dict[str, Any]:
        assert who is again  # verified once per request
        return as_json(who)

    @api.post("/orders")
    async def write(who: Writer) -> dict[str, Any]:
        return as_json(who)

    @api.get("/seed")
    async def seed(who: SeedUser) -> dict[str, Any]:
        return as_json(who)

    return api


async def starlette_me(request: Request) -> JSONResponse:
    return JSONResponse(as_json(await protect.current_principal(request)))


async def starlette_admin(request: Request) -> JSONResponse:
    return JSONResponse(as_json(await protect.require_role("admin")(request)))


@pytest.fixture(params=["fastapi", "starlette"])
def api(request) -> TestClient:
    if request.param == "fastapi":
        app: Any = fastapi_app()
    else:
        app = Starlette(routes=[Route("/me", starlette_me), Route("/admin", starlette_admin)])
    with TestClient(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(**claims: Any) -> str:
    return sign(KEY, "HS256", claims_for(**claims))


def test_a_valid_token_reaches_the_route(api):
    response = api.get("/me", headers=bearer(token()))
    assert response.status_code == 200
    assert response.json() == {"sub": "u-1", "username": "alice", "role": "engineer"}


def test_no_token_gets_a_bare_challenge(api):
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer "}):
        response = api.get("/me", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="orders"'


@pytest.mark.parametrize(
    ("bad", "description"),
    [
        (lambda: token(exp=int(time.time()) - 60), "The access token has expired."),
        (lambda: token(aud="other"), "The access token is invalid."),
        (lambda: token(type="refresh"), "The access token is invalid."),
        (lambda: "garbage", "The access token is invalid."),
    ],
)
def test_a_refused_token_gets_invalid_token(api, bad, description):
    response = api.get("/me", headers=bearer(bad()))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="orders", error="invalid_token", error_description="{description}"'
    )


def test_a_missing_role_is_403(api):
    assert (
        api.get("/admin", headers=bearer(token(role="admin", roles=["admin"]))).status_code == 200
    )
    response = api.get("/admin", headers=bearer(token()))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer realm="orders", error="insufficient_scope", '
        'error_description="This requires the role admin."'
    )


def test_fastapi_roles_admit_any_of_several_and_scopes_are_all_required():
    with TestClient(fastapi_app()) as api:
        assert api.get("/staff", headers=bearer(token())).status_code == 200
        assert (
            api.get("/staff", headers=bearer(token(role="viewer", roles=None))).status_code == 403
        )
        assert api.get("/seed", headers=bearer(token())).status_code == 200
        assert api.get("/open").json() == {"hello": "world"}
        refused = api.post("/orders", headers=bearer(token(scope="openid read")))
        assert refused.status_code == 403
        assert refused.headers["www-authenticate"] == (
            'Bearer realm="orders", error="insufficient_scope", '
            'error_description="This requires the scope write.", scope="write"'
        )
        assert api.post("/orders", headers=bearer(token(scope="read write"))).status_code == 200


def test_unknown_roles_and_bad_scopes_fail_when_the_route_is_defined():
    with pytest.raises(ValueError, match="unknown role"):
        protect.require_role("admn")
    with pytest.raises(ValueError):
        protect.require_role()
    with pytest.raises(ValueError):
        protect.require_scope("read write")
    with pytest.raises(ValueError):
        Protect(protect.verifier, realm='a"b')


def test_an_unreachable_issuer_is_503_not_401():
    verifier = JWKSVerifier(f"http://127.0.0.1:{free_port()}", AUDIENCE, timeout=2)
    guarded = Protect(verifier)

    async def me(request: Request) -> JSONResponse:
        return JSONResponse(as_json(await guarded.current_principal(request)))

    rsa = new_key("RS256")
    with TestClient(Starlette(routes=[Route("/me", me)])) as api:
        response = api.get("/me", headers=bearer(sign(rsa, "RS256", claims_for())))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "www-authenticate" not in response.headers


def test_importing_and_using_issuer_resource_needs_no_fastapi():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["fastapi"] = None  # makes `import fastapi` raise ImportError
        import asyncio
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from issuer.resource import Protect, SecretVerifier

        protect = Protect(SecretVerifier("x" * 48, "https://id.example.com", "api"))
        request = Request({"type": "http", "method": "GET", "headers": []})
        try:
            asyncio.run(protect.require_role("admin")(request))
        except HTTPException as exc:
            print(exc.status_code, exc.headers["WWW-Authenticate"])
        for name in ("sqlalchemy", "authlib", "issuer.keystore", "issuer.settings"):
            assert name not in sys.modules, name
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '401 Bearer realm="api"'
