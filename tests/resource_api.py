"""A resource server for the end-to-end tests: a Starlette app that knows only the issuer's URL.

Run by tests/test_e2e_resource.py as its own uvicorn process::

    python -m uvicorn --factory tests.resource_api:create_app --port PORT

Configured by environment variables (never the issuer's own ISSUER_* settings):
``API_ISSUER`` (the issuer URL), ``API_AUDIENCE``, ``API_MODE`` (``jwks`` or
``introspection``), for introspection ``API_CLIENT_ID`` / ``API_CLIENT_SECRET`` /
``API_CACHE_TTL``, for JWKS ``API_MIN_AGE`` / ``API_COOLDOWN`` / ``API_RETRY``.
Every answer of a protected route is the principal as JSON; refusals are Protect's.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from issuer.resource import (
    CachePolicy,
    IntrospectionVerifier,
    JWKSVerifier,
    Principal,
    Protect,
    Verifier,
)


def build_verifier(env: dict[str, str]) -> Verifier:
    issuer, audience = env["API_ISSUER"], env["API_AUDIENCE"]
    if env.get("API_MODE") == "introspection":
        return IntrospectionVerifier(
            issuer,
            env["API_CLIENT_ID"],
            env["API_CLIENT_SECRET"],
            audience=audience,
            cache_ttl=float(env.get("API_CACHE_TTL", "30")),
        )
    policy = CachePolicy(
        min_age=float(env.get("API_MIN_AGE", "1")),
        cooldown=float(env.get("API_COOLDOWN", "30")),
        retry_interval=float(env.get("API_RETRY", "5")),
    )
    return JWKSVerifier(issuer, audience, cache=policy, leeway=0)


def as_json(who: Principal) -> JSONResponse:
    return JSONResponse({"sub": who.sub, "username": who.username, "role": who.role})


def create_app() -> Starlette:
    protect = Protect(build_verifier(dict(os.environ)), realm="orders")
    admins_only = protect.require_role("admin")

    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"open": True})

    async def me(request: Request) -> JSONResponse:
        return as_json(await protect.current_principal(request))

    async def admin(request: Request) -> JSONResponse:
        return as_json(await admins_only(request))

    return Starlette(routes=[Route("/open", open_route), Route("/me", me), Route("/admin", admin)])
