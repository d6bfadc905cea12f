"""The discovery document (RFC 8414 §2, OpenID Connect Discovery 1.0 §3), built from the server.

Every value comes from what the running server really does: its registered grants and
client authentication methods, the auth methods its revocation and introspection
endpoints accept, its scopes, the algorithm ID tokens are signed with, and the claims
its ID tokens and /userinfo return. Nothing here is a hand-kept list that could drift.

Members whose registered default would claim something untrue are stated explicitly
(``request_uri_parameter_supported`` defaults to true in OIDC Discovery); members of
features the issuer does not have (authorization endpoint, PKCE, dynamic registration)
are left out. ``response_types_supported`` is required by both specifications and is
honestly empty: no response type exists without an authorization endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from issuer.oauth.endpoints import Introspection, Revocation
from issuer.oauth.oidc import ID_TOKEN_CLAIMS, OPENID, USERINFO_CLAIMS

if TYPE_CHECKING:
    from issuer.oauth.server import IssuerServer

# The endpoint URLs a document names: the HTTP layer's route table provides them.
OAUTH_ENDPOINTS = ("token_endpoint", "jwks_uri", "revocation_endpoint", "introspection_endpoint")
OIDC_ENDPOINTS = ("userinfo_endpoint",)


def discovery_document(
    issuer: str, endpoints: Mapping[str, str], server: IssuerServer
) -> dict[str, object]:
    """The metadata of ``server`` published as ``issuer``, with ``endpoints`` (absolute URLs)."""
    missing = [name for name in OAUTH_ENDPOINTS + OIDC_ENDPOINTS if name not in endpoints]
    if missing:
        raise ValueError(f"discovery needs the URLs of {', '.join(missing)}")
    registered = [name for name, _ in server.CLIENT_AUTH_METHODS]
    token_methods = [
        name
        for name in registered
        if any(name in grant.TOKEN_ENDPOINT_AUTH_METHODS for grant in server.GRANTS)
    ]
    document: dict[str, object] = {
        "issuer": issuer,
        **{name: endpoints[name] for name in OAUTH_ENDPOINTS},
        "grant_types_supported": [grant.GRANT_TYPE for grant in server.GRANTS],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": token_methods,
        "revocation_endpoint_auth_methods_supported": [
            m for m in registered if m in Revocation.CLIENT_AUTH_METHODS
        ],
        "introspection_endpoint_auth_methods_supported": [
            m for m in registered if m in Introspection.CLIENT_AUTH_METHODS
        ],
        "scopes_supported": list(server.scopes),
    }
    if OPENID in server.scopes:  # without it, no ID token and no /userinfo answer
        document.update(
            {
                **{name: endpoints[name] for name in OIDC_ENDPOINTS},
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": server.id_tokens.signing_algs,
                "claims_supported": list(dict.fromkeys(ID_TOKEN_CLAIMS + USERINFO_CLAIMS)),
                "claims_parameter_supported": False,
                "request_parameter_supported": False,
                "request_uri_parameter_supported": False,
            }
        )
    return document
