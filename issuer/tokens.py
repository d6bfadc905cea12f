"""Access and refresh tokens: minting and verifying JWTs, behind one seam with an injected clock.

Access tokens follow RFC 9068 (header ``typ: at+jwt``; claims ``iss sub aud exp iat jti
client_id scope`` plus ``username role roles type``). Refresh tokens are JWTs too, with
``type: refresh``, a family id ``fam`` and ``aud`` = the issuer itself, so no resource
server configured for the API audience accepts one; each has a server-side record.

Verification is two explicit steps, as joserfc does it: the signature, with the algorithm
pinned to the key the ``kid`` names (never ``none``, never HMAC with a public key, never a
key we do not know); then the claims (``iss``, ``aud``, ``exp``/``nbf``/``iat`` with
leeway, ``type``) and finally revocation. Each failure raises its own
:class:`issuer.errors.TokenError`.

The module-level functions (``create_access_token``, ``verify_token``…) are the seed's
façade over a :class:`TokenService`: a documented shim, nothing more. The service itself
is an explicit object the app holds (``app.state.tokens``); :func:`configure` installs it
for the façade, which ``issuer serve`` does for its one app per worker process
(``create_app`` does not: two apps in one process must not share it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from joserfc import jwt

from issuer import jwtrules
from issuer.errors import (
    BadSignatureError,
    RevokedTokenError,
    UnknownUserError,
    WrongTokenTypeError,
)
from issuer.jwtrules import check_claims, decode_signed, read_header
from issuer.jwtrules import registry as _registry
from issuer.jwtrules import typ as _typ
from issuer.keystore import KeyStore
from issuer.models import User
from issuer.store.base import UserStore

# Shared with issuer.resource (APIs check tokens alike); named here beside their siblings.
ACCESS = jwtrules.ACCESS
ACCESS_TYP = jwtrules.ACCESS_TYP
MAX_TOKEN_BYTES = jwtrules.MAX_TOKEN_BYTES
REFRESH = "refresh"
TOKEN_TYPES = (ACCESS, REFRESH)
REFRESH_TYP = "rt+jwt"
DEFAULT_CLIENT_ID = "issuer"
# Claims the service sets itself; callers cannot override them.
RESERVED_CLAIMS = frozenset({"iss", "aud", "iat", "exp", "nbf", "jti", "type"})

Clock = Callable[[], float]


class RevocationCheck(Protocol):
    """Says whether a token whose signature and claims are valid was revoked since."""

    def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        """True if the token (identified by its verified claims) must be refused."""
        ...


class TokenService:
    """Mints and verifies this issuer's tokens. Thread-safe; holds no per-request state."""

    def __init__(
        self,
        keys: KeyStore,
        *,
        issuer: str,
        audience: str,
        access_ttl: int = 1800,
        refresh_ttl: int = 604800,
        leeway: int = 30,
        clock: Clock = time.time,
        revocations: RevocationCheck | None = None,
        users: UserStore | None = None,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.leeway = leeway
        self.clock = clock
        self.revocations = revocations
        self.users = users

    def now(self) -> int:
        """The current time as a NumericDate (whole seconds, floored)."""
        return int(self.clock())

    # -- minting -------------------------------------------------------------

    def create_access_token(
        self, data: Mapping[str, Any], expires_in: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A signed RFC 9068 access token for ``data`` (needs ``sub``) and its claims."""
        ttl = self.access_ttl if expires_in is None else int(expires_in)
        claims = self._base_claims(data, ACCESS, self.audience, ttl)
        claims.setdefault("client_id", DEFAULT_CLIENT_ID)
        if "role" in claims and "roles" not in claims:
            claims["roles"] = [claims["role"]]
        return self._sign(claims, ACCESS_TYP), claims

    def create_refresh_token(
        self, data: Mapping[str, Any], expires_in: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A signed refresh token for ``data`` (needs ``sub``); new family unless ``fam`` given."""
        ttl = self.refresh_ttl if expires_in is None else int(expires_in)
        claims = self._base_claims(data, REFRESH, self.issuer, ttl)
        claims.setdefault("client_id", DEFAULT_CLIENT_ID)
        claims.setdefault("fam", uuid.uuid4().hex)
        return self._sign(claims, REFRESH_TYP), claims

    def sign_claims(self, claims: Mapping[str, Any], token_type: str) -> str:
        """``claims`` signed unchanged, e.g. a refresh token issued before (same ``jti``,
        ``iat``, ``exp``) that a lost-response retry gets again."""
        if token_type not in TOKEN_TYPES:
            raise ValueError(f"token_type must be one of {TOKEN_TYPES}")
        return self._sign(dict(claims), ACCESS_TYP if token_type == ACCESS else REFRESH_TYP)

    def access_claims_for(self, user: User, client_id: str, scope: str) -> dict[str, Any]:
        """The application claims of an access token for ``user``."""
        return {
            "sub": user.id,
            "client_id": client_id,
            "scope": scope,
            "username": user.username,
            "role": user.role.value,
            "roles": [user.role.value],
        }

    def _base_claims(
        self, data: Mapping[str, Any], token_type: str, audience: str, ttl: int
    ) -> dict[str, Any]:
        if not isinstance(data.get("sub"), str) or not data["sub"]:
            raise ValueError("token data needs a non-empty string 'sub'")
        now = self.now()
        claims = {k: v for k, v in data.items() if k not in RESERVED_CLAIMS}
        claims.update(
            {
                "iss": self.issuer,
                "aud": audience,
                "iat": now,
                "exp": now + ttl,
                "jti": uuid.uuid4().hex,
                "type": token_type,
            }
        )
        return claims

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        """``claims`` signed as-is with the active key and its ``kid`` (e.g. an ID token)."""
        return self._sign(claims, typ)

    def _sign(self, claims: dict[str, Any], typ: str) -> str:
        signing = self.keys.current().require_signing()
        # Always an explicit key and kid: joserfc picks a random key from a KeySet otherwise.
        header = {"alg": signing.alg, "kid": signing.kid, "typ": typ}
        return jwt.encode(header, claims, signing.key, registry=_registry(signing.alg))

    # -- verifying -----------------------------------------------------------

    def verify(
        self, token: str, token_type: str = ACCESS, *, check_revoked: bool = True
    ) -> dict[str, Any]:
        """Fully verified claims of ``token``, or a specific TokenError.

        ``check_revoked=False`` is for the refresh grant, which reads the record itself
        to tell a revoked token from a replayed one.
        """
        if token_type not in TOKEN_TYPES:
            raise ValueError(f"token_type must be one of {TOKEN_TYPES}")
        header, claims = self._verified_parts(token)
        expected_typ = ACCESS_TYP if token_type == ACCESS else REFRESH_TYP
        if claims.get("type") != token_type or _typ(header) != expected_typ:
            raise WrongTokenTypeError(f"expected a {token_type} token")
        audience = self.audience if token_type == ACCESS else self.issuer
        self._check_claims(claims, audience)
        if check_revoked and self.revocations is not None and self.revocations.is_revoked(claims):
            raise RevokedTokenError("the token was revoked")
        return claims

    def decode(self, token: str) -> dict[str, Any]:
        """Signature-verified claims, without expiry, audience or type checks (for tooling)."""
        return self._verified_parts(token)[1]

    def get_current_user(self, token: str) -> User:
        """The user an access token speaks for (active or not); TokenError or UnknownUserError."""
        claims = self.verify(token, ACCESS)
        if self.users is None:
            raise UnknownUserError("no user store is configured")
        user = self.users.get_by_id(claims["sub"])
        if user is None:
            raise UnknownUserError("the token's subject no longer exists")
        return user

    def _verified_parts(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        parsed, header = read_header(token)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise BadSignatureError("the token has no kid or alg")
        loaded = self.keys.current().verification_key(kid, self.clock())
        if loaded is None:
            raise BadSignatureError("unknown key id")
        if header["alg"] != loaded.alg:
            raise BadSignatureError("algorithm not allowed for this key")
        return header, decode_signed(parsed, loaded.key, loaded.alg)

    def _check_claims(self, claims: dict[str, Any], audience: str) -> None:
        check_claims(
            claims, issuer=self.issuer, audience=audience, now=self.now, leeway=self.leeway
        )


# -- the seed's façade ---------------------------------------------------------

_service: TokenService | None = None
_service_lock = threading.Lock()


def configure(service: TokenService | None) -> None:
    """Install the service the module-level functions use (``issuer serve`` does this)."""
    global _service  # noqa: PLW0603 - the façade's single seam, set by the composition root
    with _service_lock:
        _service = service


def get_service() -> TokenService:
    """The configured service; RuntimeError if the app has not been created yet."""
    service = _service
    if service is None:
        raise RuntimeError(
            "issuer.tokens is not configured: call issuer.tokens.configure(app.state.tokens) "
            "or configure(TokenService(...)) first (APIs verify with issuer.resource)"
        )
    return service


def create_access_token(data: Mapping[str, Any], expires_delta: timedelta | None = None) -> str:
    """A signed access token for ``data`` (``sub`` required), valid 30 min or ``expires_delta``."""
    expires_in = None if expires_delta is None else int(expires_delta.total_seconds())
    return get_service().create_access_token(data, expires_in)[0]


def create_refresh_token(data: Mapping[str, Any]) -> str:
    """A signed refresh token for ``data`` (``sub`` required); the grant records it server-side."""
    return get_service().create_refresh_token(data)[0]


def verify_token(token: str, token_type: str = ACCESS) -> dict[str, Any]:
    """Fully verified claims, or a specific :class:`issuer.errors.TokenError`."""
    return get_service().verify(token, token_type)


def decode_token(token: str) -> dict[str, Any]:
    """Signature-verified claims without expiry/type checks; never unverified."""
    return get_service().decode(token)


def get_current_user(token: str) -> User:
    """The user behind a valid access token."""
    return get_service().get_current_user(token)
