"""A published JWKS (RFC 7517), read into keys each bound to one algorithm.

A key is usable only with the algorithm it is bound to (RFC 8725 §3.1): its JWK's ``alg``
when present, else the one algorithm its type implies (RSA → RS256, EC P-256 → ES256,
OKP → EdDSA). Keys bound to an algorithm the verifier was not told to accept, keys whose
type contradicts their ``alg``, symmetric keys, encryption keys, keys without a ``kid``,
RSA keys under 2048 bits and members that do not parse are left out: one bad entry never
spoils the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, RSAKey
from joserfc.jws import JWSRegistry

log = logging.getLogger("issuer.resource")

# What the issuer signs with when not using a shared secret.
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MIN_RSA_BITS = 2048
_IMPLIED_ALG = {("RSA", None): "RS256", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}


@dataclass(frozen=True)
class PinnedKey:
    """A public key and the one algorithm it may verify."""

    kid: str
    alg: str
    key: Any  # a joserfc key


def accepted_algorithms(algorithms: Iterable[str] | None) -> frozenset[str]:
    """The asymmetric JWS algorithms a JWKS verifier accepts; ValueError for others."""
    chosen = frozenset(ASYMMETRIC_ALGORITHMS if algorithms is None else algorithms)
    if not chosen:
        raise ValueError("algorithms: name at least one")
    for alg in chosen:
        known = JWSRegistry.algorithms.get(alg)
        if known is None or known.key_type not in ("RSA", "EC", "OKP"):
            raise ValueError(
                f"algorithms: {alg!r} is not an asymmetric JWS algorithm "
                "(a shared secret is SecretVerifier's job)"
            )
    return chosen


def read_jwks(document: Any, algorithms: frozenset[str]) -> dict[str, PinnedKey]:
    """The usable keys of a JWKS document by kid; ValueError if it is not a JWKS at all."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str, PinnedKey] = {}
    for member in document["keys"]:
        pinned = _pinned(member, algorithms)
        if pinned is not None:
            keys.setdefault(pinned.kid, pinned)
    return keys


def _pinned(member: Any, algorithms: frozenset[str]) -> PinnedKey | None:
    if not isinstance(member, Mapping):
        return None
    kid = member.get("kid")
    if not isinstance(kid, str) or not kid or member.get("use", "sig") != "sig":
        return None
    alg = _bound_alg(member, algorithms)
    if alg is None:
        return None
    try:
        key = JWKRegistry.import_key(dict(member))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        log.warning("JWKS key %s skipped: %s", kid, exc.__class__.__name__)
        return None
    if isinstance(key, RSAKey) and key.raw_value.key_size < MIN_RSA_BITS:
        log.warning("JWKS key %s skipped: RSA key under %d bits", kid, MIN_RSA_BITS)
        return None
    return PinnedKey(kid, alg, key)


def _bound_alg(member: Mapping[str, Any], algorithms: frozenset[str]) -> str | None:
    """The accepted algorithm ``member`` is bound to, or None (not accepted, or inconsistent)."""
    kty, alg, crv = member.get("kty"), member.get("alg"), member.get("crv")
    if alg is None and isinstance(kty, str):
        alg = _IMPLIED_ALG.get((kty, None if kty == "RSA" else crv))
    if not isinstance(alg, str) or alg not in algorithms:
        log.debug("JWKS key %s skipped: algorithm %r not accepted", member.get("kid"), alg)
        return None
    spec = JWSRegistry.algorithms[alg]
    curve = getattr(spec, "curve", None)
    if kty != spec.key_type or (curve is not None and crv != curve):
        log.warning("JWKS key %s skipped: it does not fit alg %s", member.get("kid"), alg)
        return None
    return alg
