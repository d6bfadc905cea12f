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
