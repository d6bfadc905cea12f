"""issuer: a self-hosted OAuth 2.0 token issuer (password and refresh_token grants, JWTs, JWKS)."""

__version__ = "0.1.0"
