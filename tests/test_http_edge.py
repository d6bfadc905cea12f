"""The prepared documents answered by the HTTP protocol itself (``PreparedEdge``).

The edge must send, byte for byte, what the ASGI path sends (status line, uvicorn's
default headers, the document's headers, ``connection: close`` when the connection
ends, the body unless HEAD), write the same access line and observe the same latency
metric; and it must leave to the app what the app must answer: other methods and paths,
escaped paths, a document whose key set check is due, a request pipelined behind one
still in progress, and requests past the concurrency limit (503).

The protocol runs in-process over a fake transport, with a real app on a real database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from uvicorn.server import ServerState

from issuer.app import create_app
from issuer.compose import Components
from issuer.http.fastpath import PreparedEdge
from issuer.http.protocol import BoundedHttpToolsProtocol, ServerConfig
from issuer.http.routes import HEALTHZ, JWKS, OAUTH_METADATA, OIDC_METADATA, TOKEN

DATE = (b"date", b"Wed, 02 Dec 2026 00:00:00 GMT")


class FakeTransport(asyncio.Transport):
    """Collects what the protocol writes; closing is recorded, never real."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.9", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Harness:
    """One app; each :meth:`exchange` opens a connection, sends bytes, collects the answer."""

    def __init__(self, app: Starlette, **config: Any) -> None:
        self.app = app
        self.config = ServerConfig(
            app,
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            lifespan="off",
            **config,
        )
        self.config.load()
        self.state = ServerState()
        self.state.default_headers = [DATE]
        self.loop = asyncio.new_event_loop()
        self.edge_answers = 0
        edge: PreparedEdge = app.state.edge
        answer = edge.answer

        def counting(*args: Any) -> Any:
            result = answer(*args)
            self.edge_answers += result is not None
            return result

        edge.answer = counting  # type: ignore[method-assign]

    def exchange(self, data: bytes, *, edge: bool = True, responses: int = 1) -> bytes:
        """Feed ``data`` on a new connection; wait for ``responses`` answers or a close."""
        protocol = BoundedHttpToolsProtocol(self.config, self.state, {}, _loop=self.loop)
        if not edge:
            protocol._edge = None
        transport = FakeTransport()
        done = self.state.total_requests + responses
        protocol.connection_made(transport)
        protocol.data_received(data)

        async def settle() -> None:
            for _ in range(500):
                if transport.closed or self.state.total_requests >= done:
                    return
                await asyncio.sleep(0.01)

        self.loop.run_until_complete(settle())
        protocol.connection_lost(None)
        return bytes(transport.written)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def harness(components: Components) -> Iterator[Harness]:
    app = create_app(components=components)
    h = Harness(app)
    # Freeze the JWKS publisher's clock: once checked, the documents stay fresh.
    endpoints = app.state.edge.documents[JWKS].__self__
    endpoints._jwks._clock = lambda: 1000.0
    h.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", edge=False)
    h.exchange(b"GET " + JWKS.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", edge=False)
    h.edge_answers = 0
    yield h
    h.close()


def request(path: str, method: str = "GET", *lines: str, version: str = "1.1") -> bytes:
    head = [f"{method} {path} HTTP/{version}", "Host: x", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


@pytest.mark.parametrize("path", [JWKS, OIDC_METADATA, OAUTH_METADATA, HEALTHZ])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "extra",
    [(), ("Connection: close",), ("If-None-Match: *",), ('If-None-Match: "no"',)],
    ids=["keep-alive", "close", "inm-match", "inm-other"],
)
def test_the_edge_sends_the_bytes_the_app_sends(harness, path, method, extra) -> None:
    data = request(path, method, *extra)
    at_edge = harness.exchange(data)
    assert harness.edge_answers == 1
    through_app = harness.exchange(data, edge=False)
    assert harness.edge_answers == 1
    assert at_edge == through_app
    assert at_edge.startswith(b"HTTP/1.1 ")
    assert b"\r\ndate: " + DATE[1] + b"\r\n" in at_edge
    assert (b"\r\nconnection: close\r\n" in at_edge) == ("Connection: close" in extra)
    if method == "HEAD":
        assert at_edge.endswith(b"\r\n\r\n")


def test_http_1_0_gets_connection_close_and_the_connection_ends(harness) -> None:
    data = request(JWKS, version="1.0")
    at_edge = harness.exchange(data)
    assert harness.edge_answers == 1
    assert at_edge == harness.exchange(data, edge=False)
    assert b"\r\nconnection: close\r\n" in at_edge


def test_a_matching_etag_gets_304_without_a_body(harness) -> None:
    first = harness.exchange(request(JWKS))
    etag = next(
        line.split(b": ", 1)[1] for line in first.split(b"\r\n") if line.startswith(b"etag:")
    )
    answer = harness.exchange(request(JWKS, "GET", "If-None-Match: " + etag.decode()))
    assert answer.startswith(b"HTTP/1.1 304 ")
    assert answer.endswith(b"\r\n\r\n")
    assert harness.edge_answers == 2


def test_keep_alive_serves_the_next_request_on_the_same_connection(harness) -> None:
    data = request(JWKS) + request(HEALTHZ)
    answer = harness.exchange(data, responses=2)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.endswith(b'{"status":"ok"}')
    assert harness.edge_answers == 2


def test_a_request_behind_one_in_progress_waits_its_turn(harness) -> None:
    """Pipelining: the JWKS request must not overtake a token request still running."""
    body = b"grant_type=password&username=a&password=b"
    token = (
        f"POST {TOKEN} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    answer = harness.exchange(token + request(JWKS), responses=2)
    first, second = answer.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"400 ") and b"invalid_client" in first
    assert second.startswith(b"200 ") and b'"keys"' in second
    assert harness.edge_answers == 0


@pytest.mark.parametrize(
    "data",
    [
        request(JWKS, "POST", "Content-Length: 0"),
        request(JWKS + "/"),
        request("/jw%6bs"),  # escaped: the app decodes and routes it
        request(TOKEN),
        request("/nowhere"),
    ],
)
def test_what_is_not_a_plain_document_request_goes_to_the_app(harness, data) -> None:
    assert harness.exchange(data) == harness.exchange(data, edge=False)
    assert harness.edge_answers == 0


def test_a_due_key_set_check_goes_to_the_app_which_makes_the_document_fresh(
    harness,
) -> None:
    endpoints = harness.app.state.edge.documents[JWKS].__self__
    endpoints._jwks._clock = lambda: 2000.0  # the last check was 1000 s ago
    assert harness.exchange(request(JWKS)).startswith(b"HTTP/1.1 200 ")
    assert harness.edge_answers == 0
    assert harness.exchange(request(OIDC_METADATA)).startswith(b"HTTP/1.1 200 ")
    assert harness.edge_answers == 1  # the app's answer checked the key set


def test_the_edge_writes_the_access_line_and_observes_latency(harness, caplog) -> None:
    def latency_count(path: str) -> float:
        text = generate_latest(registry(harness)).decode()
        prefix = f'issuer_http_request_duration_seconds_count{{endpoint="{path}"}} '
        return float(
            next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :]
        )

    before = latency_count(JWKS)
    with caplog.at_level(logging.INFO, logger="issuer.access"):
        harness.exchange(request(JWKS + "?client_secret=hunter2", "HEAD"))
    assert harness.edge_answers == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "issuer.access"]
    assert len(lines) == 1
    assert lines[0].startswith(f'127.0.0.9 "HEAD {JWKS}" 200 ')
    assert "hunter2" not in lines[0]
    assert latency_count(JWKS) == before + 1


def registry(harness: Harness) -> Any:
    edge: PreparedEdge = harness.app.state.edge
    observe: Callable[..., None] = edge.observe
    return observe.__self__.registry  # type: ignore[attr-defined]


def test_past_the_concurrency_limit_the_app_answers_503(components) -> None:
    app = create_app(components=components)
    h = Harness(app, limit_concurrency=1)
    try:
        endpoints = app.state.edge.documents[JWKS].__self__
        endpoints._jwks._clock = lambda: 1000.0
        answer = h.exchange(request(HEALTHZ))  # this very connection reaches the limit
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert h.edge_answers == 0
    finally:
        h.close()
