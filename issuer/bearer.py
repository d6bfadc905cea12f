"""RFC 6750 in two functions: reading a Bearer token and writing a Bearer challenge.

Shared by the issuer's own protected endpoint (``/userinfo``), its dependencies and the
APIs' :mod:`issuer.resource`, so all of them parse and answer exactly alike.
"""

from __future__ import annotations

REALM = "issuer"


def token_from_header(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (§2.1), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def challenge(
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
    *,
    realm: str = REALM,
) -> str:
    """A ``WWW-Authenticate`` value (§3); no error code when no credentials were sent.

    ``scope`` names the scopes a request lacked (``insufficient_scope``, §3.1). Values are
    constants of ours, never client input: they need no escaping.
    """
    parts = [f'realm="{realm}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)
