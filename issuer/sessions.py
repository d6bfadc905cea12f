"""Sessions: who may keep holding tokens, and the events that end a session.

A *session* is one refresh family: it starts at a password login and lives on
through rotation. Every access token carries
``sid`` = its family id (RFC 9068 allows additional claims; OIDC names the same idea
``sid``), so the issuer can refuse the access tokens of a session that ended.

The rules, in one place:

- **Lifetimes.** A refresh token lives ``refresh_token_ttl`` (the idle timeout) but
  never past the session's start + ``session_max_lifetime`` (the absolute lifetime),
  and an access token never outlives the refresh token issued with it. So refreshing
  every day cannot keep a session alive forever, and no access token of a session is
  still valid once all its refresh records may have been purged.
- **Events that end sessions.** Revoking a refresh token (RFC 7009 §2.1), reuse of a
  spent one (RFC 9700 §4.14.2), removing a client, and the security events on a user:
  a password change or reset, disabling, removing, a role change and ``users logout``.
  The user's change and the revocation are one transaction (``Store.change_user``).
- **How the issuer sees it: one indexed lookup per verification, not a cache.**
  ``session_ended`` reads the family's newest refresh record (one probe of the
  ``(family_id, issued_at)`` index): revocation always revokes every record of a
  family, so the newest one decides. A cache would have to be invalidated in every
  worker and replica at the moment of revocation, which needs a broadcast channel the
  issuer does not otherwise require (PostgreSQL alone serves replicas); a lookup is
  correct across all of them at once, and costs what the access-token deny-list check
  beside it already costs.
- **What it cannot see.** An API that verifies access tokens locally (JWKS or the
  HS256 secret) cannot know a session ended: it accepts the token until ``exp``.
  Such APIs rely on the short access-token lifetime, or ask ``/oauth/introspect``.

Every event writes an audit event (:mod:`issuer.audit`) naming the change, and
``session.ended`` with the cause when it ended sessions: who (user id and canonical
username), which sessions (family ids and count), the client and the address when known;
never a token or a password.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from issuer.audit import audit_event
from issuer.errors import NotFoundError
from issuer.models import Role, Session, User, UserChange, canonical_username
from issuer.store.base import Store, UserStore

SESSION_CLAIM = "sid"
DEFAULT_SESSION_MAX_LIFETIME = 30 * 86400  # the session_max_lifetime setting's default


def session_ended(store: Store, claims: Mapping[str, Any]) -> bool:
    """True if the verified access token ``claims`` belong to a session that has ended.

    A token without ``sid`` (minted through ``create_access_token`` for your own use)
    belongs to no session and is not affected.
    """
    sid = claims.get(SESSION_CLAIM)
    if sid is None:
        return False
    return not isinstance(sid, str) or store.session_revoked(sid)


@dataclass(frozen=True)
class Lifetimes:
    """How long the tokens issued now for a session may live, in seconds."""

    access: int
    refresh: int


@dataclass(frozen=True)
class SessionPolicy:
    """Token lifetimes within a session: idle timeout and absolute lifetime."""

    access_ttl: int
    refresh_ttl: int
    max_lifetime: int

    def for_new_session(self) -> Lifetimes:
        """Lifetimes for the first tokens of a session that starts now."""
        return self._within(self.max_lifetime)

    def lifetimes(self, now: int, started_at: int) -> Lifetimes | None:
        """Lifetimes for tokens issued at ``now`` in a session started at ``started_at``;
        None once the session reached its absolute lifetime."""
        remaining = started_at + self.max_lifetime - now
        return self._within(remaining) if remaining > 0 else None

    def _within(self, remaining: int) -> Lifetimes:
        refresh = min(self.refresh_ttl, remaining)
        return Lifetimes(access=min(self.access_ttl, refresh), refresh=refresh)


def user_fields(user: User) -> dict[str, str]:
    """``user_id`` and the canonical ``username``: how audit events name a known user."""
    return {"user_id": user.id, "username": canonical_username(user.username)}


def audit_ended(
    cause: str,
    user: User | None,
    ended: Sequence[str],
    *,
    client_id: str = "",
    address: str = "",
) -> None:
    """``session.ended`` for the sessions ``ended`` of ``user`` (None: of many users, a
    removed client's); ``cause`` is the event that ended them. None ended: no record."""
    if not ended:
        return
    audit_event(
        "session.ended",
        cause=cause,
        **(user_fields(user) if user is not None else {}),
        sessions=len(ended),
        families=list(ended),
        client_id=client_id,
        address=address,
    )


class Sessions:
    """The security events on users, each ending the user's sessions (CLI and Python API)."""

    def __init__(
        self, store: Store, clock: Callable[[], float], users: UserStore | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        # Where logout and listing look users up: a plugged-in user store, or the store.
        self.users: UserStore = users if users is not None else store

    def _apply(
        self, event: str, username: str, change: UserChange, **fields: str
    ) -> tuple[User, list[str]]:
        user, ended = self.store.change_user(username, change, int(self.clock()))
        audit_event(event, **user_fields(user), **fields, sessions_ended=len(ended))
        audit_ended(event, user, ended)
        return user, ended

    def set_password_hash(self, username: str, password_hash: str) -> tuple[User, list[str]]:
        """``users set-password``: the new hash, and every session ended."""
        return self._apply(
            "user.password_changed", username, UserChange(password_hash=password_hash)
        )

    def disable(self, username: str) -> tuple[User, list[str]]:
        """``users disable``: the user can no longer log in; every session ended."""
        return self._apply("user.disabled", username, UserChange(is_active=False))

    def set_role(self, username: str, role: Role) -> tuple[User, list[str]]:
        """``users set-role``: tokens carry the role, so every session of the old one ends."""
        return self._apply("user.role_changed", username, UserChange(role=role), role=role.value)

    def remove(self, username: str) -> tuple[User, list[str]]:
        """``users remove``: the user is deleted and every session ended."""
        return self._apply("user.removed", username, UserChange(remove=True))

    def logout(self, username: str) -> tuple[User, list[str]]:
        """``users logout``: end every session of the user, changing nothing else."""
        user = self._user(username)
        ended = self.store.end_user_sessions(user.id, int(self.clock()))
        audit_event("user.logged_out", **user_fields(user), sessions_ended=len(ended))
        audit_ended("user.logged_out", user, ended)
        return user, ended

    def sessions_of(self, username: str) -> tuple[User, Sequence[Session]]:
        """The user's live sessions, oldest first (no token material)."""
        user = self._user(username)
        return user, self.store.list_sessions(user.id, int(self.clock()))

    def _user(self, username: str) -> User:
        user = self.users.get_by_username(username)
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        return user
