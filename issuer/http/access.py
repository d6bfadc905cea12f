"""The access log: one line per request, written by us rather than uvicorn.

The path without its query string: a client that wrongly puts credentials in a query
string must not get them logged. Lines go through :mod:`issuer.logs`' formatters, which
escape control characters.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("issuer.access")


class AccessLogMiddleware:
    """Logs method, path (never the query string), status and duration of each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            access_log.info(
                '%s "%s %s" %d %.1fms',
                scope.get("client", ("-",))[0] if scope.get("client") else "-",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
            )
