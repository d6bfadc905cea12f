"""issuer: a self-hosted OAuth 2.0 token issuer (password and refresh_token grants, JWTs, JWKS)."""

# The one place the version is written: pyproject.toml reads it from here (dynamic version).
__version__ = "0.1.0"
