"""The two grants this issuer offers, each an Authlib grant filled in through its hooks.

Authlib's ``validate_token_request`` and ``create_token_response`` run unchanged; these
classes implement only the methods Authlib documents for subclasses
(``authenticate_token_endpoint_client``, ``authenticate_user``,
``authenticate_refresh_token``, ``generate_token``, ``save_token``,
``revoke_old_credential``) and an ``after_create_token_response`` hook. The order in
which Authlib calls them is what ``tests/test_authlib_contract.py`` pins:

password:  authenticate_token_endpoint_client → check_grant_type → authenticate_user
           (scope, failure budgets, one bcrypt check) → generate_token → save_token
           (start the session) → after_create_token_response (audit, rehash)
refresh:   authenticate_token_endpoint_client → check_grant_type →
           authenticate_refresh_token (token, record, reuse, client, scope) →
           authenticate_user → generate_token → save_token (the one compare-and-set
           rotation) → revoke_old_credential → after_create_token_response (audit)

Every refusal is raised where it is found, with this issuer's error and description;
no hook returns None to let Authlib pick a vaguer error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidScopeError, UnauthorizedClientError
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
    from authlib.oauth2.rfc6749 import OAuth2Request

    from issuer.oauth.server import IssuerServer

BAD_CREDENTIALS = "Invalid username or password."
BAD_REFRESH = "The refresh token is invalid, expired or revoked."
TokenResponse = tuple[int, dict[str, Any], list[tuple[str, str]]]
# Authlib runs the hooks registered under this name with the grant and the
# (status, body, headers) that create_token_response returned: the response is decided.
RESPONSE_DECIDED = "after_create_token_response"


class _IssuerGrant:
    """What both grants share: the client, once authenticated, is checked for the grant
    and put on the request."""

    GRANT_TYPE: str
    request: OAuth2Request
    server: IssuerServer

    def authenticate_token_endpoint_client(self) -> OAuthClient:
        client: OAuthClient = super().authenticate_token_endpoint_client()  # type: ignore[misc]
        # Authlib checks the grant type right after this, with its own wording; the README
        # documents this one.
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"The client may not use the {self.GRANT_TYPE} grant.")
        # Authlib's password grant sets request.client only after authenticate_user; the
        # failure budgets and the scope, checked before bcrypt, need it earlier.
        self.request.client = client
        return client

    def generate_token(
        self,
        user: User,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Authlib's one call for a token response; each grant's :meth:`issue` answers it
        (``grant_type``, ``expires_in`` and ``include_refresh_token`` are the grant's own)."""
        return self.issue(user, scope)

    def issue(self, user: User, scope: str | None) -> dict[str, Any]:
        raise NotImplementedError


class PasswordGrant(_IssuerGrant, ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """Resource Owner Password Credentials, RFC 6749 §4.3 (first-party apps only, RFC 9700 §2.4).

    Every failed login (unknown user, wrong/empty/over-long password, disabled user)
    spends exactly one bcrypt check and gets the same ``invalid_grant`` answer. Each
    attempt first takes its place in the failure budgets (:mod:`issuer.ratelimit`);
    once one is spent the answer is 429 with ``Retry-After`` before any bcrypt work.
    """

    GRANT_TYPE = "password"
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def __init__(self, request: OAuth2Request, server: IssuerServer) -> None:
        super().__init__(request, server)
        self.record: RefreshRecord | None = None
        self.register_hook(RESPONSE_DECIDED, PasswordGrant.login_succeeded)

    def authenticate_user(self, username: str, password: str) -> User:
        """The user whose password this is, or ``invalid_grant``; never None.

        What can refuse the request without a password check comes first: the scope
        (``invalid_scope``), then the failure budgets (429, counted by canonical name:
        ALICE and alice are one user). Then exactly one bcrypt check, the same cost for
        an unknown user.
        """
        self.request.scope = self.server.resolve_scope(
            self.request.client, self.request.payload.scope
        )
        canonical = canonical_username(username)
        self.server.check_login_allowed(self.request, canonical)
        user = self.server.users.get_by_username(username) if username else None
        matches = self.server.hasher.verify(password, user.password_hash if user else None)
        if not matches or not may_hold_tokens(user):
            self.server.on_login_failure(self.request, canonical)
            raise InvalidGrantError(BAD_CREDENTIALS)
        self.server.on_login_success(self.request, canonical)
        return user

    def issue(self, user: User, scope: str | None) -> dict[str, Any]:
        """A new session's tokens. Authlib passes the *requested* scope;
        the granted one (the client's default when none was requested) was resolved in
        authenticate_user."""
        token, self.record = self.server.issue_tokens(
            user,
            self.request.client,
            self.request.scope,
            self.server.sessions.for_new_session(),
            client_secret=presented_secret(self.request),
        )
        return token

    def save_token(self, token: dict[str, Any]) -> None:
        """Record the session's first refresh token, unless a password change, role change,
        disable or removal won the race with this login: the password it checked may no
        longer be the user's, so the login fails."""
        user: User = self.request.user
        if self.record is not None and not self.server.start_session(self.record, user):
            self.server.on_login_raced(self.request, user)
            raise InvalidGrantError(BAD_CREDENTIALS)

    def login_succeeded(self, response: TokenResponse) -> None:
        """The response is decided: audit it; only now may a right password pay for a rehash."""
        user: User = self.request.user
        self.server.on_login_succeeded(self.request, user, self.record)
        self.server.rehash_if_needed(user, self.request.form["password"])


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


def check_refresh_scope(requested: str | None, granted: str) -> None:
    """RFC 6749 §6: a requested scope must be a non-empty subset of the one granted.

    Stricter than Authlib's own check, which lets an empty ``scope=`` through (and would
    then issue the granted scope unasked).
    """
    if requested is None:
        return
    wanted = scope_list(requested)
    if not wanted or not set(wanted) <= set(scope_list(granted)):
        raise InvalidScopeError("The requested scope exceeds the scope originally granted.")


class RefreshTokenGrant(_IssuerGrant, AuthlibRefreshTokenGrant):  # type: ignore[misc]
    """Refresh with rotation and reuse detection, RFC 6749 §6 and RFC 9700 §4.14.2.

    Each refresh spends the presented token and issues a new one in the same family, in
    one compare-and-set transaction (:meth:`save_token`). A spent token presented again
    means it leaked (or a client raced itself): the whole family is revoked and an audit
    event logged.
    """

    GRANT_TYPE = "refresh_token"
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def __init__(self, request: OAuth2Request, server: IssuerServer) -> None:
        super().__init__(request, server)
        self.record: RefreshRecord | None = None  # the successor this request rotates to
        self.register_hook(RESPONSE_DECIDED, RefreshTokenGrant.refreshed)

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential:
        """The credential for this request, or ``invalid_grant`` / ``invalid_scope``.

        Authlib calls this with ``request.client`` set and checks the scope right after;
        the client and the scope are checked here already so that each refusal carries
        this issuer's description and the scope rule is this issuer's (see
        :func:`check_refresh_scope`), whatever Authlib's check does.
        """
        credential = self._credential(refresh_token)
        if credential is None or not credential.check_client(self.request.client):
            raise InvalidGrantError(BAD_REFRESH)
        check_refresh_scope(self.request.payload.scope, credential.get_scope())
        return credential

    def _credential(self, refresh_token: str) -> RefreshCredential | None:
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

    def authenticate_user(self, credential: RefreshCredential) -> User:
        """The token's user, if they may still hold tokens; otherwise the family ends."""
        record = credential.record
        user = self.server.users.get_by_id(record.user_id)
        if not may_hold_tokens(user):
            self.server.store.revoke_family(record.family_id, self.server.tokens.now())
            raise InvalidGrantError(BAD_REFRESH)
        return user

    def issue(self, user: User, scope: str | None) -> dict[str, Any]:
        """The session's next tokens (``scope``: the requested one, else the granted one).

        A lost-response retry gets its successor again (nothing new to record); otherwise
        a new refresh token in the same family, recorded by :meth:`save_token`.
        """
        credential: RefreshCredential = self.request.refresh_token
        old = credential.record
        # Authlib passes the granted scope itself when none was requested (the common case).
        access_scope = old.scope if scope == old.scope else " ".join(scope_list(scope or ""))
        secret = presented_secret(self.request)
        if credential.retry_of is not None:
            retried = self.server.reissue_tokens(
                user, self.request.client, access_scope, old, client_secret=secret
            )
            if retried is None:
                raise InvalidGrantError(BAD_REFRESH)
            return retried
        lifetimes = self.server.session_lifetimes(old.session_started_at)
        if lifetimes is None:  # the session reached session_max_lifetime
            raise InvalidGrantError(BAD_REFRESH)
        token, self.record = self.server.issue_tokens(
            user,
            self.request.client,
            access_scope,
            lifetimes,
            family_id=old.family_id,
            refresh_scope=old.scope,
            session_started_at=old.session_started_at,
            client_secret=secret,
        )
        if self.record is None:  # Authlib admits only clients registered for this grant
            raise UnauthorizedClientError("The client may not use the refresh_token grant.")
        return token

    def save_token(self, token: dict[str, Any]) -> None:
        """Record the new refresh token and spend the presented one: one compare-and-set.

        Losing it means another request spent the token first (a leaked copy, or the
        client racing itself): reuse, and the family is revoked.
        """
        if self.record is None:  # a retry: its successor is already recorded
            return
        old = self.request.refresh_token.record
        if not self.server.store.rotate(old.jti, self.record, self.server.tokens.now()):
            self.server.on_refresh_reuse(old, "concurrent_spend", self.request)
            raise InvalidGrantError(BAD_REFRESH)

    def revoke_old_credential(self, refresh_token: RefreshCredential) -> None:
        """Nothing left to do: :meth:`save_token` spent it in the same transaction that
        recorded its successor. Spending it apart would open a window in which two
        requests could both rotate it (or a crash could leave neither token usable)."""

    def refreshed(self, response: TokenResponse) -> None:
        """The response is decided: audit the rotation (a retry was audited when reissued)."""
        if self.record is not None:
            self.server.on_refreshed(self.request, self.request.user, self.record)
