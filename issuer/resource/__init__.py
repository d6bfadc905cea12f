"""Protect your API with this issuer's access tokens: it needs only the issuer's URL.

Verifiers, each with ``verify(token) -> Principal`` and ``async averify(token) -> Principal``
raising one :class:`issuer.errors.TokenError` per failure:

* :class:`JWKSVerifier`: local checks against the published keys (RS256, ES256, EdDSA),
  found by discovery and cached (``Cache-Control``, ``ETag``, unknown-kid refetch with a
  cooldown, the last good keys while the issuer is down).
* :class:`SecretVerifier`: local checks with the shared HS256 secret.
* :class:`IntrospectionVerifier`: asks the issuer (RFC 7662), so revoked tokens are refused
  within its cache bound (default 30 s); local verifiers see revocation only at ``exp``.

:class:`Protect` turns a verifier into Starlette/FastAPI dependencies (``current_principal``,
``require_role``, ``require_scope``) answering per RFC 6750.

Nothing here touches the issuer's database, key directory or settings, and nothing goes
on the network at import or construction time.
"""

from __future__ import annotations

from issuer.resource.introspection import IntrospectionVerifier
from issuer.resource.jwks import CachePolicy
from issuer.resource.principal import Principal
from issuer.resource.protect import Protect, Verifier
from issuer.resource.verifiers import JWKSVerifier, SecretVerifier

__all__ = [
    "CachePolicy",
    "IntrospectionVerifier",
    "JWKSVerifier",
    "Principal",
    "Protect",
    "SecretVerifier",
    "Verifier",
]
