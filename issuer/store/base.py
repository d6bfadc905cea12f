"""What the issuer needs from storage, as small Protocols in the caller's words.

Every method is one transaction: it either happens entirely or not at all. The
in-memory store (``issuer.store.memory``) is the reference implementation; the
SQLAlchemy store is the default; one contract test suite runs against all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from issuer.models import Client, RefreshRecord, Role, Session, User, UserChange


@runtime_checkable
class UserStore(Protocol):
    """Read access to users: all the token endpoint needs. Plug your own in by import path."""

    def get_by_username(self, username: str) -> User | None:
        """The user with this username, or None.

        The issuer's stores match :func:`issuer.models.canonical_username` forms
        (``ALICE`` is alice); a plugged-in store decides its own matching.
        """
        ...

    def get_by_id(self, user_id: str) -> User | None:
        """The user whose ``id`` (the token ``sub``) is ``user_id``, or None."""
        ...


@runtime_checkable
class UserAdmin(UserStore, Protocol):
    """Write access to users, for the CLI; a read-only store need not implement it."""

    def add_user(self, username: str, password_hash: str, role: Role) -> User:
        """Create a user; DuplicateError if the username's canonical form is taken."""
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

    def remove_client(self, client_id: str) -> list[str]:
        """Delete a client and revoke its refresh tokens, in one transaction; NotFoundError
        if none. The family ids (sessions) it ended, sorted."""
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
        """Spend ``old_jti`` (its ``successor_jti`` becomes ``new.jti``) and record ``new``,
        atomically; False if spent, revoked or unknown.

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


class SessionStore(Protocol):
    """Sessions (refresh families) as a whole: the rules in ``issuer.sessions`` use these."""

    def start_session(self, record: RefreshRecord, user: User) -> bool:
        """Record the first token of a new session for ``user`` as it was when the login
        checked it; False (and nothing recorded) if the user changed meanwhile (any
        change moves ``updated_at`` forward; a rehash does not) or was removed.

        The user's row is locked while checking, so a concurrent security event either
        comes first (and this fails) or comes after (and ends this session too).
        """
        ...

    def session_revoked(self, family_id: str) -> bool:
        """True if the session has ended: its newest record is revoked, or none is left.

        Revocation always revokes every record of a family, so the newest one decides;
        one probe of the (family_id, issued_at) index.
        """
        ...

    def list_sessions(self, user_id: str, now: int) -> Sequence[Session]:
        """The user's live sessions (not revoked, newest record unexpired at ``now``),
        oldest first."""
        ...

    def end_user_sessions(self, user_id: str, now: int) -> list[str]:
        """Revoke every session of the user; the family ids it ended, sorted."""
        ...

    def change_user(self, username: str, change: UserChange, now: int) -> tuple[User, list[str]]:
        """Apply a security event to a user and end all their sessions, in one transaction.

        Returns the user (as changed; as it was, for a removal) and the ended family ids.
        NotFoundError (and no change) if there is no such user.
        """
        ...

    def upgrade_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        """Replace the hash only if it is still ``old_hash`` (a rehash, no security event:
        ``updated_at`` stays).

        False if the user is gone or the hash changed meanwhile: a concurrent
        set-password always wins over a rehash.
        """
        ...


class PasswordResetStore(Protocol):
    """Pending password resets: at most one per user, stored as a SHA-256 of the token."""

    def save_reset(self, user_id: str, token_hash: str, expires_at: int, now: int) -> None:
        """Record a reset token for the user, replacing any older one."""
        ...

    def reset_owner(self, token_hash: str, now: int) -> str | None:
        """The user id of a pending, unexpired reset with this hash, or None; changes nothing."""
        ...

    def redeem_reset(
        self, token_hash: str, password_hash: str, now: int
    ) -> tuple[User, list[str]] | None:
        """Spend the reset, set the password and end every session of the user, in one
        transaction; None (and no change) if the reset is unknown, spent or expired."""
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


class Store(
    UserAdmin,
    ClientStore,
    RefreshTokenStore,
    SessionStore,
    PasswordResetStore,
    AccessDenylist,
    Protocol,
):
    """Everything the issuer keeps: what the default stores implement."""

    def ping(self) -> bool:
        """True if the backing storage answers (for /readyz)."""
        ...

    def request_scope(self) -> AbstractContextManager[None]:
        """Within the block, the calling thread's store calls may share one database
        connection (one token request; never one that waits for bcrypt)."""
        ...
