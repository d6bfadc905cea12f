"""The HTTP endpoints. Async handlers read the request, then run blocking work in a thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import anyio.to_thread
from anyio import CapacityLimiter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from issuer.bearer import challenge, token_from_header
from issuer.errors import IssuerError, KeyStoreError, TokenError
from issuer.http import routes
from issuer.http.addresses import Network, client_address
from issuer.http.forms import BadRequestError, parse_form, read_body
from issuer.http.published import Document, PublishedJwks
from issuer.http.responses import error_response, json_bytes, json_response
from issuer.keystore import KeyStore
from issuer.models import User, may_hold_tokens
from issuer.oauth.metadata import discovery_document
from issuer.oauth.oidc import OPENID, userinfo_claims
from issuer.oauth.requests import HttpRequest, OAuthResponse
from issuer.oauth.server import IssuerServer
from issuer.store.base import Store, UserStore
from issuer.tokens import ACCESS, TokenService

log = logging.getLogger("issuer.http")

OAuthCall = Callable[[HttpRequest], OAuthResponse]
RETRY_AFTER_SECONDS = 5
# Threads for requests that wait for bcrypt (password logins, password resets), apart
# from the shared pool (anyio's 40) that every other blocking call uses. bcrypt runs one
# check per core (issuer.passwords), so during a login storm each of these requests holds
# its thread for seconds while it waits its turn; in the shared pool 40 of them would
# leave refresh, introspection, userinfo and the JWKS reload check without a thread.
# Past this many, logins wait on the event loop, holding no thread at all.
BCRYPT_WAITER_THREADS = 64


def endpoint_urls(issuer: str) -> dict[str, str]:
    """The absolute URL of every endpoint discovery names, from the route table."""
    return {
        "token_endpoint": issuer + routes.TOKEN,
        "jwks_uri": issuer + routes.JWKS,
        "revocation_endpoint": issuer + routes.REVOKE,
        "introspection_endpoint": issuer + routes.INTROSPECT,
        "userinfo_endpoint": issuer + routes.USERINFO,
    }


_HEALTHY = Document(json_bytes({"status": "ok"}), {"Cache-Control": "no-store"})


@dataclass
class Endpoints:
    """The handlers, bound to the components ``create_app`` built."""

    issuer_url: str
    server: IssuerServer
    tokens: TokenService
    keys: KeyStore
    store: Store
    users: UserStore
    discovery_bytes: bytes
    jwks_max_age: int
    trusted_proxies: tuple[Network, ...] = ()
    password_reset_call: OAuthCall | None = None
    key_reload_interval: float = 0.0  # 0: the JWKS handler asks the key store every time
    _jwks: PublishedJwks = field(init=False, repr=False)
    _discovery: Document = field(init=False, repr=False)
    # The key set's (signing alg, algorithms) the discovery document was built for.
    _discovery_algorithms: tuple[str, frozenset[str]] | None = field(init=False, default=None)

    _bcrypt_waiters: CapacityLimiter | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._jwks = PublishedJwks(self.keys, self.jwks_max_age, self.key_reload_interval)
        self._discovery = Document(self.discovery_bytes, {"Cache-Control": "public, max-age=3600"})

    token_call: OAuthCall | None = None  # the token endpoint, wrapped (metrics); else server's
    on_database_error: Callable[[], None] | None = None

    async def token(self, request: Request) -> Response:
        call = self.token_call if self.token_call is not None else self.server.token_response
        return await self._oauth(request, routes.TOKEN, call)

    async def revoke(self, request: Request) -> Response:
        return await self._oauth(request, routes.REVOKE, self.server.revocation_response)

    async def introspect(self, request: Request) -> Response:
        return await self._oauth(request, routes.INTROSPECT, self.server.introspection_response)

    async def password_reset(self, request: Request) -> Response:
        """Redeem a password reset token (issuer.resets); 404 when not configured."""
        if self.password_reset_call is None:
            return error_response("not_found", "Password reset is not available.", 404)
        return await self._oauth(request, routes.PASSWORD_RESET, self.password_reset_call)

    def _threads_for(self, path: str, form: list[tuple[str, str]]) -> CapacityLimiter | None:
        """The bcrypt waiters' threads for a password login or reset, else None (shared)."""
        if path == routes.PASSWORD_RESET or (
            path == routes.TOKEN and ("grant_type", "password") in form
        ):
            if self._bcrypt_waiters is None:  # created on the event loop, on first use
                self._bcrypt_waiters = CapacityLimiter(BCRYPT_WAITER_THREADS)
            return self._bcrypt_waiters
        return None

    async def _oauth(self, request: Request, path: str, call: OAuthCall) -> Response:
        try:
            form = parse_form(await read_body(request))
        except BadRequestError as exc:
            return error_response("invalid_request", exc.description, exc.status)
        http_request = HttpRequest(
            method=request.method,
            url=self.issuer_url + path,
            headers=request.headers,
            form=form,
            query=request.query_params.multi_items(),
            content_type=request.headers.get("content-type", ""),
            client_ip=client_address(
                request.client.host if request.client else "",
                request.headers.getlist("x-forwarded-for"),
                self.trusted_proxies,
            ),
        )
        threads = self._threads_for(path, form)
        # Not for a request that waits for bcrypt: it would hold a connection for seconds.
        run: OAuthCall = call if threads is not None else partial(self._in_request_scope, call)
        try:
            result = await anyio.to_thread.run_sync(run, http_request, limiter=threads)
        except KeyStoreError as exc:
            return _keys_unavailable(exc)
        except Exception:
            unavailable = await self._storage_unavailable()
            if unavailable is None:
                raise
            return unavailable
        return json_response(result.body, result.status, result.headers)

    def _in_request_scope(self, call: OAuthCall, http_request: HttpRequest) -> OAuthResponse:
        """``call`` with its store calls on one database connection (Store.request_scope)."""
        with self.store.request_scope():
            return call(http_request)

    async def _storage_unavailable(self) -> Response | None:
        """A 503 if the database is down (the likely cause of a failure), else None.

        A database outage is not the client's fault nor a bug: 503 with ``Retry-After``
        tells clients and load balancers to come back, where a 500 would page someone.
        """
        if await run_in_threadpool(self.store.ping):
            return None
        log.warning(
            "database unreachable or not initialized: answering 503; check database_url "
            "and that the database is up, then run `issuer db upgrade` if it is new"
        )
        if self.on_database_error is not None:
            self.on_database_error()
        return _unavailable()

    async def userinfo(self, request: Request) -> Response:
        """OIDC Core §5.3 UserInfo, RFC 6750-protected: the user behind an ``openid`` token.

        An access token granted without ``openid`` is refused with 403
        ``insufficient_scope`` (RFC 6750 §3.1), naming the scope it needs.
        """
        token = token_from_header(request.headers.get("authorization"))
        if token is None:
            # RFC 6750 §3.1: a request with no credentials gets a challenge, no error code.
            return json_response(
                {"message": "A bearer access token is required."},
                401,
                {"WWW-Authenticate": challenge(), "Cache-Control": "no-store"},
            )
        try:
            user, scope = await run_in_threadpool(self._active_user, token)
        except (TokenError, IssuerError) as exc:
            description = "The access token is invalid, expired or revoked."
            log.info("userinfo refused: %s", exc.code)
            return json_response(
                {"error": "invalid_token", "error_description": description},
                401,
                {
                    "WWW-Authenticate": challenge("invalid_token", description),
                    "Cache-Control": "no-store",
                },
            )
        except Exception:
            unavailable = await self._storage_unavailable()
            if unavailable is None:
                raise
            return unavailable
        if OPENID not in scope.split(" "):
            description = "The access token was not granted the openid scope."
            return json_response(
                {"error": "insufficient_scope", "error_description": description},
                403,
                {
                    "WWW-Authenticate": challenge("insufficient_scope", description, OPENID),
                    "Cache-Control": "no-store",
                },
            )
        return json_response(userinfo_claims(user, scope), headers={"Cache-Control": "no-store"})

    def _active_user(self, token: str) -> tuple[User, str]:
        """The enabled user behind a valid access token, and the token's scope."""
        claims = self.tokens.verify(token, ACCESS)
        user = self.users.get_by_id(claims["sub"])
        if not may_hold_tokens(user):
            raise TokenError("the user is unknown or disabled")
        scope = claims.get("scope")
        return user, scope if isinstance(scope, str) else ""

    async def jwks(self, request: Request) -> Response:
        """Public keys only, from prepared bytes on the event loop; conditional GET."""
        document = await self._jwks.document()
        return document.response(request.headers.get("if-none-match"))

    async def discovery(self, request: Request) -> Response:
        document = await self.discovery_document()
        return document.response()

    async def healthz(self, request: Request) -> Response:
        return _HEALTHY.response()

    # The same documents for issuer.http.fastpath, which answers them before routing.
    async def jwks_document(self) -> Document:
        return await self._jwks.document()

    async def discovery_document(self) -> Document:
        """The discovery document, which names the key set's algorithms: rebuilt when they
        change (an algorithm switch; rare), never while nothing signs (the last one stays).
        The key set comes from the JWKS publisher, so this stays on the event loop."""
        await self._jwks.document()
        return self._current_discovery()

    async def healthz_document(self) -> Document:
        return _HEALTHY

    # ...and without waiting, for the HTTP edge: None when a key set check is due.
    def jwks_now(self) -> Document | None:
        return self._jwks.fresh()

    def discovery_now(self) -> Document | None:
        return None if self._jwks.fresh() is None else self._current_discovery()

    def healthz_now(self) -> Document | None:
        return _HEALTHY

    def _current_discovery(self) -> Document:
        key_set = self._jwks.key_set
        if key_set is not None and key_set.signing is not None:
            algorithms = (key_set.signing_alg, key_set.algorithms)
            if algorithms != self._discovery_algorithms:
                self._discovery = Document(
                    metadata_bytes(self.issuer_url, self.server), self._discovery.headers
                )
                self._discovery_algorithms = algorithms
        return self._discovery

    async def readyz(self, request: Request) -> Response:
        reasons = await run_in_threadpool(self._readiness)
        checks = {name: reason is None for name, reason in reasons.items()}
        ready = all(checks.values())
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
        if not ready:
            body["reasons"] = {name: reason for name, reason in reasons.items() if reason}
        return json_response(body, 200 if ready else 503, {"Cache-Control": "no-store"})

    def _readiness(self) -> dict[str, str | None]:
        """Each check's problem, with what fixes it; None when it passes."""
        try:
            self.keys.current().require_signing()
            keys_problem = None
        except KeyStoreError as exc:
            keys_problem = str(exc)
        database_problem = None
        if not self.store.ping():
            database_problem = (
                "the database is unreachable or not initialized: check database_url, "
                "then run `issuer db upgrade`"
            )
        return {"database": database_problem, "signing_key": keys_problem}


def _unavailable() -> Response:
    """503 ``temporarily_unavailable`` with ``Retry-After``: server-side trouble is not
    the client's fault nor a bug, and clients and load balancers know to come back."""
    return error_response(
        "temporarily_unavailable",
        "The service is temporarily unavailable; retry later.",
        503,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _keys_unavailable(exc: KeyStoreError) -> Response:
    log.error("cannot sign tokens, answering 503: %s", exc)
    return _unavailable()


def metadata_bytes(issuer: str, server: IssuerServer) -> bytes:
    """The discovery document of ``server`` (RFC 8414 and OIDC Discovery share it)."""
    return json_bytes(discovery_document(issuer, endpoint_urls(issuer), server))
