"""The web application: routes, middleware and lifespan around the composed issuer.

The object graph itself is built by :mod:`issuer.compose`. Importing this module has no
side effects; :func:`create_app` builds everything from a :class:`Settings`, failing fast
(no signing key, bad user store) with a message that says how to fix it. ``issuer
serve`` runs :func:`app_factory` in every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from issuer import tokens as tokens_module
from issuer.audit import add_listener, remove_listener
from issuer.compose import Components, build_components, build_key_manager, purge_expired_state
from issuer.http import routes
from issuer.http.access import AccessLogMiddleware
from issuer.http.addresses import parse_networks
from issuer.http.endpoints import Endpoints, metadata_bytes
from issuer.http.errors import http_exception, unexpected
from issuer.http.fastpath import (
    PreparedDocuments,
    PreparedEdge,
    fresh_documents,
    prepared_documents,
)
from issuer.http.metrics import KeyCollector, Metrics, MetricsMiddleware, metrics_endpoint
from issuer.http.openapi import openapi_endpoint
from issuer.keystore import DirectoryKeyStore
from issuer.logs import configure_logging
from issuer.oauth.reset import PasswordResetEndpoint
from issuer.settings import Settings, load_settings

log = logging.getLogger("issuer.app")


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
            parts.close()
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
    # The same documents, for issuer.http.protocol to answer before any ASGI work.
    app.state.edge = PreparedEdge(fresh_documents(base, endpoints), metrics.observe)
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
