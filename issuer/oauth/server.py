"""The authorization server: Authlib's core wired to our stores, tokens and hasher.

It speaks only :class:`HttpRequest` in and :class:`OAuthResponse` out; ``issuer.http``
does the Starlette side. Its methods are blocking (bcrypt, database): call them from a
worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
)

from issuer.audit import audit_event
from issuer.models import RefreshRecord, User
from issuer.oauth.clients import (
    ClientAuthenticationError,
    OAuthClient,
    attempted_auth_method,
    authenticate_client_secret_basic,
    authenticate_client_secret_post,
    authenticate_none,
    method_mismatch_description,
    scope_list,
    uses_basic,
)
from issuer.oauth.endpoints import Introspection, Revocation
from issuer.oauth.grants import PasswordGrant, RefreshTokenGrant
from issuer.oauth.oidc import OPENID, IdTokens
from issuer.oauth.requests import HttpRequest, IssuerOAuth2Request, OAuthResponse
from issuer.passwords import PasswordHasher
from issuer.ratelimit import LoginLimiter
from issuer.sessions import (
    DEFAULT_SESSION_MAX_LIFETIME,
    SESSION_CLAIM,
    Lifetimes,
    SessionPolicy,
    audit_ended,
    user_fields,
)
from issuer.store.base import Store, UserStore
from issuer.tokens import REFRESH, TokenService

log = logging.getLogger("issuer.oauth")

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
NO_STORE_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]
LoginFailureHook = Callable[[HttpRequest, str], None]
# The parameters this issuer reads. Only these are ever named in an error description:
# RFC 6749 §5.2 allows only printable ASCII without a quote or backslash there (Authlib raises on
# anything else), so a client's own parameter names are described, never echoed.
KNOWN_PARAMETERS = frozenset(
    {
        "grant_type",
        "username",
        "password",
        "scope",
        "refresh_token",
        "client_id",
        "client_secret",
        "token",
        "token_type_hint",
    }
)

# Secrets a client might put in the URL (where proxies, logs and browser history keep them).
CREDENTIAL_PARAMETERS = frozenset({"password", "client_secret", "refresh_token", "token"})


def silence_authlib_token_logging() -> None:
    """Authlib logs issued tokens at debug level ("Issue token %r to %r"): never let it emit."""
    logging.getLogger("authlib").setLevel(logging.INFO)


class IssuerServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib AuthorizationServer with the password and refresh_token grants (RFC 6749)."""

    # What this server offers, registered from these and read by the discovery metadata.
    GRANTS = (PasswordGrant, RefreshTokenGrant)
    CLIENT_AUTH_METHODS = (
        ("client_secret_basic", authenticate_client_secret_basic),
        ("client_secret_post", authenticate_client_secret_post),
        ("none", authenticate_none),
    )

    def __init__(
        self,
        *,
        store: Store,
        users: UserStore,
        tokens: TokenService,
        hasher: PasswordHasher,
        scopes: tuple[str, ...],
        default_scope: str,
        login_failure_hook: LoginFailureHook | None = None,
        limiter: LoginLimiter | None = None,
        sessions: SessionPolicy | None = None,
        refresh_retry_window: int = 0,
    ) -> None:
        super().__init__(scopes_supported=list(scopes))
        silence_authlib_token_logging()
        self.store = store
        self.users = users
        self.tokens = tokens
        self.hasher = hasher
        self.scopes = scopes
        self.default_scope = default_scope
        self.login_failure_hook = login_failure_hook
        self.limiter = limiter
        self.id_tokens = IdTokens(tokens)
        self.sessions = sessions or SessionPolicy(
            tokens.access_ttl, tokens.refresh_ttl, DEFAULT_SESSION_MAX_LIFETIME
        )
        self.refresh_retry_window = refresh_retry_window
        for name, method in self.CLIENT_AUTH_METHODS:
            self.register_client_auth_method(name, method)
        for grant in self.GRANTS:
            self.register_grant(grant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    # -- Authlib seams -------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        client = self.store.get_client(client_id)
        if client is None:
            return None
        scopes = self.scopes
        if OPENID in scopes and not self.id_tokens.available_to(client):
            scopes = tuple(s for s in scopes if s != OPENID)
        return OAuthClient(client, scopes)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Never reached: each grant's ``save_token`` records its refresh token (a login
        starts a session, a refresh rotates in one compare-and-set), see oauth/grants.py."""
        raise NotImplementedError("each grant of this issuer saves its own tokens")

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib's signals carry tokens and clients: nothing here listens to them."""

    def create_oauth2_request(self, request: HttpRequest | OAuth2Request) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return IssuerOAuth2Request(request)

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("no endpoint of this issuer takes JSON")

    def handle_response(
        self, status: int, body: dict[str, Any], headers: list[tuple[str, str]]
    ) -> OAuthResponse:
        return OAuthResponse(status, body, list(headers))

    def authenticate_client(
        self, request: OAuth2Request, methods: list[str], endpoint: str = "token"
    ) -> OAuthClient:
        # RFC 6749 §5.2: 401 with WWW-Authenticate only when the client used the
        # Authorization header; Authlib answers 401 whenever Basic was merely allowed.
        try:
            client: OAuthClient = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            raise ClientAuthenticationError(
                status_code=401 if uses_basic(request) else 400,
                description=self._client_failure_description(request),
            ) from error
        return client

    def _client_failure_description(self, request: OAuth2Request) -> str:
        """Generic, unless a known client used another method than its registered one."""
        attempted = attempted_auth_method(request)
        if attempted is not None:
            method, client_id = attempted
            known = self.store.get_client(client_id)
            if known is not None and known.auth_method is not method:
                return method_mismatch_description(known.auth_method, method)
        return "Client authentication failed."

    # -- the three endpoints -------------------------------------------------

    def token_response(self, request: HttpRequest) -> OAuthResponse:
        """POST /oauth/token."""
        response = self._guarded(request, lambda: self._token(request))
        if response.status != 200:
            response.headers.extend(h for h in NO_STORE_HEADERS[1:] if h not in response.headers)
        return response

    def _token(self, request: HttpRequest) -> OAuthResponse:
        # Authlib answers a missing grant_type with unsupported_grant_type; §5.2 says
        # a missing required parameter is invalid_request.
        if "grant_type" not in dict(request.form):
            error = InvalidRequestError("The 'grant_type' parameter is required.")
            return self.handle_response(*error())
        response: OAuthResponse = self.create_token_response(request)
        return response

    def revocation_response(self, request: HttpRequest) -> OAuthResponse:
        """POST /oauth/revoke."""
        return self._guarded(
            request, lambda: self.create_endpoint_response(Revocation.ENDPOINT_NAME, request)
        )

    def introspection_response(self, request: HttpRequest) -> OAuthResponse:
        """POST /oauth/introspect."""
        response = self._guarded(
            request, lambda: self.create_endpoint_response(Introspection.ENDPOINT_NAME, request)
        )
        response.headers.extend(h for h in NO_STORE_HEADERS[1:] if h not in response.headers)
        return response

    def _guarded(self, request: HttpRequest, call: Callable[[], OAuthResponse]) -> OAuthResponse:
        try:
            check_form_request(request)
        except OAuth2Error as error:
            return self.handle_response(*error())
        return call()

    # -- helpers for the grants ----------------------------------------------

    def resolve_scope(self, client: OAuthClient, requested: str | None) -> str:
        """The scope to grant: the request's (all allowed), or the default the client may have.

        RFC 6749 §3.3: a scope the client may not have, or a grant that would end up with
        no scope at all, is ``invalid_scope``; nothing is silently granted as ``""``.
        """
        if requested is None:
            granted = [s for s in self.default_scope.split() if s in client.allowed_scopes]
            if not granted:
                raise InvalidScopeError(
                    "No scope was requested and none of the default scope is allowed for "
                    "this client; request one of its scopes."
                )
            return " ".join(granted)
        wanted = scope_list(requested)
        if OPENID in wanted and not self.id_tokens.available_to(client.client):
            raise InvalidScopeError(
                "The openid scope asks for an ID token; under HS256 it is keyed with the "
                "client secret, which a public client does not have (OpenID Connect Core 10.1)."
            )
        if not wanted or not set(wanted) <= set(client.allowed_scopes):
            raise InvalidScopeError("The requested scope is not allowed for this client.")
        return " ".join(wanted)

    def session_lifetimes(self, started_at: int) -> Lifetimes | None:
        """Token lifetimes for a session started at ``started_at``; None once the session
        reached ``session_max_lifetime``."""
        return self.sessions.lifetimes(self.tokens.now(), started_at)

    def issue_tokens(
        self,
        user: User,
        client: OAuthClient,
        scope: str,
        lifetimes: Lifetimes,
        *,
        family_id: str | None = None,
        refresh_scope: str | None = None,
        session_started_at: int = 0,
        client_secret: str | None = None,
    ) -> tuple[dict[str, Any], RefreshRecord | None]:
        """A token response body and the record of its new refresh token.

        The access token carries ``sid`` = the family id, so the session's end ends it too.
        A client not registered for the ``refresh_token`` grant could never use a refresh
        token: it gets none and nothing is recorded (the record is None), so it has no
        session and its access tokens carry no ``sid``. With ``openid`` in ``scope`` the
        body carries an ID token (:mod:`issuer.oauth.oidc`) whose ``auth_time`` is the
        session's start: the login.
        """
        client_id = client.get_client_id()
        started = session_started_at or self.tokens.now()
        record: RefreshRecord | None = None
        refresh: str | None = None
        if client.check_grant_type(RefreshTokenGrant.GRANT_TYPE):
            refresh_data: dict[str, Any] = {
                "sub": user.id,
                "client_id": client_id,
                "scope": refresh_scope if refresh_scope is not None else scope,
                "fam": family_id or uuid.uuid4().hex,
            }
            refresh, refresh_claims = self.tokens.create_refresh_token(
                refresh_data, lifetimes.refresh
            )
            record = RefreshRecord(
                jti=refresh_claims["jti"],
                family_id=refresh_claims["fam"],
                user_id=user.id,
                client_id=client_id,
                scope=refresh_claims["scope"],
                issued_at=refresh_claims["iat"],
                expires_at=refresh_claims["exp"],
                session_started_at=started,
            )
        body = self._token_body(
            user=user,
            client=client,
            scope=scope,
            lifetimes=lifetimes,
            record=record,
            refresh=refresh,
            auth_time=started,
            client_secret=client_secret,
        )
        return body, record

    def _token_body(
        self,
        *,
        user: User,
        client: OAuthClient,
        scope: str,
        lifetimes: Lifetimes,
        record: RefreshRecord | None,
        refresh: str | None,
        auth_time: int,
        client_secret: str | None,
    ) -> dict[str, Any]:
        access_data = self.tokens.access_claims_for(user, client.get_client_id(), scope)
        access_ttl = lifetimes.access
        if record is not None:
            access_data[SESSION_CLAIM] = record.family_id
            access_ttl = min(access_ttl, max(record.expires_at - self.tokens.now(), 1))
        access, access_claims = self.tokens.create_access_token(access_data, access_ttl)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": access_claims["exp"] - access_claims["iat"],
            "scope": scope,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if OPENID in scope_list(scope):
            id_token = self.id_tokens.create(
                user,
                client.client,
                auth_time=auth_time,
                sid=record.family_id if record is not None else None,
                client_secret=client_secret,
            )
            if id_token is not None:
                body["id_token"] = id_token
        return body

    def start_session(self, record: RefreshRecord, user: User) -> bool:
        """Record a login's first refresh token, unless a security event changed the user
        since the password was checked (then False: the login must fail)."""
        if self.users is not self.store:  # users live elsewhere: nothing to lock here
            self.store.create(record)
            return True
        return self.store.start_session(record, user)

    def retry_successor(self, record: RefreshRecord, client_id: str) -> RefreshRecord | None:
        """The successor to hand out again if presenting spent ``record`` is a lost-response
        retry: within ``refresh_retry_window`` seconds of its rotation, by the same
        client, while the successor is still unspent. None means: treat it as reuse."""
        if (
            self.refresh_retry_window <= 0
            or record.spent_at is None
            or record.revoked_at is not None
            or record.successor_jti is None
            or record.client_id != client_id
            or self.tokens.now() - record.spent_at > self.refresh_retry_window
        ):
            return None
        successor = self.store.get(record.successor_jti)
        if successor is None or not successor.is_usable or successor.client_id != client_id:
            return None
        return successor

    def reissue_tokens(
        self,
        user: User,
        client: OAuthClient,
        scope: str,
        successor: RefreshRecord,
        client_secret: str | None = None,
    ) -> dict[str, Any] | None:
        """The same successor refresh token (its stored claims signed again: one chain,
        never a fork) with a fresh access token; None if the session is over."""
        lifetimes = self.session_lifetimes(successor.session_started_at)
        if lifetimes is None or successor.expires_at <= self.tokens.now():
            return None
        refresh = self.tokens.sign_claims(
            {
                "sub": successor.user_id,
                "client_id": successor.client_id,
                "scope": successor.scope,
                "fam": successor.family_id,
                "iss": self.tokens.issuer,
                "aud": self.tokens.issuer,
                "iat": successor.issued_at,
                "exp": successor.expires_at,
                "jti": successor.jti,
                "type": REFRESH,
            },
            REFRESH,
        )
        audit_event(
            "token.refresh_retried",
            **user_fields(user),
            client_id=successor.client_id,
            family=successor.family_id,
        )
        return self._token_body(
            user=user,
            client=client,
            scope=scope,
            lifetimes=lifetimes,
            record=successor,
            refresh=refresh,
            auth_time=successor.session_started_at,
            client_secret=client_secret,
        )

    def rehash_if_needed(self, user: User, password: str) -> None:
        """After a successful login: upgrade a hash of a lower bcrypt cost than configured.

        Called once the response is decided; only a right password gets here, so failed
        logins never pay for it. A failure to rehash never fails the login.
        """
        old = user.password_hash
        upgrade = getattr(self.users, "upgrade_password_hash", None)
        if old is None or upgrade is None or not self.hasher.needs_rehash(old):
            return
        try:
            if upgrade(user.id, old, self.hasher.hash(password)):
                audit_event("password.rehashed", **user_fields(user), cost=self.hasher.rounds)
        except Exception:
            log.exception("rehashing the password of user_id=%s failed", user.id)

    def token_headers(self) -> list[tuple[str, str]]:
        return list(NO_STORE_HEADERS)

    def check_login_allowed(self, request: OAuth2Request, username: str) -> None:
        """Take this attempt's places in the failure budgets before bcrypt, or refuse (429).

        The admission rides on the request until :meth:`on_login_success` hands it back.
        """
        if self.limiter is None:
            return
        address = client_ip(request)
        admission = self.limiter.admit(username, address)
        if admission.retry_after is not None:
            audit_event(
                "login.throttled",
                **self._audit_user(username),
                client_id=request.client.get_client_id(),
                address=address,
                budget=admission.budget,
                retry_after=admission.retry_after,
            )
            raise TooManyRequestsError(admission.retry_after)
        request.login_admission = admission

    def on_login_failure(self, request: OAuth2Request, username: str) -> None:
        self._login_failed(request, self._audit_user(username), "invalid_credentials")
        if self.login_failure_hook is not None and isinstance(request, IssuerOAuth2Request):
            self.login_failure_hook(request.http, username)

    def on_login_success(self, request: OAuth2Request, username: str) -> None:
        admission = getattr(request, "login_admission", None)
        if self.limiter is not None and admission is not None:
            self.limiter.succeeded(admission)

    def on_login_raced(self, request: OAuth2Request, user: User) -> None:
        """A password, role or state change won the race with this login: refused."""
        self._login_failed(request, user_fields(user), "user_changed")

    def _login_failed(self, request: OAuth2Request, who: dict[str, str], reason: str) -> None:
        audit_event(
            "login.failed",
            **who,
            client_id=request.client.get_client_id(),
            address=client_ip(request),
            reason=reason,
        )

    def on_login_succeeded(
        self, request: OAuth2Request, user: User, record: RefreshRecord | None
    ) -> None:
        audit_event(
            "login.succeeded",
            **user_fields(user),
            client_id=request.client.get_client_id(),
            address=client_ip(request),
            family=record.family_id if record is not None else None,
        )

    def on_refreshed(self, request: OAuth2Request, user: User, record: RefreshRecord) -> None:
        audit_event(
            "token.refreshed",
            **user_fields(user),
            client_id=record.client_id,
            address=client_ip(request),
            family=record.family_id,
        )

    def _audit_user(self, username: str) -> dict[str, str]:
        """``user_id`` and ``username`` (canonical) of an existing user; for any other name
        a keyed hash (``user_hash``): a password typed as the username must not reach a log."""
        user = self.users.get_by_username(username) if username else None
        if user is not None:
            return user_fields(user)
        if self.limiter is not None:
            return {"user_hash": self.limiter.pseudonym(username)}
        return {"user_hash": "-"}

    def on_session_revoked(
        self, record: RefreshRecord, revoked: int, request: OAuth2Request
    ) -> None:
        """Audit a refresh token revoked at /oauth/revoke (RFC 7009): its session ended."""
        self._audit_family_ended(
            "token.revoked", record, revoked, client_ip(request), kind="refresh"
        )

    def on_access_token_revoked(self, claims: dict[str, Any], request: OAuth2Request) -> None:
        """Audit an access token denied at /oauth/revoke (its ``jti`` names it, never its value)."""
        client_id = claims.get("client_id")
        audit_event(
            "token.revoked",
            kind="access",
            client_id=client_id if isinstance(client_id, str) else None,
            address=client_ip(request),
            jti=claims["jti"],
        )

    @staticmethod
    def _record_user(record: RefreshRecord, user: User | None) -> dict[str, str]:
        return user_fields(user) if user is not None else {"user_id": record.user_id}

    def on_refresh_reuse(
        self, record: RefreshRecord, reason: str, request: OAuth2Request | None = None
    ) -> None:
        revoked = self.store.revoke_family(record.family_id, self.tokens.now())
        address = client_ip(request) if request is not None else ""
        self._audit_family_ended("refresh.reuse_detected", record, revoked, address, reason=reason)

    def _audit_family_ended(
        self, event: str, record: RefreshRecord, revoked: int, address: str, **extra: str
    ) -> None:
        """Audit ``event`` for a refresh family that ``revoked`` tokens left, and the session
        it ended (when it ended one of a user who still exists)."""
        user = self.users.get_by_id(record.user_id)
        audit_event(
            event,
            **extra,
            **self._record_user(record, user),
            client_id=record.client_id,
            address=address,
            family=record.family_id,
            revoked=revoked,
        )
        if user is not None and revoked:
            audit_ended(
                event, user, [record.family_id], client_id=record.client_id, address=address
            )


class TooManyRequestsError(OAuth2Error):  # type: ignore[misc]
    """429 with ``Retry-After`` (RFC 6585 §4): too many failed logins for a user or address."""

    error = "too_many_requests"
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed login attempts; retry later.")
        self.retry_after = retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = super().get_headers()
        return [*headers, ("Retry-After", str(self.retry_after))]


def client_ip(request: OAuth2Request) -> str:
    """The client address the HTTP layer resolved (trusted proxies applied), or ''."""
    return request.http.client_ip if isinstance(request, IssuerOAuth2Request) else ""


def parameter_label(name: str) -> str:
    """How an error description names parameter `name`: by name only if it is one of ours."""
    return f"The '{name}' parameter" if name in KNOWN_PARAMETERS else "A parameter"


def check_form_request(request: HttpRequest) -> None:
    """RFC 6749 §3.2 / §2.3: form body only, each parameter once, one client auth method."""
    if request.method != "POST":
        raise InvalidRequestError("Use POST.")
    # The query string first: credentials there are the mistake to name, whatever the body.
    if any(name in CREDENTIAL_PARAMETERS for name, _ in request.query):
        raise InvalidRequestError(
            "Credentials are not accepted in the URL (RFC 6749 sections 2.3.1 and 3.2): "
            f"send them in the {FORM_CONTENT_TYPE} request body."
        )
    if request.query:
        raise InvalidRequestError(
            "Parameters must be sent in the request body, not in the query string."
        )
    if request.content_type.split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
        raise InvalidRequestError(f"The request body must be {FORM_CONTENT_TYPE}.")
    seen: set[str] = set()
    for name, _ in request.form:
        if name in seen:
            raise InvalidRequestError(f"{parameter_label(name)} is repeated.")
        seen.add(name)
    form = dict(request.form)
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic ") and "client_secret" in form:
        raise InvalidRequestError("Use one client authentication method, not two.")
