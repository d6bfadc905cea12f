"""The composition root: the only place that names concrete classes and wires them.

settings → stores → key store → token service → server, built in one order for the app
(:mod:`issuer.app` puts routes around it), the CLI and tests alike. Nothing here is
module-level state: each call builds a fresh graph, and its owner closes it
(:meth:`Components.close`). No web framework either: the CLI's key and database
commands use these builders without importing Starlette.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from issuer.errors import ConfigError, KeyStoreError
from issuer.keystore import (
    DirectoryKeyStore,
    KeyManager,
    KeyStore,
    ReloadingKeyStore,
    Sealer,
    StaticKeyStore,
)
from issuer.oauth.server import IssuerServer
from issuer.passwords import PasswordHasher
from issuer.ratelimit import LoginLimiter, LoginPolicy, hash_key_for
from issuer.resets import AddressBudget, PasswordResets
from issuer.sensitive import parse_kek
from issuer.sessions import SessionPolicy, session_ended
from issuer.settings import Settings
from issuer.store.base import Store, UserStore
from issuer.store.configured import load_user_store, open_store
from issuer.store.keys import DatabaseKeyStorage
from issuer.store.sql import SqlStore
from issuer.tokens import ACCESS, REFRESH, TokenService

log = logging.getLogger("issuer.app")

__all__ = [
    "Components",
    "StoreRevocations",
    "build_components",
    "build_key_manager",
    "build_key_storage",
    "build_key_store",
    "build_login_limiter",
    "build_password_resets",
    "load_user_store",
    "purge_expired_state",
]


class StoreRevocations:
    """Revocation as the stores know it: denied access jtis, ended sessions (see
    ``issuer.sessions``: one indexed lookup, no cache), spent or revoked refresh records."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        jti = claims.get("jti")
        if not isinstance(jti, str):
            return True
        if claims.get("type") == ACCESS:
            return self.store.is_denied(jti) or session_ended(self.store, claims)
        if claims.get("type") == REFRESH:
            record = self.store.get(jti)
            return record is None or not record.is_usable
        return True


def build_key_store(settings: Settings, store: Store | None = None) -> KeyStore:
    """The key source settings ask for; KeyStoreError if it has no signing key.

    A key set signs with its own algorithm (recorded with it); a different
    ``signing_alg`` setting is followed by nobody and said once, here. The database key
    store reads through ``store``'s engine (required with ``key_store = "database"``).
    """
    keys: KeyStore
    if settings.signing_alg == "HS256" and settings.secret_key is not None:
        keys = StaticKeyStore(settings.secret_key.reveal())
    elif settings.key_store == "database":
        keys = ReloadingKeyStore(
            build_key_storage(settings, store),
            settings.signing_alg,
            settings.key_reload_interval,
        )
    else:
        keys = DirectoryKeyStore(
            settings.keys_dir, settings.signing_alg, settings.key_reload_interval
        )
    signing = keys.current().signing
    if signing is None:
        raise KeyStoreError(no_signing_key_message(settings, store))
    note = key_set_alg_note(settings, signing.alg)
    if note:
        log.warning("%s", note)
    return keys


def build_key_storage(settings: Settings, store: Store | None) -> DatabaseKeyStorage:
    """The database key store on ``store``'s engine, sealing under the configured KEK
    (and opening what the previous KEK sealed, while a KEK change rolls out)."""
    if settings.key_encryption_key is None:
        raise ConfigError(["key_encryption_key: key_store = database needs a KEK"])
    older = (
        [parse_kek(settings.key_encryption_key_old.reveal())]
        if settings.key_encryption_key_old is not None
        else []
    )
    sealer = Sealer(parse_kek(settings.key_encryption_key.reveal()), older)
    return DatabaseKeyStorage(_sql(store).engine, sealer)


def _sql(store: Store | None) -> SqlStore:
    """The SQL store the database key store shares its engine with."""
    if not isinstance(store, SqlStore):
        raise ConfigError(["key_store: the database key store needs the SQL database opened"])
    return store


def key_store_location(settings: Settings) -> str:
    """Where the key set lives, for messages."""
    return "the database" if settings.key_store == "database" else str(settings.keys_dir)


def no_signing_key_message(settings: Settings, store: Store | None = None) -> str:
    """What is wrong when nothing signs, and the command (with its algorithm) that fixes it."""
    alg = build_key_manager(settings, store=store).key_set_alg()
    hint = f"run `issuer init` or `issuer keys rotate` (nothing signs: a {alg} key signs at once)"
    if alg == "HS256":
        hint += ", or set ISSUER_SECRET_KEY / ISSUER_SECRET_KEY_FILE"
    return f"no active {alg} key in {key_store_location(settings)}: {hint}"


def key_set_alg_note(settings: Settings, key_set_alg: str) -> str | None:
    """The line saying a configured ``signing_alg`` is not the key set's, which wins."""
    if key_set_alg == settings.signing_alg:
        return None
    return (
        f"the key set in {key_store_location(settings)} signs with {key_set_alg}; signing_alg = "
        f"{settings.signing_alg} only applies to a new key set. To switch, run "
        f"`issuer keys rotate --alg {settings.signing_alg}` (staged: the next rotation "
        f"activates it), or set signing_alg = {key_set_alg} to silence this"
    )


def build_key_manager(
    settings: Settings,
    clock: Callable[[], float] = time.time,
    *,
    store: Store | None = None,
) -> KeyManager:
    """The write side of the key set (``keys/``, or the database through ``store``), with
    the retirement horizon the token lifetimes imply."""
    return KeyManager(
        build_key_storage(settings, store)
        if settings.key_store == "database"
        else settings.keys_dir,
        settings.signing_alg,
        jwks_max_age=settings.jwks_max_age,
        retire_after=settings.refresh_lifetime_bound,
        rsa_key_size=settings.rsa_key_size,
        reload_interval=settings.key_reload_interval,
        clock=clock,
    )


@dataclass
class Components:
    """Everything one issuer process uses, built once."""

    settings: Settings
    store: SqlStore
    users: UserStore
    keys: KeyStore
    tokens: TokenService
    hasher: PasswordHasher
    server: IssuerServer
    limiter: LoginLimiter
    resets: PasswordResets | None = None

    def close(self) -> None:
        """Release what the graph holds open (the database pool, the rate limit storage's
        connections): the last step of a graceful shutdown, once requests have finished."""
        self.store.close()
        self.limiter.close()


def build_components(settings: Settings, *, clock: Callable[[], float] = time.time) -> Components:
    """settings → stores → key store → token service → server: the whole graph, in order."""
    store = open_store(settings)
    users = load_user_store(settings, store)
    keys = build_key_store(settings, store)
    tokens = TokenService(
        keys,
        issuer=settings.url,
        audience=settings.audience,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
        leeway=settings.leeway,
        clock=clock,
        revocations=StoreRevocations(store),
        users=users,
    )
    hasher = PasswordHasher(settings.bcrypt_rounds)
    limiter = build_login_limiter(settings)
    server = IssuerServer(
        store=store,
        users=users,
        tokens=tokens,
        hasher=hasher,
        scopes=settings.scopes,
        default_scope=settings.default_scope,
        limiter=limiter,
        sessions=SessionPolicy(
            settings.access_token_ttl, settings.refresh_token_ttl, settings.session_max_lifetime
        ),
        refresh_retry_window=settings.refresh_retry_window,
    )
    resets = build_password_resets(settings, store, hasher, limiter, clock)
    return Components(settings, store, users, keys, tokens, hasher, server, limiter, resets=resets)


def build_password_resets(
    settings: Settings,
    store: Store,
    hasher: PasswordHasher,
    limiter: LoginLimiter,
    clock: Callable[[], float] = time.time,
) -> PasswordResets:
    """Password resets, their failures counted per address beside the login limits."""
    # The Redis storage adds "<prefix>:" itself; in memory the namespace is the whole key.
    namespace = "reset:address"
    if limiter.storage_url.startswith("memory://"):
        namespace = f"{settings.rate_limit_key_prefix}:{namespace}"
    budget = AddressBudget(
        limiter.storage,
        limiter.strategy,
        settings.password_reset_failures_per_address,
        namespace,
        storage_url=limiter.storage_url,
    )
    return PasswordResets(
        store, hasher, ttl=settings.password_reset_ttl, clock=clock, budget=budget
    )


def build_login_limiter(settings: Settings) -> LoginLimiter:
    """Failed-login limits; with memory:// each worker counts alone, hence the warning."""
    if settings.rate_limit_storage.startswith("memory://") and settings.workers > 1:
        log.warning(
            "rate_limit_storage is memory:// with %d workers: each counts failed logins "
            "alone; set rate_limit_storage to a redis:// URL to share the counts",
            settings.workers,
        )
    try:
        hash_key = hash_key_for(
            settings.rate_limit_storage,
            _shared_secret(settings),
            settings.keys_dir,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [f"rate_limit_storage: no key for hashing rate limit keys: {exc}"]
        ) from exc
    return LoginLimiter(
        LoginPolicy(
            per_user_address=settings.login_failures_per_user_address,
            per_address=settings.login_failures_per_address,
            per_user=settings.login_failures_per_user,
            known_address_days=settings.known_address_days,
        ),
        settings.rate_limit_storage,
        namespace=settings.rate_limit_key_prefix,
        hash_key=hash_key,
    )


def _shared_secret(settings: Settings) -> str | None:
    """A secret every replica already shares, to key the limiter's hashes: the HS256
    secret, else the database key store's KEK (no shared keys/ then); None: keys/."""
    if settings.secret_key is not None:
        return settings.secret_key.reveal()
    if settings.key_store == "database" and settings.key_encryption_key is not None:
        return settings.key_encryption_key.reveal()
    return None


def purge_expired_state(store: Store, now: int, leeway: int) -> tuple[int, int]:
    """Forget deny-list entries and refresh records of tokens that can no longer verify.

    Returns (access jtis removed, refresh records removed). Cutoff is ``now - leeway``:
    a token is accepted up to ``leeway`` seconds past its ``exp``.
    """
    before = now - leeway
    return store.purge_expired(before), store.purge_expired_refresh(before)
