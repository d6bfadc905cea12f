"""Verifying access tokens by asking the issuer (RFC 7662 token introspection).

The issuer knows what local verification cannot: a token revoked at logout, a session
ended by a password change, a disabled user. Each answer is cached for at most
``cache_ttl`` seconds (default 30) and never past the token's own ``exp``, so a
revocation takes effect here within ``cache_ttl`` (0: at once, one request per use).

The verifier authenticates as a confidential client (``client_secret_basic``). An
``active: true`` answer must also describe an access token (``type: access``; a refresh
token is active too, at the issuer), of this ``issuer`` and, when given, this ``audience``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import httpx

from issuer.errors import (
    ExpiredTokenError,
    InvalidAudienceError,
    InvalidIssuerError,
    IssuerUnreachableError,
    MalformedTokenError,
    RevokedTokenError,
    TokenError,
    WrongTokenTypeError,
)
from issuer.jwtrules import ACCESS, MAX_TOKEN_BYTES
from issuer.resource.fetch import DEFAULT_TIMEOUT, Answer, Http, Request, adiscover, discover
from issuer.resource.principal import Principal
from issuer.resource.verifiers import DEFAULT_LEEWAY, Clock

DEFAULT_CACHE_TTL = 30.0
DEFAULT_CACHE_SIZE = 10_000

_Result = Principal | TokenError


class IntrospectionVerifier:
    """Asks the issuer's introspection endpoint (found by discovery, or given) about tokens."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        audience: str | None = None,
        introspection_endpoint: str | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        leeway: int = DEFAULT_LEEWAY,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
    ) -> None:
        if not issuer or not client_id or not client_secret:
            raise ValueError("issuer, client_id and client_secret are required")
        if cache_ttl < 0 or cache_size < 0 or leeway < 0:
            raise ValueError("cache_ttl, cache_size and leeway must be >= 0")
        self.issuer = issuer
        self.audience = audience
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.leeway = leeway
        self.clock = clock
        self._auth = (client_id, client_secret)
        self._endpoint = introspection_endpoint
        self._http = Http(timeout, http_client, async_http_client)
        self._cache: OrderedDict[bytes, tuple[float, _Result]] = OrderedDict()
        self._lock = threading.Lock()
        self.requests = 0  # introspection requests made (discovery excluded)

    def __repr__(self) -> str:
        return f"IntrospectionVerifier(issuer={self.issuer!r}, client_id={self._auth[0]!r})"

    def verify(self, token: str) -> Principal:
        """The principal of a token the issuer says is an active access token."""
        key = _cache_key(token)
        cached = self._cached(key)
        if cached is None:
            if self._endpoint is None:
                self._endpoint = discover(self._http, self.issuer, "introspection_endpoint")
            cached = self._remember(key, self._http.send(self._request(token)))
        return _outcome(cached)

    async def averify(self, token: str) -> Principal:
        """:meth:`verify` without blocking the event loop."""
        key = _cache_key(token)
        cached = self._cached(key)
        if cached is None:
            if self._endpoint is None:
                self._endpoint = await adiscover(self._http, self.issuer, "introspection_endpoint")
            cached = self._remember(key, await self._http.asend(self._request(token)))
        return _outcome(cached)

    def close(self) -> None:
        """Close the HTTP client this verifier created."""
        self._http.close()

    # -- the cache ----------------------------------------------------------------------

    def _cached(self, key: bytes) -> _Result | None:
        now = self.clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return entry[1]

    def _remember(self, key: bytes, answer: Answer) -> _Result:
        now = self.clock()
        try:
            result: _Result = self._principal(answer.document, now)
        except TokenError as exc:
            result = exc
        until = now + self.cache_ttl
        if isinstance(result, Principal):
            until = min(until, result.claims["exp"] + self.leeway)
        if until > now and self.cache_size > 0:
            with self._lock:
                self._cache[key] = (until, result)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    # -- the answer ---------------------------------------------------------------------

    def _request(self, token: str) -> Request:
        assert self._endpoint is not None
        with self._lock:
            self.requests += 1
        return Request(
            "POST",
            self._endpoint,
            {"Accept": "application/json"},
            form={"token": token, "token_type_hint": "access_token"},
            auth=self._auth,
        )

    def _principal(self, document: Any, now: float) -> Principal:
        if not isinstance(document, Mapping) or not isinstance(document.get("active"), bool):
            raise IssuerUnreachableError("the introspection answer has no 'active' member")
        if not document["active"]:
            raise RevokedTokenError("the issuer says the token is not active")
        claims = {k: v for k, v in document.items() if k not in ("active", "token_type")}
        if claims.get("type") != ACCESS:
            raise WrongTokenTypeError("expected an access token")
        if claims.get("iss") != self.issuer:
            raise InvalidIssuerError("the token was issued by someone else")
        if self.audience is not None and not _names(claims.get("aud"), self.audience):
            raise InvalidAudienceError("the token is not meant for this audience")
        exp = claims.get("exp")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise MalformedTokenError("missing claim: exp")
        if exp + self.leeway <= now:
            raise ExpiredTokenError("the token has expired")
        return Principal.from_claims(claims)


def _cache_key(token: str) -> bytes:
    """A digest, so the cache holds no usable tokens; MalformedTokenError for non-tokens."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise MalformedTokenError("not a token")
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _names(aud: Any, audience: str) -> bool:
    return aud == audience or (isinstance(aud, list) and audience in aud)


def _outcome(result: _Result) -> Principal:
    if isinstance(result, TokenError):
        # A fresh exception per use: re-raising one cached instance would grow its traceback.
        raise type(result)(str(result))
    return result
