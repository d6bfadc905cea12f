"""Plain domain records shared by every layer: users, clients, refresh-token records.

Frozen dataclasses, so a record read from a store can be handed across threads and
never changes under its reader; stores map rows to these at their edge.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import TypeGuard


class Role(enum.StrEnum):
    """What a user may do; carried in the ``role`` claim of access tokens."""

    ADMIN = "admin"
    ENGINEER = "engineer"
    VIEWER = "viewer"

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named ``value``; ValueError naming the allowed roles otherwise."""
        try:
            return cls(value)
        except ValueError:
            allowed = " | ".join(r.value for r in cls)
            raise ValueError(f"unknown role {value!r}; expected {allowed}") from None


class AuthMethod(enum.StrEnum):
    """How a client authenticates at the token endpoint (RFC 7591 §2 names)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name
    NONE = "none"


GRANT_TYPES = ("password", "refresh_token")

# What a new user or client may be called (``issuer users add``, ``issuer clients add``):
# printable in a terminal and a log line, safe in a URL, short enough for a table column.
USERNAME_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,150}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
CLIENT_NAME_MAX = 200


def canonical_username(name: str) -> str:
    """The form in which usernames are compared, stored unique, rate limited and audited.

    Unicode NFKC_Casefold (UAX #15 / UTS #39 style): NFKC, case folding, NFKC again, so
    ``ALICE``, ``Alice`` and its full-width form (U+FF41 …) are one name. Folding alone can
    leave a string that is no longer NFKC (e.g. ``ǰ``), hence the second pass.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


@dataclass(frozen=True)
class User:
    """A resource owner. ``password_hash`` is a bcrypt hash, or None for stores without one."""

    id: str
    username: str
    role: Role
    password_hash: str | None = field(default=None, repr=False)
    is_active: bool = True
    created_at: int = 0
    updated_at: int = 0

    @classmethod
    def new(cls, username: str, password_hash: str, role: Role, now: int) -> User:
        """A new, active user with a fresh random id: how every store creates one."""
        return cls(
            id=str(uuid.uuid4()),
            username=username,
            role=role,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
        )


def may_hold_tokens(user: User | None) -> TypeGuard[User]:
    """The one rule for who may have tokens: a user who exists and is enabled.

    Every path asks it: the password and refresh grants, introspection, userinfo and the
    API dependencies. A failed-login lockout (``issuer.ratelimit``) is not part of it: it
    stops password guessing, not the sessions the user already has.
    """
    return user is not None and user.is_active


def hash_client_secret(secret: str) -> str:
    """SHA-256 of a client secret, hex. Secrets are 256-bit random, so a fast hash suffices."""
    return sha256_hex(secret)


def sha256_hex(value: str) -> str:
    """SHA-256 of a generated high-entropy secret (client secret, reset token), hex.

    256-bit random values cannot be guessed, so a fast hash suffices (bcrypt would only
    cost every request); lone surrogates hash rather than raise.
    """
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Client:
    """A registered OAuth client. Confidential clients have a ``secret_hash``."""

    client_id: str
    auth_method: AuthMethod
    grant_types: tuple[str, ...] = GRANT_TYPES
    scopes: tuple[str, ...] = ()
    secret_hash: str | None = field(default=None, repr=False)
    name: str = ""
    created_at: int = 0
    # May introspect every token (RFC 7662 §4): for resource servers. Other clients
    # introspect only the tokens issued to them.
    may_introspect: bool = False

    @property
    def is_public(self) -> bool:
        return self.auth_method is AuthMethod.NONE

    def check_secret(self, secret: str) -> bool:
        """Constant-time comparison of a presented secret with the stored hash.

        False, never an error, for a public client, a client without a hash, or a
        presented secret that is not a str.
        """
        if self.is_public or self.secret_hash is None or not isinstance(secret, str):
            return False
        # surrogatepass: a lone surrogate from a sloppy form decoder is a wrong secret, not a crash.
        raw = secret.encode("utf-8", "surrogatepass")
        presented = hashlib.sha256(raw).hexdigest().encode("ascii")
        # Bytes, because compare_digest refuses a str with non-ASCII characters.
        return hmac.compare_digest(presented, self.secret_hash.encode("utf-8"))


@dataclass(frozen=True)
class RefreshRecord:
    """Server-side state of one refresh token (by ``jti``) within its rotation family."""

    jti: str
    family_id: str
    user_id: str
    client_id: str
    scope: str
    issued_at: int
    expires_at: int
    spent_at: int | None = None
    revoked_at: int | None = None
    # When the session (the family) began: the first record's issued_at; 0 = this one.
    session_started_at: int = 0
    # The jti this record was rotated into (set when it is spent).
    successor_jti: str | None = None

    def __post_init__(self) -> None:
        if not self.session_started_at:
            object.__setattr__(self, "session_started_at", self.issued_at)

    @property
    def is_usable(self) -> bool:
        return self.spent_at is None and self.revoked_at is None


@dataclass(frozen=True)
class Session:
    """One login session: a refresh family, as ``issuer sessions list`` shows it."""

    family_id: str
    user_id: str
    client_id: str
    started_at: int
    refreshed_at: int
    expires_at: int


@dataclass(frozen=True)
class UserChange:
    """A security event on a user; applying one ends every session of the user.

    Set the fields that change; ``remove`` deletes the user instead.
    """

    password_hash: str | None = field(default=None, repr=False)
    is_active: bool | None = None
    role: Role | None = None
    remove: bool = False

    def values(self) -> dict[str, object]:
        """The column values this change writes (empty for a removal)."""
        changed: dict[str, object] = {}
        if self.password_hash is not None:
            changed["password_hash"] = self.password_hash
        if self.is_active is not None:
            changed["is_active"] = self.is_active
        if self.role is not None:
            changed["role"] = self.role
        return changed
