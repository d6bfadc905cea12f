"""The composition root: the only place that names concrete classes and wires them.

Importing this module has no side effects; :func:`create_app` builds everything from a
:class:`Settings`, failing fast (no signing key, bad user store) with a message that
says how to fix it. ``issuer serve`` runs :func:`app_factory` in every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from issuer import tokens as tokens_module
from issuer.audit import add_listener, remove_listener
from issuer.errors import ConfigError, KeyStoreError
from issuer.http import routes
from issuer.http.addresses import parse_networks
from issuer.http.endpoints import Endpoints, metadata_bytes
from issuer.http.errors import http_exception, unexpected
from issuer.http.fastpath import PreparedDocuments, prepared_documents
from issuer.http.metrics import KeyCollector, Metrics, MetricsMiddleware, metrics_endpoint
from issuer.http.openapi import openapi_endpoint
from issuer.keystore import DirectoryKeyStore, KeyManager, KeyStore, StaticKeyStore
from issuer.logs import AccessLogMiddleware, configure_logging
from issuer.oauth.reset import PasswordResetEndpoint
from issuer.oauth.server import IssuerServer
from issuer.passwords import PasswordHasher
from issuer.ratelimit import LoginLimiter, LoginPolicy, hash_key_for
from issuer.resets import AddressBudget, PasswordResets
from issuer.sessions import SessionPolicy, session_ended
from issuer.settings import Settings, load_settings
from issuer.store.base import Store, UserStore
from issuer.store.sql import SqlStore, make_engine
from issuer.tokens import ACCESS, REFRESH, TokenService

log = logging.getLogger("issuer.app")


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


def build_key_store(settings: Settings) -> KeyStore:
    """The key source settings ask for; KeyStoreError if it has no signing key.

    A key set in ``keys_dir`` signs with its own algorithm (recorded in its manifest);
    a different ``signing_alg`` setting is followed by nobody and said once, here.
    """
    keys: KeyStore
    if settings.signing_alg == "HS256" and settings.secret_key is not None:
        keys = StaticKeyStore(settings.secret_key.reveal())
    else:
        keys = DirectoryKeyStore(
            settings.keys_dir, settings.signing_alg, settings.key_reload_interval
        )
    signing = keys.current().signing
    if signing is None:
        raise KeyStoreError(no_signing_key_message(settings))
    note = key_set_alg_note(settings, signing.alg)
    if note:
        log.warning("%s", note)
    return keys


def no_signing_key_message(settings: Settings) -> str:
    """What is wrong when nothing signs, and the command (with its algorithm) that fixes it."""
    alg = build_key_manager(settings).key_set_alg()
    hint = f"run `issuer init` or `issuer keys rotate` (nothing signs: a {alg} key signs at once)"
    if alg == "HS256":
        hint += ", or set ISSUER_SECRET_KEY / ISSUER_SECRET_KEY_FILE"
    return f"no active {alg} key in {settings.keys_dir}: {hint}"


def key_set_alg_note(settings: Settings, key_set_alg: str) -> str | None:
    """The line saying a configured ``signing_alg`` is not the key set's, which wins."""
    if key_set_alg == settings.signing_alg:
        return None
    return (
        f"the key set in {settings.keys_dir} signs with {key_set_alg}; signing_alg = "
        f"{settings.signing_alg} only applies to a new key set. To switch, run "
        f"`issuer keys rotate --alg {settings.signing_alg}` (staged: the next rotation "
        f"activates it), or set signing_alg = {key_set_alg} to silence this"
    )


def build_engine(settings: Settings) -> Engine:
    """The database engine, its pool and every wait on it bounded by the settings."""
    return make_engine(
        settings.database_url,
        settings.db_pool_size,
        connect_timeout=settings.db_connect_timeout,
        pool_timeout=settings.db_pool_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


def build_key_manager(settings: Settings, clock: Callable[[], float] = time.time) -> KeyManager:
    """The write side of ``keys/``, with the retirement horizon the token lifetimes imply."""
    return KeyManager(
        settings.keys_dir,
        settings.signing_alg,
        jwks_max_age=settings.jwks_max_age,
        retire_after=settings.refresh_lifetime_bound,
        rsa_key_size=settings.rsa_key_size,
        reload_interval=settings.key_reload_interval,
        clock=clock,
    )


def load_user_store(settings: Settings, default: UserStore) -> UserStore:
    """The user store named by ``user_store`` (``module:factory(settings)``), else ``default``."""
    if not settings.user_store:
        return default
    module_name, _, attribute = settings.user_store.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
        users = factory(settings)
    except Exception as exc:
        raise ConfigError(
            [f"user_store: cannot load {settings.user_store!r}: {exc.__class__.__name__}: {exc}"]
        ) from exc
    if not isinstance(users, UserStore):
        raise ConfigError([f"user_store: {settings.user_store!r} lacks get_by_username/get_by_id"])
    return users


@dataclass
class Components:
    """Everything one issuer process uses, built once."""

    settings: Settings
    engine: Engine
    store: SqlStore
    users: UserStore
    keys: KeyStore
    tokens: TokenService
    hasher: PasswordHasher
    server: IssuerServer
    limiter: LoginLimiter
    resets: PasswordResets | None = None


def build_components(settings: Settings, *, clock: Callable[[], float] = time.time) -> Components:
    engine = build_engine(settings)
    store = SqlStore(engine)
    users = load_user_store(settings, store)
    keys = build_key_store(settings)
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
    return Components(
        settings, engine, store, users, keys, tokens, hasher, server, limiter, resets=resets
    )


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
            settings.secret_key.reveal() if settings.secret_key is not None else None,
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


def create_app(
    settings: Settings | None = None, *, components: Components | None = None
) -> Starlette:
    """The Starlette application for ``settings`` (or prebuilt ``components``)."""
    if components is None:
        components = build_components(settings if settings is not None else load_settings())
    parts = components
    metrics = build_metrics(parts)
    endpoints = Endpoints(
        issuer_url=parts.settings.url,
        server=parts.server,
        tokens=parts.tokens,
        keys=parts.keys,
        store=parts.store,
        users=parts.users,
        discovery_bytes=metadata_bytes(parts.settings.url, parts.server),
        jwks_max_age=parts.settings.jwks_max_age,
        trusted_proxies=parse_networks(parts.settings.trusted_proxies),
        password_reset_call=PasswordResetEndpoint(parts.resets) if parts.resets else None,
        key_reload_interval=parts.settings.key_reload_interval,
        token_call=metrics.counting_tokens(parts.server.token_response),
        on_database_error=metrics.on_database_error,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        purger = None
        if parts.settings.purge_interval > 0:
            purger = asyncio.create_task(_purge_periodically(parts))
        try:
            yield
        finally:
            if purger is not None:
                purger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purger
            release_connections(parts)
            remove_listener(metrics.on_audit)

    # An issuer URL with a path (https://host/tenant) serves every endpoint under it.
    base = urlsplit(parts.settings.url).path
    served = [
        Route(base + routes.TOKEN, endpoints.token, methods=["POST"]),
        Route(base + routes.REVOKE, endpoints.revoke, methods=["POST"]),
        Route(base + routes.INTROSPECT, endpoints.introspect, methods=["POST"]),
        Route(base + routes.USERINFO, endpoints.userinfo, methods=["GET", "POST"]),
        Route(base + routes.PASSWORD_RESET, endpoints.password_reset, methods=["POST"]),
        Route(base + routes.JWKS, endpoints.jwks, methods=["GET"]),
        *(
            Route(path, endpoints.discovery, methods=["GET"])
            for path in routes.metadata_paths(base)
        ),
        Route(base + routes.HEALTHZ, endpoints.healthz, methods=["GET"]),
        Route(base + routes.READYZ, endpoints.readyz, methods=["GET"]),
        Route(
            base + routes.METRICS,
            metrics_endpoint(
                metrics,
                parse_networks(parts.settings.metrics_networks),
                parse_networks(parts.settings.trusted_proxies),
            ),
            methods=["GET"],
        ),
        Route(base + routes.OPENAPI, openapi_endpoint(base), methods=["GET"]),
    ]
    metrics.label_endpoints(route.path for route in served)
    app = Starlette(
        routes=served,
        middleware=[
            Middleware(AccessLogMiddleware),
            # Latency of every endpoint, the prepared documents included.
            Middleware(MetricsMiddleware, metrics=metrics),
            # Inside the access log and the metrics, in front of routing: the prepared documents.
            Middleware(PreparedDocuments, documents=prepared_documents(base, endpoints)),
        ],
        exception_handlers={HTTPException: http_exception, Exception: unexpected},
        lifespan=lifespan,
    )
    app.state.components = parts
    # The app holds its own token service: issuer.dependencies reads it from the request's
    # app, so two apps in one process never see each other's keys or stores.
    app.state.tokens = parts.tokens
    return app


def build_metrics(parts: Components) -> Metrics:
    """The app's metrics, fed by audit events and the key store (``issuer.http.metrics``)."""
    if isinstance(parts.keys, DirectoryKeyStore):
        manager = build_key_manager(parts.settings)
        metrics = Metrics([KeyCollector(parts.keys, manager.records, manager.lead_time)])
        parts.keys.on_reload = metrics.on_key_reload
    else:  # an operator's HS256 secret: no manifest, no rotation
        metrics = Metrics([KeyCollector(parts.keys, None, None)])
    add_listener(metrics.on_audit)
    return metrics


def release_connections(parts: Components) -> None:
    """The last step of a graceful shutdown (requests in progress have finished, see
    ``shutdown_timeout``): close the database pool and the Redis connections."""
    parts.engine.dispose()
    parts.limiter.close()


def purge_expired_state(store: Store, now: int, leeway: int) -> tuple[int, int]:
    """Forget deny-list entries and refresh records of tokens that can no longer verify.

    Returns (access jtis removed, refresh records removed). Cutoff is ``now - leeway``:
    a token is accepted up to ``leeway`` seconds past its ``exp``.
    """
    before = now - leeway
    return store.purge_expired(before), store.purge_expired_refresh(before)


async def _purge_periodically(parts: Components) -> None:
    """Keep the revocation tables bounded; every worker may run it, which is harmless."""
    while True:
        await asyncio.sleep(parts.settings.purge_interval)
        try:
            denied, refresh = await run_in_threadpool(
                purge_expired_state, parts.store, parts.tokens.now(), parts.settings.leeway
            )
        except Exception:
            log.exception("purging expired token state failed; will retry")
            continue
        if denied or refresh:
            log.info("purged %d denied access tokens, %d refresh records", denied, refresh)


def app_factory() -> Starlette:
    """Entry point for uvicorn workers (``issuer serve``): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # One app per worker process: the seed's module-level functions (issuer.tokens.
    # create_access_token, verify_token...) use its service. A documented shim, nothing more.
    tokens_module.configure(app.state.tokens)
    return app
