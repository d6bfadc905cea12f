"""The prepared public documents (JWKS, discovery, ``/healthz``) answered in front of routing.

Two layers answer them, with the same bytes:

- :class:`PreparedEdge`, asked by the HTTP protocol (:mod:`issuer.http.protocol`) as soon
  as a request head is parsed, answers on the spot when the document is fresh: no ASGI
  task, scope, middleware or response objects (a JWKS request cost ~61 µs of server CPU
  through the ASGI stack below, where a bare ASGI app on the same uvicorn costs ~25 µs).
  It writes the same access line and latency metric as the middleware would.
- :class:`PreparedDocuments`, the ASGI middleware, answers whatever the edge leaves: a
  document whose key set check is due (it may need a thread), and every request when
  the app runs without the issuer's protocol (tests' ``TestClient``, another server).

They are bytes computed in advance (see :mod:`issuer.http.published`), yet each request
still paid for Starlette's exception middleware, router, ``Request`` and ``Response``
objects: ~70 µs of a ~145 µs JWKS request, where a bare ASGI app on the same uvicorn
needs ~33 µs (``make bench``). This layer sits inside the access log and in front of
the rest: a GET or HEAD for one of their exact paths is answered from the prepared status
line and headers; everything else goes on unchanged. The answers are byte-for-byte those
of the routes, which stay in the route table for every other caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from issuer.http import routes
from issuer.http.access import access_log, log_access
from issuer.http.endpoints import Endpoints
from issuer.http.published import Document

DocumentSource = Callable[[], Awaitable[Document]]
# The document now, or None when it needs a check that may block (the ASGI path does it).
FreshDocument = Callable[[], Document | None]
# (status, the response's own header lines, body) for the protocol to frame and send.
EdgeAnswer = tuple[int, bytes, bytes]


def prepared_documents(base: str, endpoints: Endpoints) -> dict[str, DocumentSource]:
    """Every path of a prepared document, for an issuer whose URL has path ``base``."""
    documents: dict[str, DocumentSource] = {
        base + routes.JWKS: endpoints.jwks_document,
        base + routes.HEALTHZ: endpoints.healthz_document,
    }
    for path in routes.metadata_paths(base):
        documents[path] = endpoints.discovery_document
    return documents


def fresh_documents(base: str, endpoints: Endpoints) -> dict[str, FreshDocument]:
    """The same paths as :func:`prepared_documents`, with sources that never wait."""
    documents: dict[str, FreshDocument] = {
        base + routes.JWKS: endpoints.jwks_now,
        base + routes.HEALTHZ: endpoints.healthz_now,
    }
    for path in routes.metadata_paths(base):
        documents[path] = endpoints.discovery_now
    return documents


class PreparedEdge:
    """The prepared documents for the HTTP protocol, answered before any ASGI work.

    The protocol asks :meth:`answer` with a request's method, path (decoded, without the
    query string) and ``If-None-Match``; a None answer sends the request down the ASGI
    path unchanged. After writing an answer it calls :meth:`answered`, which writes the
    access line and observes the latency, as ``AccessLogMiddleware`` and
    ``MetricsMiddleware`` would have.
    """

    def __init__(
        self,
        documents: Mapping[str, FreshDocument],
        observe: Callable[[str, float], None],
    ) -> None:
        self.documents = dict(documents)
        self.observe = observe

    def answer(self, method: str, path: str, if_none_match: str | None) -> EdgeAnswer | None:
        source = self.documents.get(path)
        if source is None or method not in ("GET", "HEAD"):
            return None
        document = source()
        if document is None:
            return None
        return document.framed(if_none_match)

    def answered(self, address: str, method: str, path: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.observe(path, seconds)
        if access_log.isEnabledFor(logging.INFO):
            log_access(address, method, path, status, seconds)


class PreparedDocuments:
    """ASGI middleware: ``documents`` maps an exact path to the source of its document."""

    def __init__(self, app: ASGIApp, documents: Mapping[str, DocumentSource]) -> None:
        self.app = app
        self.documents = dict(documents)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = self.documents.get(scope["path"]) if scope["type"] == "http" else None
        if source is None or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        document = await source()
        status, headers, body = document.answer(_if_none_match(scope))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _if_none_match(scope: Scope) -> str | None:
    """The first ``If-None-Match`` header, as Starlette's ``request.headers.get`` reads it."""
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return str(value.decode("latin-1"))
    return None
