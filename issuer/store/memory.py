"""The reference store: everything in process memory, behind one lock.

It defines the intended behaviour of every store (the contract tests run against it
first) and serves tests and tools that need no database. Not shared across processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

from issuer.errors import DuplicateError, NotFoundError
from issuer.models import Client, RefreshRecord, Role, Session, User, UserChange, canonical_username


class MemoryStore:
    """In-memory implementation of :class:`issuer.store.base.Store`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._clients: dict[str, Client] = {}
        self._refresh: dict[str, RefreshRecord] = {}
        self._denied: dict[str, int] = {}
        # user id -> (token hash, expires_at)
        self._resets: dict[str, tuple[str, int]] = {}

    # users
    def get_by_username(self, username: str) -> User | None:
        with self._lock:
            return self._named(username)

    def _named(self, username: str) -> User | None:
        wanted = canonical_username(username)
        return next(
            (u for u in self._users.values() if canonical_username(u.username) == wanted), None
        )

    def get_by_id(self, user_id: str) -> User | None:
        with self._lock:
            return self._users.get(user_id)

    def add_user(self, username: str, password_hash: str, role: Role) -> User:
        now = int(time.time())
        with self._lock:
            if self._named(username) is not None:
                raise DuplicateError(f"user {username!r} already exists")
            user = User.new(username, password_hash, role, now)
            self._users[user.id] = user
            return user

    def list_users(self) -> Sequence[User]:
        with self._lock:
            return sorted(self._users.values(), key=lambda u: u.username)

    def set_active(self, username: str, active: bool) -> User:
        return self._update_user(username, is_active=active)

    def set_password_hash(self, username: str, password_hash: str) -> User:
        return self._update_user(username, password_hash=password_hash)

    def _update_user(self, username: str, **changes: object) -> User:
        with self._lock:
            return self._change(username, changes)

    def _change(self, username: str, changes: dict[str, object]) -> User:
        user = self._named(username)
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        # Always later than before: a login that read the user can tell any change since.
        updated_at = max(int(time.time()), user.updated_at + 1)
        updated = replace(user, updated_at=updated_at, **changes)  # type: ignore[arg-type]
        self._users[user.id] = updated
        return updated

    def upgrade_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        with self._lock:
            user = self._users.get(user_id)
            if user is None or user.password_hash != old_hash:
                return False
            self._users[user_id] = replace(user, password_hash=new_hash)
            return True

    # sessions
    def start_session(self, record: RefreshRecord, user: User) -> bool:
        with self._lock:
            current = self._users.get(user.id)
            if current is None or current.updated_at != user.updated_at:
                return False
            if record.jti in self._refresh:
                raise DuplicateError("refresh token id already recorded")
            self._refresh[record.jti] = record
            return True

    def session_revoked(self, family_id: str) -> bool:
        with self._lock:
            family = [r for r in self._refresh.values() if r.family_id == family_id]
        if not family:
            return True
        return max(family, key=lambda r: r.issued_at).revoked_at is not None

    def list_sessions(self, user_id: str, now: int) -> Sequence[Session]:
        with self._lock:
            records = [r for r in self._refresh.values() if r.user_id == user_id]
        families: dict[str, list[RefreshRecord]] = {}
        for record in records:
            families.setdefault(record.family_id, []).append(record)
        found = []
        for family_id, family in families.items():
            if any(r.revoked_at is not None for r in family):
                continue
            newest = max(r.expires_at for r in family)
            if newest <= now:
                continue
            found.append(
                Session(
                    family_id=family_id,
                    user_id=user_id,
                    client_id=family[0].client_id,
                    started_at=min(r.session_started_at for r in family),
                    refreshed_at=max(r.issued_at for r in family),
                    expires_at=newest,
                )
            )
        return sorted(found, key=lambda s: (s.started_at, s.family_id))

    def end_user_sessions(self, user_id: str, now: int) -> list[str]:
        with self._lock:
            return self._revoke_where(lambda r: r.user_id == user_id, now)

    def change_user(self, username: str, change: UserChange, now: int) -> tuple[User, list[str]]:
        with self._lock:
            user = self._named(username)
            if user is None:
                raise NotFoundError(f"no user {username!r}")
            if change.remove:
                del self._users[user.id]
                self._resets.pop(user.id, None)
            else:
                user = self._change(username, change.values())
            return user, self._revoke_where(lambda r: r.user_id == user.id, now)

    def _revoke_where(self, which: Callable[[RefreshRecord], bool], now: int) -> list[str]:
        families = set()
        for jti, record in self._refresh.items():
            if which(record) and record.revoked_at is None:
                self._refresh[jti] = replace(record, revoked_at=now)
                families.add(record.family_id)
        return sorted(families)

    # password resets
    def save_reset(self, user_id: str, token_hash: str, expires_at: int, now: int) -> None:
        with self._lock:
            self._resets[user_id] = (token_hash, expires_at)

    def reset_owner(self, token_hash: str, now: int) -> str | None:
        with self._lock:
            return self._reset_owner(token_hash, now)

    def _reset_owner(self, token_hash: str, now: int) -> str | None:
        return next(
            (
                user_id
                for user_id, (stored, expires_at) in self._resets.items()
                if stored == token_hash and now <= expires_at
            ),
            None,
        )

    def redeem_reset(
        self, token_hash: str, password_hash: str, now: int
    ) -> tuple[User, list[str]] | None:
        with self._lock:
            user_id = self._reset_owner(token_hash, now)
            if user_id is None:
                return None
            del self._resets[user_id]
            user = self._users.get(user_id)
            if user is None:
                return None
            user = self._change(user.username, {"password_hash": password_hash})
            return user, self._revoke_where(lambda r: r.user_id == user_id, now)

    # clients
    def get_client(self, client_id: str) -> Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def add_client(self, client: Client) -> Client:
        with self._lock:
            if client.client_id in self._clients:
                raise DuplicateError(f"client {client.client_id!r} already exists")
            self._clients[client.client_id] = client
            return client

    def list_clients(self) -> Sequence[Client]:
        with self._lock:
            return sorted(self._clients.values(), key=lambda c: c.client_id)

    def set_client_introspection(self, client_id: str, allowed: bool) -> Client:
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                raise NotFoundError(f"no client {client_id!r}")
            updated = replace(client, may_introspect=allowed)
            self._clients[client_id] = updated
            return updated

    def remove_client(self, client_id: str) -> list[str]:
        now = int(time.time())
        with self._lock:
            if self._clients.pop(client_id, None) is None:
                raise NotFoundError(f"no client {client_id!r}")
            return self._revoke_where(lambda r: r.client_id == client_id, now)

    # refresh tokens
    def create(self, record: RefreshRecord) -> None:
        with self._lock:
            if record.jti in self._refresh:
                raise DuplicateError("refresh token id already recorded")
            self._refresh[record.jti] = record

    def get(self, jti: str) -> RefreshRecord | None:
        with self._lock:
            return self._refresh.get(jti)

    def rotate(self, old_jti: str, new: RefreshRecord, now: int) -> bool:
        with self._lock:
            old = self._refresh.get(old_jti)
            if old is None or not old.is_usable:
                return False
            if new.jti in self._refresh:
                raise DuplicateError("refresh token id already recorded")
            self._refresh[old_jti] = replace(old, spent_at=now, successor_jti=new.jti)
            self._refresh[new.jti] = new
            return True

    def revoke_family(self, family_id: str, now: int) -> int:
        changed = 0
        with self._lock:
            for jti, record in self._refresh.items():
                if record.family_id == family_id and record.revoked_at is None:
                    self._refresh[jti] = replace(record, revoked_at=now)
                    changed += 1
        return changed

    def purge_expired_refresh(self, before: int) -> int:
        with self._lock:
            expired = [jti for jti, r in self._refresh.items() if r.expires_at < before]
            for jti in expired:
                del self._refresh[jti]
            return len(expired)

    # access-token deny list
    def deny(self, jti: str, expires_at: int) -> None:
        with self._lock:
            self._denied[jti] = max(expires_at, self._denied.get(jti, 0))

    def is_denied(self, jti: str) -> bool:
        with self._lock:
            return jti in self._denied

    def purge_expired(self, now: int) -> int:
        with self._lock:
            expired = [jti for jti, exp in self._denied.items() if exp < now]
            for jti in expired:
                del self._denied[jti]
            return len(expired)

    def ping(self) -> bool:
        return True

    def request_scope(self) -> AbstractContextManager[None]:
        """Nothing to share: no connections."""
        return nullcontext()
