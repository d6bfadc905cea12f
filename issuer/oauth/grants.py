"""The two grants this issuer offers, each an Authlib grant with the same small shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import (
    RefreshTokenGrant as AuthlibRefreshTokenGrant,
)
from authlib.oauth2.rfc6749.grants import (
    ResourceOwnerPasswordCredentialsGrant,
)

from issuer.errors import TokenError
from issuer.models import RefreshRecord, User, canonical_username, may_hold_tokens
from issuer.oauth.clients import TOKEN_AUTH_METHODS, OAuthClient, presented_secret, scope_list
from issuer.tokens import REFRESH

if TYPE_CHECKING:
    from issuer.oauth.server import IssuerServer

BAD_CREDENTIALS = "Invalid username or password."
BAD_REFRESH = "The refresh token is invalid, expired or revoked."


class PasswordGrant(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """Resource Owner Password Credentials, RFC 6749 §4.3 (first-party apps only, RFC 9700 §2.4).

    Every failed login (unknown user, wrong/empty/over-long password, disabled user)
    spends exactly one bcrypt check and gets the same ``invalid_grant`` answer. Each
    attempt first takes its place in the failure budgets (:mod:`issuer.ratelimit`);
    once one is spent the answer is 429 with ``Retry-After`` before any bcrypt work.
    """

    GRANT_TYPE = "password"
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    server: IssuerServer

    def validate_token_request(self) -> None:
        client: OAuthClient = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("The client may not use the password grant.")
        form = self.request.form
        if "username" not in form or "password" not in form:
            raise InvalidRequestError("The 'username' and 'password' parameters are required.")
        self.request.client = client
        self.request.scope = self.server.resolve_scope(client, self.request.payload.scope)
        username = form["username"]
        # Budgets count the canonical name: ALICE and alice are one user.
        canonical = canonical_username(username)
        # Before bcrypt: a blocked guesser must not cost a hash.
        self.server.check_login_allowed(self.request, canonical)
        user = self.authenticate_user(username, form["password"])
        if user is None:
            self.server.on_login_failure(self.request, canonical)
            raise InvalidGrantError(BAD_CREDENTIALS)
        self.server.on_login_success(self.request, canonical)
        self.request.user = user

    def authenticate_user(self, username: str, password: str) -> User | None:
        user = self.server.users.get_by_username(username) if username else None
        matches = self.server.hasher.verify(password, user.password_hash if user else None)
        if not matches or not may_hold_tokens(user):
            return None
        return user

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        user: User = self.request.user
        client: OAuthClient = self.request.client
        token, record = self.server.issue_tokens(
            user,
            client,
            self.request.scope,
            self.server.sessions.for_new_session(),
            client_secret=presented_secret(self.request),
        )
        if record is not None and not self.server.start_session(record, user):
            # A password change, role change, disable or removal won the race with this
            # login: the password it checked may no longer be the user's.
            self.server.on_login_raced(self.request, user)
            raise InvalidGrantError(BAD_CREDENTIALS)
        self.server.on_login_succeeded(self.request, user, record)
        # The response is decided: only now may a right password pay for a rehash.
        self.server.rehash_if_needed(self.request.user, self.request.form["password"])
        return 200, token, self.server.token_headers()


class RefreshCredential:
    """A verified refresh token: its claims and its server-side record.

    ``retry_of`` is set when the token was spent moments ago by the same client and its
    successor is unspent (``refresh_retry_window``): the answer is that successor again.
    """

    def __init__(
        self, claims: dict[str, Any], record: RefreshRecord, retry_of: RefreshRecord | None = None
    ) -> None:
        self.claims = claims
        self.record = record
        self.retry_of = retry_of

    def check_client(self, client: OAuthClient) -> bool:
        return self.record.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.record.scope


class RefreshTokenGrant(AuthlibRefreshTokenGrant):  # type: ignore[misc]
    """Refresh with rotation and reuse detection, RFC 6749 §6 and RFC 9700 §4.14.2.

    Each refresh spends the presented token and issues a new one in the same family, in
    one compare-and-set transaction. A spent token presented again means it leaked (or a
    client raced itself): the whole family is revoked and an audit event logged.
    """

    GRANT_TYPE = "refresh_token"
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: IssuerServer

    def validate_token_request(self) -> None:
        client: OAuthClient = self._validate_request_client()
        self.request.client = client
        if "refresh_token" not in self.request.form:
            raise InvalidRequestError("The 'refresh_token' parameter is required.")
        credential = self.authenticate_refresh_token(self.request.form["refresh_token"])
        if credential is None or not credential.check_client(client):
            raise InvalidGrantError(BAD_REFRESH)
        self._validate_token_scope(credential)
        self.request.refresh_token = credential

    def _validate_token_scope(self, credential: RefreshCredential) -> None:
        requested = self.request.payload.scope
        if requested is None:
            return
        wanted = scope_list(requested)
        if not wanted or not set(wanted) <= set(scope_list(credential.get_scope())):
            raise InvalidScopeError("The requested scope exceeds the scope originally granted.")

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential | None:
        try:
            claims = self.server.tokens.verify(refresh_token, REFRESH, check_revoked=False)
        except TokenError:
            return None
        record = self.server.store.get(claims["jti"])
        if record is None or record.revoked_at is not None:
            return None
        if record.spent_at is not None:
            successor = self.server.retry_successor(record, self.request.client.get_client_id())
            if successor is not None:
                return RefreshCredential(claims, successor, retry_of=record)
            self.server.on_refresh_reuse(record, "spent_token_presented", self.request)
            return None
        return RefreshCredential(claims, record)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        credential: RefreshCredential = self.request.refresh_token
        old = credential.record
        user = self.server.users.get_by_id(old.user_id)
        if not may_hold_tokens(user):
            self.server.store.revoke_family(old.family_id, self.server.tokens.now())
            raise InvalidGrantError(BAD_REFRESH)
        requested = self.request.payload.scope
        access_scope = " ".join(scope_list(requested)) if requested is not None else old.scope
        if credential.retry_of is not None:
            retried = self.server.reissue_tokens(
                user,
                self.request.client,
                access_scope,
                old,
                client_secret=presented_secret(self.request),
            )
            if retried is None:
                raise InvalidGrantError(BAD_REFRESH)
            return 200, retried, self.server.token_headers()
        lifetimes = self.server.session_lifetimes(old.session_started_at)
        if lifetimes is None:  # the session reached session_max_lifetime
            raise InvalidGrantError(BAD_REFRESH)
        token, new = self.server.issue_tokens(
            user,
            self.request.client,
            access_scope,
            lifetimes,
            family_id=old.family_id,
            refresh_scope=old.scope,
            session_started_at=old.session_started_at,
            client_secret=presented_secret(self.request),
        )
        if new is None:  # Authlib admits only clients registered for this grant: defensive
            raise UnauthorizedClientError("The client may not use the refresh_token grant.")
        if not self.server.store.rotate(old.jti, new, self.server.tokens.now()):
            self.server.on_refresh_reuse(old, "concurrent_spend", self.request)
            raise InvalidGrantError(BAD_REFRESH)
        self.server.on_refreshed(self.request, user, new)
        return 200, token, self.server.token_headers()
