"""The prepared public documents (JWKS, discovery, ``/healthz``) answered in front of routing.

They are bytes computed in advance (see :mod:`issuer.http.published`), yet each request
still paid for Starlette's exception middleware, router, ``Request`` and ``Response``
objects: ~70 µs of a ~145 µs JWKS request, where a bare ASGI app on the same uvicorn
needs ~33 µs (``make bench``). This layer sits inside the access log and in front of
the rest: a GET or HEAD for one of their exact paths is answered from the prepared status
line and headers; everything else goes on unchanged. The answers are byte-for-byte those
of the routes, which stay in the route table for every other caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from issuer.http import routes
from issuer.http.endpoints import Endpoints
from issuer.http.published import Document

DocumentSource = Callable[[], Awaitable[Document]]


def prepared_documents(base: str, endpoints: Endpoints) -> dict[str, DocumentSource]:
    """Every path of a prepared document, for an issuer whose URL has path ``base``."""
    documents: dict[str, DocumentSource] = {
        base + routes.JWKS: endpoints.jwks_document,
        base + routes.HEALTHZ: endpoints.healthz_document,
    }
    for path in routes.metadata_paths(base):
        documents[path] = endpoints.discovery_document
    return documents


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
