"""The two grants this issuer offers, each an Authlib grant with the same small shape."""

from __future__ import annotations

import logging
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
from issuer.models import RefreshRecord, User
from issuer.oauth.clients import TOKEN_AUTH_METHODS, OAuthClient, presented_secret, scope_list
from issuer.tokens import REFRESH

if TYPE_CHECKING:
    from issuer.oauth.server import IssuerServer

audit = logging.getLogger("issuer.audit")

BAD_CREDENTIALS = "Invalid username or password."
BAD_REFRESH = "The refresh token is invalid, expired or revoked."


class PasswordGrant(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """Resource Owner Password Credentials, RFC 6749 §4.3 (first-party apps only, RFC 9700 §2.4).

    Every failed login (unknown user, wrong/empty/over-long password, disabled user)
    spends exactly one bcrypt check and gets the same ``invalid_grant`` answer, and counts
    against the user's and the address's failure budgets; once one is spent the answer
    is 429 with ``Retry-After`` before any bcrypt work.
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
        # Before bcrypt: a blocked guesser must not cost a hash.
        self.server.check_login_allowed(self.request, username)
        user = self.authenticate_user(username, form["password"])
        if user is None:
            self.server.on_login_failure(self.request, username)
            raise InvalidGrantError(BAD_CREDENTIALS)
        self.server.on_login_success(username)
        self.request.user = user

    def authenticate_user(self, username: str, password: str) -> User | None:
        user = self.server.users.get_by_username(username) if username else None
        matches = self.server.hasher.verify(password, user.password_hash if user else None)
        if user is None or not matches or not user.is_active:
            return None
        return user

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        user: User = self.request.user
        client: OAuthClient = self.request.client
        token, record = self.server.issue_tokens(
            user,
            client,
            self.request.scope,
            auth_time=self.server.tokens.now(),
            client_secret=presented_secret(self.request),
        )
        if record is not None:
            self.server.store.create(record)
        audit.info(
            "login user_id=%s client_id=%s family=%s",
            user.id,
            client.get_client_id(),
            record.family_id if record is not None else "-",
        )
        return 200, token, self.server.token_headers()


class RefreshCredential:
    """A verified refresh token: its claims and its server-side record."""

    def __init__(self, claims: dict[str, Any], record: RefreshRecord) -> None:
        self.claims = claims
        self.record = record

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
            self.server.on_refresh_reuse(record, "a spent refresh token was presented again")
            return None
        return RefreshCredential(claims, record)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        credential: RefreshCredential = self.request.refresh_token
        old = credential.record
        user = self.server.users.get_by_id(old.user_id)
        if user is None or not user.is_active:
            self.server.store.revoke_family(old.family_id, self.server.tokens.now())
            raise InvalidGrantError(BAD_REFRESH)
        requested = self.request.payload.scope
        access_scope = " ".join(scope_list(requested)) if requested is not None else old.scope
        auth_time = credential.claims.get("auth_time")
        token, new = self.server.issue_tokens(
            user,
            self.request.client,
            access_scope,
            family_id=old.family_id,
            refresh_scope=old.scope,
            auth_time=auth_time if isinstance(auth_time, int) else None,
            client_secret=presented_secret(self.request),
        )
        if new is None:  # Authlib admits only clients registered for this grant: defensive
            raise UnauthorizedClientError("The client may not use the refresh_token grant.")
        if not self.server.store.rotate(old.jti, new, self.server.tokens.now()):
            self.server.on_refresh_reuse(old, "a refresh token was spent concurrently")
            raise InvalidGrantError(BAD_REFRESH)
        return 200, token, self.server.token_headers()
