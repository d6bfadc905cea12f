"""Request dependencies for APIs that accept this issuer's access tokens (RFC 6750).

They work as FastAPI dependencies and from plain Starlette routes, without making
FastAPI a dependency of this package: when FastAPI is importable their defaults are
``fastapi.Depends(...)``, so FastAPI wires them by itself; otherwise (and in Starlette)
:func:`authenticate` chains them::

    # FastAPI
    @app.get("/me")
    async def me(user: User = Depends(get_current_active_user)) -> dict: ...

    @app.delete("/things/{id}")
    async def delete(user: User = Depends(require_role("admin"))) -> None: ...

    # Starlette
    async def me(request: Request) -> Response:
        user = await authenticate(request, "engineer", "admin")

These are for routes served *with the issuer's own components* (its database and keys):
tokens are checked by the :class:`issuer.tokens.TokenService` the request's app holds as
``app.state.tokens`` (``create_app`` sets it; an app of yours sharing the issuer's
components sets it too), including the revocation check, so logged-out tokens are refused
at once. Two apps in one process each use their own. Without ``app.state.tokens`` (or a
request, when called directly) they fall back to the seed's module-level service,
:func:`issuer.tokens.configure`. An API that has only the issuer's URL uses
:mod:`issuer.resource` instead, whose ``Protect`` offers the same names.

The revocation check and the user lookup may hit a database: they run in a worker
thread, never on the event loop.

Failures are :class:`starlette.exceptions.HTTPException`\\ s, which FastAPI and Starlette
both render: 401 with ``WWW-Authenticate: Bearer`` for a missing token (no error code,
RFC 6750 §3.1) or an invalid, expired, revoked or refresh token (``invalid_token``);
403 for a disabled user or a missing role. Roles are matched exactly: ``admin`` does
not imply ``engineer``; list every role a route admits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from issuer import tokens
from issuer.bearer import challenge, token_from_header
from issuer.errors import TokenError, UnknownUserError
from issuer.models import Role, User, may_hold_tokens

log = logging.getLogger("issuer.dependencies")

REFUSED_DESCRIPTION = "The access token is invalid, expired or revoked."


class _Unset:
    """The default of an argument FastAPI would inject, when FastAPI is not installed."""

    def __repr__(self) -> str:
        return "<injected by FastAPI, or pass it explicitly>"


UNSET: Final = _Unset()


def _depends(dependency: Callable[..., Any]) -> Any:
    """``fastapi.Depends(dependency)`` if FastAPI is importable, else a marker.

    Imported here rather than at the top so FastAPI stays optional: Starlette users
    never need it.
    """
    try:
        from fastapi import Depends  # noqa: PLC0415 - optional dependency
    except ImportError:  # pragma: no cover - FastAPI is installed wherever tests run
        return UNSET
    return Depends(dependency)


def _unauthorized(error: str | None = None, description: str | None = None) -> HTTPException:
    return HTTPException(
        401,
        detail=description or "Authentication required.",
        headers={"WWW-Authenticate": challenge(error, description)},
    )


async def bearer_token(request: Request) -> str:
    """The token of the ``Authorization: Bearer`` header (RFC 6750 §2.1); 401 without one."""
    token = token_from_header(request.headers.get("authorization"))
    if token is None:
        # No credentials at all: a bare challenge, without an error code (RFC 6750 §3.1).
        raise _unauthorized()
    return token


# FastAPI reads these defaults to wire the chain; module-level, so one object each.
_TOKEN = _depends(bearer_token)


def service_for(request: Request | None) -> tokens.TokenService:
    """The TokenService of the request's app (``app.state.tokens``), else the seed's shim."""
    app = request.scope.get("app") if request is not None else None
    service = getattr(getattr(app, "state", None), "tokens", None)
    if isinstance(service, tokens.TokenService):
        return service
    try:
        return tokens.get_service()
    except RuntimeError:
        raise RuntimeError(
            "issuer.dependencies needs the issuer's TokenService as app.state.tokens; "
            "an API that has only the issuer's URL uses issuer.resource.Protect"
        ) from None


async def get_current_user(token: str = _TOKEN, request: Request = None) -> User:  # type: ignore[assignment]
    """The user an access token speaks for (enabled or not); 401 ``invalid_token`` otherwise.

    FastAPI passes ``request`` itself; direct callers may pass it to pick the app's service.
    """
    if not isinstance(token, str):
        raise TypeError("get_current_user needs the bearer token (see authenticate())")
    service = service_for(request)
    try:
        return await run_in_threadpool(service.get_current_user, token)
    except (TokenError, UnknownUserError) as exc:
        log.info("bearer token refused: %s", exc.code)
        raise _unauthorized("invalid_token", REFUSED_DESCRIPTION) from None


_CURRENT_USER = _depends(get_current_user)


async def get_current_active_user(current_user: User = _CURRENT_USER) -> User:
    """The current user if enabled; 403 for a disabled user (the token itself was fine)."""
    if not isinstance(current_user, User):
        raise TypeError("get_current_active_user needs a User (see authenticate())")
    if not may_hold_tokens(current_user):
        raise HTTPException(403, detail="The user is disabled.")
    return current_user


_ACTIVE_USER = _depends(get_current_active_user)


def _parse_roles(roles: tuple[str | Role, ...]) -> frozenset[Role]:
    if not roles:
        raise ValueError("name at least one role")
    return frozenset(Role.parse(str(role)) for role in roles)


def _check_role(user: User, allowed: frozenset[Role]) -> User:
    if user.role not in allowed:
        raise HTTPException(
            403,
            detail="This requires the role " + " or ".join(sorted(r.value for r in allowed)) + ".",
            headers={"WWW-Authenticate": challenge("insufficient_scope")},
        )
    return user


def require_role(*roles: str | Role) -> Callable[..., Awaitable[User]]:
    """A dependency admitting active users whose role is one of ``roles`` (exact match).

    Unknown role names raise ValueError here, when the route is defined, not per request.
    """
    allowed = _parse_roles(roles)

    async def role_checker(current_user: User = _ACTIVE_USER) -> User:
        if not isinstance(current_user, User):
            raise TypeError("the role check needs a User (see authenticate())")
        return _check_role(current_user, allowed)

    role_checker.__name__ = "require_role_" + "_".join(sorted(r.value for r in allowed))
    return role_checker


async def authenticate(request: Request, *roles: str | Role) -> User:
    """For Starlette routes: the active user behind the request's bearer token.

    With ``roles``, the user must have one of them (403 otherwise). Raises the same
    HTTPExceptions as the FastAPI dependencies.
    """
    allowed = _parse_roles(roles) if roles else None
    token = await bearer_token(request)
    user = await get_current_active_user(await get_current_user(token, request))
    return user if allowed is None else _check_role(user, allowed)
