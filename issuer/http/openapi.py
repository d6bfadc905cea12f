"""``GET /openapi.json``: an OpenAPI 3.1 description of what the issuer really serves.

Built from the route table (:mod:`issuer.http.routes`) for the configured issuer URL, so
an issuer with a path (``https://host/tenant``) describes ``/tenant/oauth/token`` and its
metadata at each RFC 8414 / OIDC location. Every answer a client can get is here with its
body and headers: ``Cache-Control: no-store`` on token material, ``WWW-Authenticate`` on
401s, ``Retry-After`` on 429 and 503, the RFC 6749 §5.2 error body. ``tests/test_openapi.py``
runs schemathesis against the app: every response must conform and none may be a 5xx
other than the documented 503.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from issuer import __version__
from issuer.http import routes
from issuer.http.responses import json_bytes

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{name}"}


def _header(name: str) -> dict[str, Any]:
    return {name: _ref(f"headers/{name}")}


def _json(schema: str, *headers: str, description: str) -> dict[str, Any]:
    """A JSON response with ``schema`` and the named headers."""
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref(f"schemas/{schema}")}},
    }
    if headers:
        response["headers"] = {k: v for h in headers for k, v in _header(h).items()}
    return response


def _form(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {FORM: {"schema": _ref(f"schemas/{schema}")}}}


# Answers every POST form endpoint may give before its own logic runs.
_FORM_ERRORS = {
    "400": _json("Error", "Cache-Control", description="A malformed request (RFC 6749 §5.2)."),
    "401": _json(
        "Error",
        "Cache-Control",
        "WWW-Authenticate",
        description="Client authentication failed (invalid_client).",
    ),
    "413": _json("Error", "Cache-Control", description="The body is larger than 16 KiB."),
    "503": _json(
        "Error",
        "Cache-Control",
        "Retry-After",
        description="The database is unreachable; retry later.",
    ),
}
_BASIC: list[dict[str, list[str]]] = [
    {"clientBasic": []},
    {},
]  # Basic, or client_secret_post / a public client


def _operation(summary: str, **fields: Any) -> dict[str, Any]:
    return {"summary": summary, **fields}


def openapi_document(issuer_path: str) -> dict[str, Any]:
    """The description of an issuer whose URL has path ``issuer_path`` ('' at the root)."""
    p = issuer_path
    paths: dict[str, Any] = {
        p + routes.TOKEN: {
            "post": _operation(
                "Token endpoint: password and refresh_token grants (RFC 6749 §4.3, §6)",
                requestBody=_form("TokenRequest"),
                security=_BASIC,
                responses={
                    "200": _json("TokenResponse", "Cache-Control", description="Tokens issued."),
                    **_FORM_ERRORS,
                    "429": _json(
                        "Error",
                        "Cache-Control",
                        "Retry-After",
                        description="Too many failed logins for this user or address.",
                    ),
                },
            )
        },
        p + routes.REVOKE: {
            "post": _operation(
                "Token revocation (RFC 7009)",
                requestBody=_form("TokenParameter"),
                security=_BASIC,
                responses={
                    "200": {"description": "Revoked, or the token was unknown (RFC 7009 §2.2)."},
                    **_FORM_ERRORS,
                },
            )
        },
        p + routes.INTROSPECT: {
            "post": _operation(
                "Token introspection (RFC 7662), for confidential clients",
                requestBody=_form("TokenParameter"),
                security=[{"clientBasic": []}, {}],
                responses={
                    "200": _json(
                        "Introspection", "Cache-Control", description="active, and the claims."
                    ),
                    **_FORM_ERRORS,
                },
            )
        },
        p + routes.USERINFO: {
            method: _operation(
                "OIDC UserInfo (OIDC Core §5.3), RFC 6750 bearer token",
                security=[{"bearer": []}],
                responses={
                    "200": _json("UserInfo", "Cache-Control", description="The user's claims."),
                    "401": _json(
                        "BearerError",
                        "Cache-Control",
                        "WWW-Authenticate",
                        description="No token, or an invalid, expired or revoked one.",
                    ),
                    "403": _json(
                        "Error",
                        "Cache-Control",
                        "WWW-Authenticate",
                        description="The token lacks the openid scope (insufficient_scope).",
                    ),
                    "503": _FORM_ERRORS["503"],
                },
            )
            for method in ("get", "post")
        },
        p + routes.PASSWORD_RESET: {
            "post": _operation(
                "Redeem a password reset token from `issuer users reset-token`",
                requestBody=_form("PasswordReset"),
                responses={
                    "200": _json(
                        "PasswordChanged", "Cache-Control", description="Password changed."
                    ),
                    "400": _json(
                        "PasswordResetError",
                        "Cache-Control",
                        description="A bad, used or expired token, or a weak password.",
                    ),
                    "404": _json("Error", description="Password reset is not configured."),
                    "413": _FORM_ERRORS["413"],
                    "429": _json(
                        "Error",
                        "Cache-Control",
                        "Retry-After",
                        description="Too many failed attempts from this address.",
                    ),
                    "503": _FORM_ERRORS["503"],
                },
            )
        },
        p + routes.JWKS: {
            "get": _operation(
                "Public signing keys (RFC 7517), with ETag for conditional requests",
                responses={
                    "200": _json("JWKS", "Cache-Control", "ETag", description="The key set."),
                    "304": {"description": "Not modified (If-None-Match)."},
                },
            )
        },
        **{
            path: {
                "get": _operation(
                    "Discovery metadata (RFC 8414, OIDC Discovery)",
                    responses={
                        "200": _json("Metadata", "Cache-Control", description="The metadata.")
                    },
                )
            }
            for path in routes.metadata_paths(p)
        },
        p + routes.HEALTHZ: {
            "get": _operation(
                "Liveness",
                responses={"200": _json("Health", "Cache-Control", description="Alive.")},
            )
        },
        p + routes.READYZ: {
            "get": _operation(
                "Readiness: database reachable, signing key loaded",
                responses={
                    "200": _json("Readiness", "Cache-Control", description="Ready."),
                    "503": _json("Readiness", "Cache-Control", description="Not ready."),
                },
            )
        },
        p + routes.METRICS: {
            "get": _operation(
                "Prometheus metrics (text exposition format)",
                responses={
                    "200": {
                        "description": "Every worker's counters.",
                        "headers": _header("Cache-Control"),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "403": _json(
                        "Error",
                        "Cache-Control",
                        description="The client is outside metrics_networks.",
                    ),
                },
            )
        },
        p + routes.OPENAPI: {
            "get": _operation(
                "This document",
                responses={
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "issuer", "version": __version__},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "headers": HEADERS, "securitySchemes": SECURITY},
    }


_STRING = {"type": "string"}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _STRING, "error_description": _STRING},
    },
    "BearerError": {
        "type": "object",
        "description": "No credentials: a message and a bare challenge (RFC 6750 §3.1).",
        "properties": {"error": _STRING, "error_description": _STRING, "message": _STRING},
    },
    "PasswordResetError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": _STRING,
            "error_description": _STRING,
            "failed_rules": {"type": "array", "items": _STRING},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["grant_type"],
        "properties": {
            "grant_type": {"type": "string", "enum": ["password", "refresh_token"]},
            "username": _STRING,
            "password": _STRING,
            "refresh_token": _STRING,
            "scope": _STRING,
            "client_id": _STRING,
            "client_secret": _STRING,
        },
    },
    "TokenParameter": {
        "type": "object",
        "required": ["token"],
        "properties": {
            "token": _STRING,
            "token_type_hint": _STRING,
            "client_id": _STRING,
            "client_secret": _STRING,
        },
    },
    "PasswordReset": {
        "type": "object",
        "required": ["token", "new_password"],
        "properties": {"token": _STRING, "new_password": _STRING},
    },
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": _STRING,
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer"},
            "refresh_token": _STRING,
            "scope": _STRING,
            "id_token": _STRING,
        },
    },
    "Introspection": {
        "type": "object",
        "required": ["active"],
        "properties": {"active": {"type": "boolean"}},
    },
    "UserInfo": {"type": "object", "required": ["sub"], "properties": {"sub": _STRING}},
    "PasswordChanged": {
        "type": "object",
        "required": ["status", "sessions_ended"],
        "properties": {"status": {"const": "password_changed"}, "sessions_ended": {"const": True}},
    },
    "JWKS": {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
    },
    "Metadata": {
        "type": "object",
        "required": ["issuer", "token_endpoint", "jwks_uri"],
        "properties": {"issuer": _STRING, "token_endpoint": _STRING, "jwks_uri": _STRING},
    },
    "Health": {"type": "object", "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
}

HEADERS: dict[str, Any] = {
    "Cache-Control": {
        "description": "no-store on token material and errors; public max-age on keys "
        "and metadata.",
        "required": True,
        "schema": _STRING,
    },
    "WWW-Authenticate": {
        "description": "The challenge: Basic for a client that used Basic, else Bearer.",
        "required": False,
        "schema": _STRING,
    },
    "Retry-After": {"description": "Seconds to wait.", "required": True, "schema": _STRING},
    "ETag": {"description": "The key set's version.", "required": True, "schema": _STRING},
}

SECURITY: dict[str, Any] = {
    "clientBasic": {"type": "http", "scheme": "basic"},
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
}


def openapi_endpoint(issuer_path: str) -> Callable[[Request], Awaitable[Response]]:
    """``GET /openapi.json``: the document, serialized once."""
    body = json_bytes(openapi_document(issuer_path))
    headers = {"Cache-Control": "public, max-age=3600"}

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=JSON, headers=headers)

    return endpoint
