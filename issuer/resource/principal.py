"""Who a verified access token speaks for, as an API sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from issuer.errors import MalformedTokenError


@dataclass(frozen=True)
class Principal:
    """The subject of a verified access token (RFC 9068 claims plus this issuer's own).

    ``roles`` always contains ``role`` when the token names one; ``scope`` is the set of
    space-separated scope tokens (RFC 6749 §3.3). ``claims`` are every verified claim, read-only.
    """

    sub: str
    username: str | None = None
    role: str | None = None
    roles: frozenset[str] = frozenset()
    scope: frozenset[str] = frozenset()
    client_id: str | None = None
    sid: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        """The principal of verified claims; MalformedTokenError if they have the wrong shape."""
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise MalformedTokenError("missing claim: sub")
        role = _optional_str(claims, "role")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise MalformedTokenError("invalid claim: roles")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise MalformedTokenError("invalid claim: scope")
        return cls(
            sub=sub,
            username=_optional_str(claims, "username"),
            role=role,
            roles=frozenset(roles) | ({role} if role else set()),
            scope=frozenset(scope.split()),
            client_id=_optional_str(claims, "client_id"),
            sid=_optional_str(claims, "sid"),
            claims=MappingProxyType(dict(claims)),
        )

    def has_role(self, *roles: str) -> bool:
        """True if the principal holds any of ``roles`` (exact match)."""
        return not self.roles.isdisjoint(roles)

    def has_scope(self, *scopes: str) -> bool:
        """True if every one of ``scopes`` was granted."""
        return self.scope.issuperset(scopes)


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedTokenError(f"invalid claim: {name}")
    return value
