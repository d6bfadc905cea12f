"""Bounded HTTP/1.1: uvicorn's httptools protocol with the limits uvicorn does not enforce.

With httptools (the fast parser ``uvicorn[standard]`` picks) uvicorn bounds neither the
size of a request head nor the time a client takes to send it: a 32 MB header got a
200, and partial heads and bodies were held open for minutes. h11 does bound the head
(``h11_max_incomplete_event_size``) but parses in pure Python; so the issuer keeps
httptools and adds, per connection:

- **head size**: the request line and headers may take ``max_head_bytes``. httptools
  buffers a header it is still reading, so the bytes fed while the head is incomplete
  are counted and the connection refused (431, closed) before more are fed: at most the
  limit plus one read (≤ 256 KiB) is ever held.
- **header count**: more than ``max_headers`` headers is 431, closed.
- **request time**: once its first byte arrives, a request's head and body must arrive
  within ``request_timeout`` seconds; else 408 (head not complete: no application has
  seen the request) or the connection is closed (the application sees a disconnect).
- **idle time**: a connection that sends nothing, new or after a response, is closed
  after ``timeout_keep_alive`` (uvicorn arms that timer only after a response).

Concurrency is uvicorn's ``limit_concurrency``: past it, requests get 503.

It also answers the prepared public documents (JWKS, discovery, ``/healthz``) as soon as
their request head is parsed, when the app offers an edge (``app.state.edge``, an
:class:`issuer.http.fastpath.PreparedEdge`): the bytes are ready, so the ASGI task,
scope and middleware would cost more than the answer. Only a plain request takes that
way: GET or HEAD, an exact path without percent-escapes, no upgrade, no earlier
response still pending on the connection (pipelining keeps its order), under the
concurrency limit, and a document that needs no key set check; all else goes to the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_MAX_HEAD_BYTES = 16 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_REQUEST_TIMEOUT = 10.0
PROTOCOL = "issuer.http.protocol:BoundedHttpToolsProtocol"
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


class Edge(Protocol):
    """What the protocol asks of an app's edge (:class:`issuer.http.fastpath.PreparedEdge`)."""

    def answer(
        self, method: str, path: str, if_none_match: str | None
    ) -> tuple[int, bytes, bytes] | None: ...

    def answered(
        self, address: str, method: str, path: str, status: int, started: float
    ) -> None: ...


def app_edge(app: Any) -> Edge | None:
    """The edge ``app`` offers as ``app.state.edge`` (a Starlette app), else None."""
    return getattr(getattr(app, "state", None), "edge", None)


class ServerConfig(uvicorn.Config):
    """uvicorn's Config plus the two limits it has no field for (picklable for workers)."""

    def __init__(
        self,
        app: Any,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_headers: int = DEFAULT_MAX_HEADERS,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.request_timeout = request_timeout
        self.max_headers = max_headers


class _TooManyHeadersError(Exception):
    """Raised in a parser callback; httptools turns it into an HttpParserError."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring: head size and count, request and idle time bounded."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        self.max_headers: int = getattr(config, "max_headers", DEFAULT_MAX_HEADERS)
        self.request_timeout: float = getattr(config, "request_timeout", DEFAULT_REQUEST_TIMEOUT)
        self._in_head = False
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: int | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        # uvicorn's own access lines or a root path would differ from the app's: no edge.
        uvicorn_logs = self.access_log and self.access_logger.isEnabledFor(logging.INFO)
        self._edge = None if uvicorn_logs or self.root_path else app_edge(self.app)
        self._answered = False  # the current request was answered at the edge

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(431)
            return
        super().data_received(data)
        if self._in_head:
            self._head_bytes += len(data)

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._answered = False
        self._head_bytes = 0
        self._header_count = 0
        self._cancel_request_timer()
        self._request_timer = self.loop.call_later(self.request_timeout, self._request_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refusal = 431
            raise _TooManyHeadersError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._edge is not None and self._answer_at_edge(self._edge):
            self._answered = True
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._answered:  # an answered GET's body is dropped, as the app would
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_request_timer()
        if not self._answered:
            super().on_message_complete()

    # -- the edge ---------------------------------------------------------------------

    def _answer_at_edge(self, edge: Edge) -> bool:
        """Answer a prepared document now (see the module docstring); False: not here."""
        started = time.perf_counter()
        request = self._plain_request()
        if request is None:
            return False
        verb, path, if_none_match = request
        try:
            answer = edge.answer(verb, path, if_none_match)
        except Exception:  # the app's own path answers (and logs) whatever went wrong
            return False
        if answer is None:
            return False
        status, header_lines, body = answer
        parser = self.parser
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        content.append(header_lines)
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        if verb == "GET":
            content.append(body)
        self.transport.write(b"".join(content))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # counts it; arms the keep-alive timer
        client = self.client
        edge.answered(client[0] if client else "-", verb, path, status, started)
        return True

    def _plain_request(self) -> tuple[str, str, str | None] | None:
        """(method, path, If-None-Match) of a request the edge may answer, else None."""
        parser = self.parser
        method = parser.get_method()
        if method not in (b"GET", b"HEAD"):
            return None
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return None  # an earlier response is still due on this connection
        if parser.should_upgrade() or self._over_concurrency_limit():
            return None
        raw_path = httptools.parse_url(self.url).path
        if b"%" in raw_path or not raw_path.isascii():
            return None
        if_none_match = None
        for name, value in self.headers:
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
                break
        return method.decode("ascii"), raw_path.decode("ascii"), if_none_match

    def _over_concurrency_limit(self) -> bool:
        """uvicorn's ``limit_concurrency`` test: past it, the app path answers 503."""
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    # -- refusals ---------------------------------------------------------------------

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408)
        else:
            self.transport.close()

    def _refuse(self, status: int) -> None:
        """Answer ``status`` in plain text and close: the request is never parsed further."""
        if self.transport.is_closing():
            return
        reason = _REASONS[status]
        body = reason.encode("ascii")
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\n".encode("ascii")
            + b"content-type: text/plain; charset=utf-8\r\n"
            + f"content-length: {len(body)}\r\n".encode("ascii")
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
