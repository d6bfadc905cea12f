"""The reference store: everything in process memory, behind one lock.

It defines the intended behaviour of every store (the contract tests run against it
first) and serves tests and tools that need no database. Not shared across processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from issuer.errors import DuplicateError, NotFoundError
from issuer.models import Client, RefreshRecord, Role, User


class MemoryStore:
    """In-memory implementation of :class:`issuer.store.base.Store`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._clients: dict[str, Client] = {}
        self._refresh: dict[str, RefreshRecord] = {}
        self._denied: dict[str, int] = {}

    # users
    def get_by_username(self, username: str) -> User | None:
        with self._lock:
            return next((u for u in self._users.values() if u.username == username), None)

    def get_by_id(self, user_id: str) -> User | None:
        with self._lock:
            return self._users.get(user_id)

    def add_user(self, username: str, password_hash: str, role: Role) -> User:
        now = int(time.time())
        with self._lock:
            if any(u.username == username for u in self._users.values()):
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
            user = next((u for u in self._users.values() if u.username == username), None)
            if user is None:
                raise NotFoundError(f"no user {username!r}")
            updated = replace(user, updated_at=int(time.time()), **changes)  # type: ignore[arg-type]
            self._users[user.id] = updated
            return updated

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

    def remove_client(self, client_id: str) -> None:
        now = int(time.time())
        with self._lock:
            if self._clients.pop(client_id, None) is None:
                raise NotFoundError(f"no client {client_id!r}")
            for jti, record in self._refresh.items():
                if record.client_id == client_id and record.revoked_at is None:
                    self._refresh[jti] = replace(record, revoked_at=now)

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
            self._refresh[old_jti] = replace(old, spent_at=now)
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
