"""The one exception tree of `issuer`.

Every error the package raises on purpose derives from :class:`IssuerError` and
carries a short machine-readable ``code``::

    IssuerError
    ├── ConfigError              settings missing or invalid (names each setting)
    ├── KeyStoreError            key material missing, unreadable or inconsistent
    ├── ListenError              ``issuer serve`` cannot listen on its host and port
    ├── StoreError               a storage rule was broken
    │   ├── DuplicateError       username / client id already taken
    │   ├── NotFoundError        no such user / client / key
    │   ├── ReadOnlyStoreError   the configured store cannot write
    │   ├── NotMigratedError     the database is missing or at another revision
    │   └── MigrationRefusedError existing data forbids a migration (nothing changed)
    ├── PasswordPolicyError      a new password breaks the strength rules
    ├── UserError                token fine, user not usable
    │   ├── UnknownUserError     the subject no longer exists
    │   └── InactiveUserError    the user is disabled
    ├── IssuerUnreachableError   an API's verifier cannot get keys or an answer from the issuer
    └── TokenError               a token failed verification
        ├── MalformedTokenError  not a compact JWS / not JSON / claims of the wrong shape
        ├── BadSignatureError    signature, algorithm or kid not acceptable
        ├── ExpiredTokenError    past ``exp`` (plus leeway)
        ├── NotYetValidError     ``nbf`` / ``iat`` in the future
        ├── WrongTokenTypeError  an access token where a refresh token belongs, or back
        ├── InvalidIssuerError   ``iss`` is not this issuer
        ├── InvalidAudienceError ``aud`` does not name the expected audience
        └── RevokedTokenError    revoked, spent, logged out or unknown to the server

OAuth protocol errors are not here: they stay Authlib's ``OAuth2Error`` inside
``issuer.oauth``, whose descriptions are safe to show to clients.
"""

from __future__ import annotations


class IssuerError(Exception):
    """Base class of every error raised on purpose by `issuer`."""

    code = "issuer_error"


class ConfigError(IssuerError):
    """Settings are missing or invalid; the message lists every problem found."""

    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class KeyStoreError(IssuerError):
    code = "key_store_error"


class ListenError(IssuerError):
    """The server's socket could not be bound; the message says which option to change."""

    code = "cannot_listen"


class StoreError(IssuerError):
    code = "store_error"


class DuplicateError(StoreError):
    code = "duplicate"


class NotFoundError(StoreError):
    code = "not_found"


class ReadOnlyStoreError(StoreError):
    code = "read_only_store"


class NotMigratedError(StoreError):
    """The database is missing or not at the revision this version needs: nothing was changed."""

    code = "not_migrated"


class MigrationRefusedError(StoreError):
    """A migration found data it cannot carry over (e.g. colliding usernames)."""

    code = "migration_refused"


class PasswordPolicyError(IssuerError):
    """A new password was refused; ``failures`` lists the rules it broke."""

    code = "weak_password"

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        super().__init__("password must have " + ", ".join(self.failures))


class UserError(IssuerError):
    code = "user_error"


class UnknownUserError(UserError):
    code = "unknown_user"


class InactiveUserError(UserError):
    code = "inactive_user"


class TokenError(IssuerError):
    """Base class of token verification failures. Messages never contain the token."""

    code = "invalid_token"


class MalformedTokenError(TokenError):
    code = "malformed_token"


class BadSignatureError(TokenError):
    code = "bad_signature"


class ExpiredTokenError(TokenError):
    code = "expired_token"


class NotYetValidError(TokenError):
    code = "token_not_yet_valid"


class WrongTokenTypeError(TokenError):
    code = "wrong_token_type"


class InvalidIssuerError(TokenError):
    code = "invalid_issuer"


class InvalidAudienceError(TokenError):
    code = "invalid_audience"


class RevokedTokenError(TokenError):
    code = "revoked_token"


class IssuerUnreachableError(IssuerError):
    """The issuer (discovery, JWKS or introspection) did not answer usefully.

    Raised by :mod:`issuer.resource` when it has nothing to verify a token with: no key set
    was ever fetched, or introspection failed. It says nothing about the token, so APIs
    answer 503 rather than 401 (a client must not throw its token away over it).
    """

    code = "issuer_unreachable"
