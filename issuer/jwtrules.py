"""The rules every verifier of this issuer's JWTs applies, shared by the issuer and by APIs.

:mod:`issuer.tokens` (the issuer's own service) and :mod:`issuer.resource` (the verifiers
APIs use) check tokens alike: a joserfc registry that allows exactly the algorithm the key
is bound to (RFC 8725 §3.1), the ``typ`` header normalized per RFC 7515 §4.1.9, and the
registered claims (``iss``, ``aud``, ``exp``/``nbf``/``iat`` with leeway, ``sub``, ``jti``)
each mapped to its own :class:`issuer.errors.TokenError`. No key source lives here, so
importing this module needs none of the issuer's storage.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError as JoseBadSignature
from joserfc.errors import ClaimError, JoseError, MissingClaimError
from joserfc.errors import ExpiredTokenError as JoseExpired
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from issuer.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidAudienceError,
    InvalidIssuerError,
    MalformedTokenError,
    NotYetValidError,
    TokenError,
)

MAX_TOKEN_BYTES = 8192
ACCESS = "access"
ACCESS_TYP = "at+jwt"


class _Registry(JWSRegistry):
    """joserfc's JWS algorithms, with ``EdDSA`` quiet.

    joserfc 1.8 warns on every EdDSA call (it prefers ``Ed25519``), but verifiers such as
    PyJWT and jose only know ``alg: EdDSA``, so that name stays on the wire. The warning is
    about naming, not security; dropping it in our own registry leaves the process-wide warning
    filters alone (changing them is neither thread-safe nor ours to do).
    """

    algorithms = dict(JWSRegistry.algorithms)  # noqa: RUF012 - joserfc's own class attribute


_quiet_eddsa = copy.copy(JWSRegistry.algorithms["EdDSA"])
_quiet_eddsa.security_warning = None
_Registry.algorithms["EdDSA"] = _quiet_eddsa


@functools.cache
def registry(alg: str) -> JWSRegistry:
    """A registry allowing exactly ``alg``: the key pins the algorithm, never the token."""
    return _Registry(algorithms=[alg])


def read_header(token: str) -> tuple[bytes, dict[str, Any]]:
    """The raw bytes and unverified protected header of a compact JWS, with ``alg`` a string.

    Tokens with ``crit`` parameters are refused (none is understood here, RFC 7515 §4.1.11).
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise MalformedTokenError("not a token")
    try:
        raw = token.encode("ascii")
        header = dict(jws.extract_compact(raw).headers())
    except (JoseError, ValueError, TypeError, UnicodeError) as exc:
        raise MalformedTokenError("not a compact JWS") from exc
    if not isinstance(header.get("alg"), str):
        raise BadSignatureError("the token has no alg")
    if header.get("crit") is not None:
        raise BadSignatureError("critical header parameters are not supported")
    return raw, header


def decode_signed(raw: bytes, key: Any, alg: str) -> dict[str, Any]:
    """The claims of ``raw`` if its signature verifies with ``key`` under exactly ``alg``."""
    try:
        decoded = jwt.decode(raw, key, registry=registry(alg))
    except JoseBadSignature as exc:
        raise BadSignatureError("bad signature") from exc
    except (JoseError, ValueError, TypeError) as exc:
        raise MalformedTokenError("the token cannot be decoded") from exc
    claims = decoded.claims
    if not isinstance(claims, dict):
        raise MalformedTokenError("the claims are not a JSON object")
    return claims


def typ(header: Mapping[str, Any]) -> str:
    """The ``typ`` header, normalized per RFC 7515 §4.1.9 (``application/`` prefix optional)."""
    value = header.get("typ")
    if not isinstance(value, str):
        return ""
    return value.lower().removeprefix("application/")


def check_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: Callable[[], int],
    leeway: int,
) -> None:
    """Check the registered claims of verified ``claims``; one TokenError per failure."""
    checks = JWTClaimsRegistry(
        now=now,
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )
    try:
        checks.validate(dict(claims))
    except JoseExpired as exc:
        raise ExpiredTokenError("the token has expired") from exc
    except MissingClaimError as exc:
        raise MalformedTokenError(f"missing claim: {exc.claim}") from exc
    except ClaimError as exc:
        raise claim_error(exc) from exc
    except (JoseError, ValueError, TypeError, OverflowError) as exc:
        raise MalformedTokenError("claims of the wrong shape") from exc


def claim_error(exc: ClaimError) -> TokenError:
    """The TokenError for a claim joserfc found invalid."""
    if exc.claim == "iss":
        return InvalidIssuerError("the token was issued by someone else")
    if exc.claim == "aud":
        return InvalidAudienceError("the token is not meant for this audience")
    if exc.claim in ("nbf", "iat") and "must be" not in str(exc.description):
        return NotYetValidError("the token is not valid yet")
    return MalformedTokenError(f"invalid claim: {exc.claim}")
