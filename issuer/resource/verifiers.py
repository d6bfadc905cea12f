"""Verifying this issuer's access tokens locally: with its published keys or its shared secret.

Both verifiers check, in this order: the signature, with the algorithm the key is bound
to (the token's ``alg`` must name it; ``none`` and HMAC-with-a-public-key cannot pass);
``typ: at+jwt`` and ``type: access`` (a refresh token never passes); then ``iss``,
``aud``, ``exp``/``nbf``/``iat`` with ``leeway``, ``sub`` and ``jti``. Each failure raises
its own :class:`issuer.errors.TokenError`, as :mod:`issuer.tokens` does.

Local verification cannot see revocation: a logged-out token stays valid here until its
``exp``. :class:`issuer.resource.IntrospectionVerifier` asks the issuer instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from joserfc.jwk import OctKey

from issuer.errors import BadSignatureError, WrongTokenTypeError
from issuer.jwtrules import ACCESS, ACCESS_TYP, check_claims, decode_signed, read_header, typ
from issuer.resource.fetch import DEFAULT_TIMEOUT, Http
from issuer.resource.jwks import CachePolicy, RemoteKeySet, Timer
from issuer.resource.keyset import PinnedKey, accepted_algorithms
from issuer.resource.principal import Principal

Clock = Callable[[], float]
DEFAULT_LEEWAY = 30
MIN_SECRET_BYTES = 32  # the issuer refuses shorter HS256 secrets too


class _LocalVerifier:
    """What both local verifiers share: the checks after a key was found."""

    def __init__(self, issuer: str, audience: str, leeway: int, clock: Clock) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.clock = clock

    def _now(self) -> int:
        return int(self.clock())

    def _principal(self, raw: bytes, header: dict[str, Any], key: PinnedKey) -> Principal:
        if header["alg"] != key.alg:
            raise BadSignatureError("algorithm not allowed for this key")
        claims = decode_signed(raw, key.key, key.alg)
        if typ(header) != ACCESS_TYP or claims.get("type") != ACCESS:
            raise WrongTokenTypeError("expected an access token")
        check_claims(
            claims, issuer=self.issuer, audience=self.audience, now=self._now, leeway=self.leeway
        )
        return Principal.from_claims(claims)


def _kid(header: dict[str, Any]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise BadSignatureError("the token has no kid")
    return kid


class JWKSVerifier(_LocalVerifier):
    """Verifies access tokens with the issuer's published keys (RS256, ES256, EdDSA).

    ``JWKSVerifier(issuer="https://id.example.com", audience="orders-api")`` finds the
    JWKS by discovery on first use (RFC 8414, then OpenID Connect); pass ``jwks_uri`` to
    skip discovery. ``algorithms`` limits the accepted algorithms (default: the three
    above; symmetric ones are refused). Nothing is fetched before the first token, or
    :meth:`load` / :meth:`aload`. See :mod:`issuer.resource.jwks` for the caching rules.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] | None = None,
        *,
        jwks_uri: str | None = None,
        leeway: int = DEFAULT_LEEWAY,
        cache: CachePolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
        timer: Timer = time.monotonic,
    ) -> None:
        super().__init__(issuer, audience, leeway, clock)
        self.algorithms = accepted_algorithms(algorithms)
        self._http = Http(timeout, http_client, async_http_client)
        self.keys = RemoteKeySet(
            self._http,
            self.algorithms,
            issuer=issuer,
            jwks_uri=jwks_uri,
            policy=cache,
            timer=timer,
        )

    def verify(self, token: str) -> Principal:
        """The principal of a valid access token, or a specific TokenError."""
        raw, header = read_header(token)
        self._check_alg(header)
        return self._principal(raw, header, self.keys.get(_kid(header)))

    async def averify(self, token: str) -> Principal:
        """:meth:`verify` without blocking the event loop on the network."""
        raw, header = read_header(token)
        self._check_alg(header)
        return self._principal(raw, header, await self.keys.aget(_kid(header)))

    def load(self) -> None:
        """Fetch the issuer's keys now; IssuerUnreachableError if they cannot be had."""
        self.keys.load()

    async def aload(self) -> None:
        """:meth:`load` without blocking the event loop."""
        await self.keys.aload()

    def close(self) -> None:
        """Close the HTTP client this verifier created."""
        self._http.close()

    def _check_alg(self, header: dict[str, Any]) -> None:
        # Before any lookup: a token naming an algorithm we never accept costs no fetch.
        if header["alg"] not in self.algorithms:
            raise BadSignatureError("algorithm not allowed")


class SecretVerifier(_LocalVerifier):
    """Verifies HS256 access tokens with the issuer's shared secret (``ISSUER_SECRET_KEY``)."""

    ALG = "HS256"

    def __init__(
        self,
        secret: str | bytes,
        issuer: str,
        audience: str,
        *,
        leeway: int = DEFAULT_LEEWAY,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(issuer, audience, leeway, clock)
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"secret: at least {MIN_SECRET_BYTES} bytes (the issuer's own)")
        self._key = PinnedKey("", self.ALG, OctKey.import_key(raw))

    def __repr__(self) -> str:
        return f"SecretVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    def verify(self, token: str) -> Principal:
        """The principal of a valid access token, or a specific TokenError."""
        raw, header = read_header(token)
        return self._principal(raw, header, self._key)

    async def averify(self, token: str) -> Principal:
        """:meth:`verify` (no I/O: an HMAC is cheap enough for the event loop)."""
        return self.verify(token)
