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
import json
from collections.abc import Callable, Mapping
from typing import Any

from joserfc import jws
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


def read_header(token: str) -> tuple[jws.CompactSignature, dict[str, Any]]:
    """The parsed compact JWS and its unverified protected header, with ``alg`` a string.

    The token is parsed once here: :func:`decode_signed` verifies that same object
    instead of parsing the text again. Tokens with ``crit`` parameters are refused (none is
    understood here, RFC 7515 §4.1.11).
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise MalformedTokenError("not a token")
    try:
        parsed = jws.extract_compact(token.encode("ascii"))
        header = dict(parsed.headers())
    except (JoseError, ValueError, TypeError, UnicodeError) as exc:
        raise MalformedTokenError("not a compact JWS") from exc
    if not isinstance(header.get("alg"), str):
        raise BadSignatureError("the token has no alg")
    if header.get("crit") is not None:
        raise BadSignatureError("critical header parameters are not supported")
    return parsed, header


def decode_signed(parsed: jws.CompactSignature, key: Any, alg: str) -> dict[str, Any]:
    """The claims of ``parsed`` if its signature verifies with ``key`` under exactly ``alg``."""
    try:
        valid = jws.validate_compact(parsed, key, registry=registry(alg))
    except (JoseError, ValueError, TypeError) as exc:
        raise MalformedTokenError("the token cannot be decoded") from exc
    if not valid:
        raise BadSignatureError("bad signature")
    try:
        claims = json.loads(parsed.payload or b"")
    except (ValueError, TypeError) as exc:
        raise MalformedTokenError("the token cannot be decoded") from exc
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
    checks = _claims_registry(issuer, audience, now, leeway)
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


@functools.lru_cache(maxsize=256)
def _claims_registry(
    issuer: str, audience: str, now: Callable[[], int], leeway: int
) -> JWTClaimsRegistry:
    """The (stateless, reusable) joserfc checks for one verifier: built once, not per token.

    ``now`` is a verifier's bound method, equal for every call on the same verifier.
    """
    return JWTClaimsRegistry(
        now=now,
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )


def claim_error(exc: ClaimError) -> TokenError:
    """The TokenError for a claim joserfc found invalid."""
    if exc.claim == "iss":
        return InvalidIssuerError("the token was issued by someone else")
    if exc.claim == "aud":
        return InvalidAudienceError("the token is not meant for this audience")
    if exc.claim in ("nbf", "iat") and "must be" not in str(exc.description):
        return NotYetValidError("the token is not valid yet")
    return MalformedTokenError(f"invalid claim: {exc.claim}")
