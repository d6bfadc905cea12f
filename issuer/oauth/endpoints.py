"""Revocation (RFC 7009) and introspection (RFC 7662) over our JWTs and stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from issuer.errors import TokenError
from issuer.models import may_hold_tokens
from issuer.oauth.clients import OAuthClient
from issuer.tokens import ACCESS, REFRESH

if TYPE_CHECKING:
    from issuer.oauth.server import IssuerServer

HINTS = {"access_token": ACCESS, "refresh_token": REFRESH}


def check_token_param(request: Any) -> None:
    """Only ``token`` is required; an unknown ``token_type_hint`` is ignored.

    RFC 7009 §2.1 lets the server ignore the hint and RFC 7662 §2.1 makes it search every
    token type anyway; both endpoints detect the type from the token itself. (Authlib
    answers an unknown hint with ``unsupported_token_type`` as a 401 without a challenge.)
    """
    if "token" not in request.form:
        raise InvalidRequestError("The 'token' parameter is required.")


class TokenRef:
    """A token we issued: its verified claims. Authlib asks it a few questions."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims

    @property
    def token_type(self) -> str:
        return str(self.claims.get("type"))

    def check_client(self, client: OAuthClient) -> bool:
        return self.claims.get("client_id") == client.get_client_id()

    def is_expired(self) -> bool:
        return False  # verified before it got here

    def is_revoked(self) -> bool:
        return False  # verified before it got here


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009. A refresh token revokes its family; an access token's jti is denied (logout).

    Unknown, malformed or foreign-signed tokens answer 200 as §2.2 asks.
    """

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]
    server: IssuerServer

    def check_params(self, request: Any, client: OAuthClient) -> None:
        check_token_param(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        try:
            # Signature-verified, expiry not checked: revoking an expired token is harmless.
            claims = self.server.tokens.decode(token_string)
        except TokenError:
            return None
        if claims.get("type") not in (ACCESS, REFRESH) or not isinstance(claims.get("jti"), str):
            return None
        return TokenRef(claims)

    def revoke_token(self, token: TokenRef, request: Any) -> None:
        claims = token.claims
        now = self.server.tokens.now()
        if token.token_type == REFRESH:
            record = self.server.store.get(claims["jti"])
            if record is not None:
                revoked = self.server.store.revoke_family(record.family_id, now)
                self.server.on_session_revoked(record, revoked, request)
        else:
            exp = claims.get("exp")
            expires_at = exp if isinstance(exp, int) else now + self.server.tokens.access_ttl
            self.server.store.deny(claims["jti"], expires_at)
            self.server.on_access_token_revoked(claims, request)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662, for confidential clients: ``active`` plus the token's claims.

    A token is active when it verifies, is not revoked and its user still exists and is
    enabled: the same rule userinfo and the refresh grant apply. Who may ask (§4): a
    client registered with ``--introspect`` (a resource server) about any token, any
    other confidential client only about tokens issued to it; for the rest the answer
    is ``{"active": false}``, indistinguishable from an unknown token.
    """

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]
    server: IssuerServer

    def check_params(self, request: Any, client: OAuthClient) -> None:
        check_token_param(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        order = [ACCESS, REFRESH]
        if token_type_hint in HINTS and HINTS[token_type_hint] == REFRESH:
            order.reverse()
        for token_type in order:
            try:
                claims = self.server.tokens.verify(token_string, token_type)
            except TokenError:
                continue
            user = self.server.users.get_by_id(claims["sub"])
            return TokenRef(claims) if may_hold_tokens(user) else None
        return None

    def check_permission(self, token: TokenRef, client: OAuthClient, request: Any) -> bool:
        return client.client.may_introspect or token.check_client(client)

    def introspect_token(self, token: TokenRef) -> dict[str, Any]:
        claims = dict(token.claims)
        claims["active"] = True
        # §2.2: token_type is an RFC 6749 §7.1 type, the way the token is used. A refresh
        # token is not presented to resource servers at all, so it has none.
        if token.token_type == ACCESS:
            claims["token_type"] = "Bearer"  # noqa: S105 - a token type, not a secret
        return claims
