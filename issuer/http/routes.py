"""Every path the issuer serves, in one place; discovery metadata is built from these."""

TOKEN = "/oauth/token"  # noqa: S105 - a path, not a password
REVOKE = "/oauth/revoke"
INTROSPECT = "/oauth/introspect"
USERINFO = "/userinfo"
PASSWORD_RESET = "/password/reset"  # noqa: S105 - a path, not a password
JWKS = "/.well-known/jwks.json"
OAUTH_METADATA = "/.well-known/oauth-authorization-server"
OIDC_METADATA = "/.well-known/openid-configuration"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"


def metadata_paths(issuer_path: str) -> tuple[str, ...]:
    """Where the discovery document is served for an issuer URL with path ``issuer_path``.

    Every other path is simply ``issuer_path + PATH``. Metadata is not: RFC 8414 §3.1
    inserts the well-known name between host and path, OIDC Discovery §4 appends it to
    the issuer, and RFC 8414 §5 also names the inserted form of openid-configuration.
    """
    if not issuer_path:
        return (OAUTH_METADATA, OIDC_METADATA)
    return (
        OAUTH_METADATA + issuer_path,
        issuer_path + OIDC_METADATA,
        OIDC_METADATA + issuer_path,
    )
