"""A second, independent user store, plugged in by import path: read-only users from JSON.

Configure it with ``user_store = "tests.plugin_user_store:make_store"``; the file is named
by the ``PLUGIN_USERS_FILE`` environment variable and looks like::

    {"users": [{"id": "u-1", "username": "carol", "role": "admin",
                "password_hash": "$2b$...", "active": true}]}

It is re-read on every lookup, so an edit (disabling a user) takes effect at once.
It offers only what :class:`issuer.store.base.UserStore` asks, so the CLI must refuse
to write through it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from issuer.models import Role, User
from issuer.settings import Settings

ENV_VAR = "PLUGIN_USERS_FILE"


class JsonUserStore:
    """Users from a JSON file; lookups only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _users(self) -> list[User]:
        data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        return [
            User(
                id=str(entry["id"]),
                username=str(entry["username"]),
                role=Role.parse(entry["role"]),
                password_hash=entry.get("password_hash"),
                is_active=bool(entry.get("active", True)),
            )
            for entry in data["users"]
        ]

    def get_by_username(self, username: str) -> User | None:
        return next((u for u in self._users() if u.username == username), None)

    def get_by_id(self, user_id: str) -> User | None:
        return next((u for u in self._users() if u.id == user_id), None)


def make_store(settings: Settings) -> JsonUserStore:
    """The factory ``user_store`` names; it fails loudly when the file is not configured."""
    path = os.environ.get(ENV_VAR)
    if not path:
        raise RuntimeError(f"set {ENV_VAR} to the JSON users file")
    store = JsonUserStore(Path(path))
    store._users()  # fail at start-up, not at the first login, if the file is unreadable
    return store


def not_a_store(settings: Settings) -> object:
    """A factory that returns the wrong thing, for the configuration-error test."""
    return object()
