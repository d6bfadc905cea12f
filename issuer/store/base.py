"""What the issuer needs from storage, as small Protocols in the caller's words.

Every method is one transaction: it either happens entirely or not at all. The
in-memory store (``issuer.store.memory``) is the reference implementation; the
SQLAlchemy store is the default; one contract test suite runs against all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from issuer.models import Client, RefreshRecord, Role, User


@runtime_checkable
class UserStore(Protocol):
    """Read access to users: all the token endpoint needs. Plug your own in by import path."""

    def get_by_username(self, username: str) -> User | None:
        """The user with exactly this username, or None."""
        ...

    def get_by_id(self, user_id: str) -> User | None:
        """The user whose ``id`` (the token ``sub``) is ``user_id``, or None."""
        ...


@runtime_checkable
class UserAdmin(UserStore, Protocol):
    """Write access to users, for the CLI; a read-only store need not implement it."""

    def add_user(self, username: str, password_hash: str, role: Role) -> User:
        """Create a user; DuplicateError if the username is taken."""
        ...

    def list_users(self) -> Sequence[User]:
        """Every user, ordered by username."""
        ...

    def set_active(self, username: str, active: bool) -> User:
        """Enable or disable a user; NotFoundError if there is no such user."""
        ...

    def set_password_hash(self, username: str, password_hash: str) -> User:
        """Replace a user's password hash; NotFoundError if there is no such user."""
        ...


class ClientStore(Protocol):
    """Registered OAuth clients."""

    def get_client(self, client_id: str) -> Client | None:
        """The client with this id, or None."""
        ...

    def add_client(self, client: Client) -> Client:
        """Register a client; DuplicateError if the id is taken."""
        ...

    def list_clients(self) -> Sequence[Client]:
        """Every client, ordered by id."""
        ...

    def remove_client(self, client_id: str) -> None:
        """Delete a client and revoke its refresh tokens; NotFoundError if none."""
        ...

    def set_client_introspection(self, client_id: str, allowed: bool) -> Client:
        """Grant or withdraw the permission to introspect every token; NotFoundError if none."""
        ...


class RefreshTokenStore(Protocol):
    """Server-side state of refresh tokens: one record per ``jti``, grouped in families."""

    def create(self, record: RefreshRecord) -> None:
        """Record a newly issued refresh token (the first of a new family)."""
        ...

    def get(self, jti: str) -> RefreshRecord | None:
        """The record for ``jti``, or None."""
        ...

    def rotate(self, old_jti: str, new: RefreshRecord, now: int) -> bool:
        """Spend ``old_jti`` and record ``new``, atomically; False if spent, revoked or unknown.

        Exactly one of any number of concurrent calls with the same ``old_jti`` wins; a
        losing call records nothing. DuplicateError (and no change) if ``new.jti`` is taken.
        """
        ...

    def revoke_family(self, family_id: str, now: int) -> int:
        """Revoke every token of a family; the number of records it changed."""
        ...

    def purge_expired_refresh(self, before: int) -> int:
        """Forget records of tokens that expired before ``before``; the number removed.

        Such a token fails verification on ``exp`` before its record is read, so the
        record no longer decides anything.
        """
        ...


class AccessDenylist(Protocol):
    """Access-token ``jti``s revoked before they expire (logout)."""

    def deny(self, jti: str, expires_at: int) -> None:
        """Refuse ``jti`` from now until ``expires_at``; twice is fine: the later expiry wins."""
        ...

    def is_denied(self, jti: str) -> bool:
        """True if ``jti`` was denied and not purged since (expired tokens fail on ``exp``)."""
        ...

    def purge_expired(self, now: int) -> int:
        """Forget entries whose ``expires_at`` is before ``now``; the number removed."""
        ...


class Store(UserAdmin, ClientStore, RefreshTokenStore, AccessDenylist, Protocol):
    """Everything the issuer keeps: what the default stores implement."""

    def ping(self) -> bool:
        """True if the backing storage answers (for /readyz)."""
        ...
