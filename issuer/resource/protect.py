"""Guarding Starlette and FastAPI routes with a verifier (RFC 6750 answers).

``Protect(verifier)`` gives request dependencies. In FastAPI they go in ``Depends``; in
Starlette a route awaits them with its request::

    protect = Protect(JWKSVerifier(issuer="https://id.example.com", audience="orders-api"))

    @app.get("/orders")                                  # FastAPI
    async def orders(who: Principal = Depends(protect.current_principal)): ...

    @app.delete("/orders/{id}")
    async def delete(id: str, who: Principal = Depends(protect.require_role("admin"))): ...

    async def orders(request: Request) -> Response:      # Starlette
        who = await protect.require_scope("read")(request)

Answers: no token → 401 with a bare ``WWW-Authenticate: Bearer realm="…"`` (§3.1);
a token refused by the verifier → 401 ``invalid_token``; a missing scope → 403
``insufficient_scope`` with ``scope="…"``; a missing role → 403 ``insufficient_scope``;
the issuer unreachable with nothing cached → 503 with ``Retry-After`` (nothing is wrong
with the token, so the client must not drop it). Failures are Starlette
``HTTPException``\\ s, which both frameworks render. FastAPI is never imported.

The principal is verified once per request and kept in the request scope, however many
dependencies ask for it. The seed's names are here too: ``get_current_user`` and
``get_current_active_user`` are :meth:`Protect.current_principal` (for an API a user is
active when its token verifies, and in introspection mode when the issuer says so).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.exceptions import HTTPException
from starlette.requests import Request

from issuer.bearer import challenge, token_from_header
from issuer.errors import ExpiredTokenError, IssuerUnreachableError, TokenError
from issuer.models import Role
from issuer.resource.principal import Principal

log = logging.getLogger("issuer.resource")

DEFAULT_REALM = "api"
RETRY_AFTER_SECONDS = 5
INVALID = "The access token is invalid."
EXPIRED = "The access token has expired."
Dependency = Callable[[Request], Awaitable[Principal]]


class Verifier(Protocol):
    """What Protect needs: JWKSVerifier, SecretVerifier and IntrospectionVerifier all fit."""

    async def averify(self, token: str) -> Principal:
        """The principal of a valid access token, or a TokenError."""
        ...


class Protect:
    """Request dependencies over one verifier; create one per API and reuse it."""

    def __init__(self, verifier: Verifier, *, realm: str = DEFAULT_REALM) -> None:
        if not realm or any(c in realm for c in '"\\\r\n'):
            raise ValueError("realm: a non-empty name without quotes or backslashes")
        self.verifier = verifier
        self.realm = realm
        self._scope_key = f"issuer.resource.principal.{id(self)}"

    async def current_principal(self, request: Request) -> Principal:
        """The principal behind the request's bearer token; 401 (or 503) otherwise."""
        cached = request.scope.get(self._scope_key)
        if isinstance(cached, Principal):
            return cached
        token = token_from_header(request.headers.get("authorization"))
        if token is None:
            raise self._unauthorized()
        try:
            principal = await self.verifier.averify(token)
        except TokenError as exc:
            log.info("bearer token refused: %s", exc.code)
            description = EXPIRED if isinstance(exc, ExpiredTokenError) else INVALID
            raise self._unauthorized("invalid_token", description) from None
        except IssuerUnreachableError as exc:
            log.warning("cannot verify bearer tokens: %s", exc)
            raise HTTPException(
                503,
                detail="The token issuer is unreachable; retry later.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        request.scope[self._scope_key] = principal
        return principal

    # The seed's names, for APIs.
    async def get_current_user(self, request: Request) -> Principal:
        """:meth:`current_principal`, under the seed's name."""
        return await self.current_principal(request)

    async def get_current_active_user(self, request: Request) -> Principal:
        """:meth:`current_principal`: for an API, a valid token is an active user."""
        return await self.current_principal(request)

    def require_role(self, *roles: str | Role) -> Dependency:
        """A dependency admitting principals holding any of ``roles`` (exact match); else 403.

        Unknown role names raise ValueError here, when the route is defined.
        """
        if not roles:
            raise ValueError("name at least one role")
        allowed = sorted({Role.parse(str(role)).value for role in roles})

        async def role_checker(request: Request) -> Principal:
            principal = await self.current_principal(request)
            if not principal.has_role(*allowed):
                description = "This requires the role " + " or ".join(allowed) + "."
                raise self._forbidden(description)
            return principal

        role_checker.__name__ = "require_role_" + "_".join(allowed)
        return role_checker

    def require_scope(self, *scopes: str) -> Dependency:
        """A dependency admitting principals granted every one of ``scopes``; else 403."""
        if not scopes or not all(_is_scope_token(s) for s in scopes):
            raise ValueError("name at least one scope (RFC 6749 §3.3 characters, no spaces)")
        needed = " ".join(sorted(set(scopes)))

        async def scope_checker(request: Request) -> Principal:
            principal = await self.current_principal(request)
            if not principal.has_scope(*scopes):
                raise self._forbidden(f"This requires the scope {needed}.", scope=needed)
            return principal

        scope_checker.__name__ = "require_scope_" + "_".join(sorted(set(scopes)))
        return scope_checker

    def _unauthorized(
        self, error: str | None = None, description: str | None = None
    ) -> HTTPException:
        return HTTPException(
            401,
            detail=description or "Authentication required.",
            headers={"WWW-Authenticate": challenge(error, description, realm=self.realm)},
        )

    def _forbidden(self, description: str, scope: str | None = None) -> HTTPException:
        value = challenge("insufficient_scope", description, realm=self.realm, scope=scope)
        return HTTPException(403, detail=description, headers={"WWW-Authenticate": value})


def _is_scope_token(scope: str) -> bool:
    """RFC 6749 §3.3: %x21 / %x23-5B / %x5D-7E, at least one."""
    return bool(scope) and all(c == "!" or "#" <= c <= "[" or "]" <= c <= "~" for c in scope)
