"""OpenID Connect on top of the two grants: ID tokens (OIDC Core §2) and UserInfo claims (§5.3).

A token response whose granted scope contains ``openid`` carries an ID token (§3.1.3.3)
with ``iss sub aud exp iat auth_time azp`` and ``sid`` (the refresh family, when there
is one). ``aud`` and ``azp`` are the client id; ``auth_time`` is the time of the password
login, repeated unchanged by every refresh of that login.

Signing: with the issuer's active asymmetric key (RS256, ES256, EdDSA; its ``kid`` is in
the JWKS). Under HS256 the issuer's own secret must not sign what clients verify, so
the ID token is keyed with the client's secret as §10.1 says (the octets of its UTF-8
form; the issuer stores only a hash, so it uses the secret the client presents with the
request). A public client has no secret: under HS256 it cannot get an ID token, so the
``openid`` scope is not available to it (:meth:`IdTokens.available_to`).
"""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.jwk import OctKey

from issuer.models import Client, User
from issuer.tokens import TokenService

OPENID = "openid"
PROFILE = "profile"
SYMMETRIC_ALG = "HS256"
ID_TOKEN_TYP = "JWT"  # noqa: S105 - a media type, not a secret
# Every claim an ID token may carry (``sid`` and ``auth_time`` only when known).
ID_TOKEN_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "auth_time", "azp", "sid")
# Every claim /userinfo may return (``preferred_username`` with the ``profile`` scope).
USERINFO_CLAIMS = ("sub", "username", "role", "preferred_username")


def userinfo_claims(user: User, scope: str) -> dict[str, Any]:
    """The UserInfo response (§5.3.2) for a token with ``scope`` that contains ``openid``.

    ``sub`` always (the same as in the ID token), the issuer's own ``username`` and
    ``role``, and the standard ``preferred_username`` (§5.4) when ``profile`` was granted.
    """
    claims: dict[str, Any] = {"sub": user.id, "username": user.username, "role": user.role.value}
    if PROFILE in scope.split(" "):
        claims["preferred_username"] = user.username
    return claims


class IdTokens:
    """Mints ID tokens with the active key, or under HS256 with the client's secret."""

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    @property
    def signing_alg(self) -> str:
        """The ``alg`` of every ID token issued now (the discovery document says it)."""
        return self.tokens.keys.current().require_signing().alg

    @property
    def signing_algs(self) -> list[str]:
        """Every ``alg`` an ID token valid now may carry: the signing one first, then the
        key set's other algorithms (during and after a switch, until their keys retire)."""
        key_set = self.tokens.keys.current()
        alg = key_set.require_signing().alg
        return [alg, *sorted(key_set.algorithms - {alg})]

    def available_to(self, client: Client) -> bool:
        """Whether ``client`` can be given an ID token (a public one not under HS256)."""
        return not (client.is_public and self.signing_alg == SYMMETRIC_ALG)

    def create(
        self,
        user: User,
        client: Client,
        *,
        auth_time: int | None,
        sid: str | None,
        client_secret: str | None,
    ) -> str | None:
        """A signed ID token for ``user`` and ``client``; None when none can be signed.

        None only under HS256 without a client secret (a public client), which
        :meth:`available_to` keeps from asking for ``openid`` in the first place.
        """
        now = self.tokens.now()
        claims: dict[str, Any] = {
            "iss": self.tokens.issuer,
            "sub": user.id,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.tokens.access_ttl,
        }
        if auth_time is not None:
            claims["auth_time"] = auth_time
        if sid is not None:
            claims["sid"] = sid
        if self.signing_alg != SYMMETRIC_ALG:
            return self.tokens.sign(claims, ID_TOKEN_TYP)
        if client.is_public or not client_secret:
            return None
        key = OctKey.import_key(client_secret.encode("utf-8"))
        header = {"alg": SYMMETRIC_ALG, "typ": ID_TOKEN_TYP}
        return jwt.encode(header, claims, key, algorithms=[SYMMETRIC_ALG])
