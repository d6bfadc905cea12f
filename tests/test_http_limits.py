"""Bounded HTTP against a live ``issuer serve``: head size and count, slow and idle clients,
concurrency, and memory.

Why: a 32 MB request header got a 200; ten connections holding 10 MB of unfinished
headers raised the server from 102 to 188 MB; partial heads and bodies were held open
for 75 s and more. Everything here is bounded in time (the whole file runs in ~30 s).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, server_env

pytestmark = pytest.mark.e2e

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module (starting one costs seconds), with short time limits so
    that attacks end within the test's budget."""
    workdir = tmp_path_factory.mktemp("bounded-http")
    live = LiveServer(
        workdir,
        server_env(
            workdir, http_request_timeout=2, http_keep_alive_timeout=1, http_limit_concurrency=100
        ),
    )
    live.cli("init")
    live.start()
    try:
        yield live
    finally:
        live.stop()


def address(server: LiveServer) -> tuple[str, int]:
    return "127.0.0.1", int(server.url.rsplit(":", 1)[1])


def rss_mb(server: LiveServer) -> float:
    """Resident memory of the server process (one worker: uvicorn serves in-process)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(address(server), timeout=5)
    return sock


def send_and_read(server: LiveServer, data: bytes) -> bytes:
    """Send ``data`` (the server may hang up midway), then read until it closes."""
    with connect(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def healthz_ms(server: LiveServer) -> float:
    """Milliseconds for a fresh connection to get /healthz answered, as a prober would."""
    started = time.perf_counter()
    response = send_and_read(server, HEALTHZ)
    elapsed = (time.perf_counter() - started) * 1000
    assert status_of(response) == 200, response[:80]
    return elapsed


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def test_a_1_mb_header_is_refused_and_memory_stays_bounded(server):
    baseline = rss_mb(server)
    huge = HEALTHZ[:-2] + b"X-Big: " + b"a" * MB + b"\r\n\r\n"
    results: list[bytes] = []

    def attack() -> None:
        results.append(send_and_read(server, huge))

    threads = [threading.Thread(target=attack) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(results) == 10
    for response in results:
        # 431 and a closed connection, or a reset because the server closed while the
        # client was still sending: never an answer to the request.
        assert status_of(response) in (431, None), response[:80]
        assert b"200 OK" not in response
    assert any(status_of(r) == 431 for r in results)
    assert rss_mb(server) - baseline < 20, (baseline, rss_mb(server))
    assert healthz_ms(server) < 1000


def test_a_head_just_under_the_limit_is_served(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 15000 + b"\r\n\r\n"
    assert status_of(send_and_read(server, head[:-2] + b"Connection: close\r\n\r\n")) == 200


def test_200_headers_are_refused_with_431(server):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    response = send_and_read(server, HEALTHZ[:-2] + headers + b"\r\n")
    assert status_of(response) == 431, response[:80]
    ninety = b"".join(b"X-H%d: v\r\n" % i for i in range(90))
    fine = send_and_read(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + ninety + b"\r\n"
    )
    assert status_of(fine) == 200


def test_a_slowloris_of_50_connections_is_cut_off_while_healthz_stays_fast(server):
    baseline = rss_mb(server)
    attackers = [connect(server) for _ in range(50)]
    for sock in attackers:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    latencies: list[float] = []
    deadline = time.monotonic() + 4  # twice the request timeout
    while time.monotonic() < deadline:
        for sock in attackers:  # one more header byte each, forever (until cut off)
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
        latencies.append(healthz_ms(server))
        time.sleep(0.05)
    # Every slow client got 408 and a closed connection, within the request timeout.
    answers = []
    for sock in attackers:
        sock.settimeout(3)
        answers.append(status_of(read_until_closed(sock)))
        sock.close()
    assert answers.count(408) >= 45, answers
    assert set(answers) <= {408, None}
    assert len(latencies) >= 20
    assert statistics.quantiles(latencies, n=10)[-1] < 100, latencies
    assert rss_mb(server) - baseline < 20


def test_a_slow_second_request_on_a_kept_alive_connection_gets_408(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        assert status_of(first) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and then nothing
        sock.settimeout(6)
        assert status_of(read_until_closed(sock)) == 408


def test_an_unfinished_body_is_cut_off(server):
    with connect(server) as sock:
        sock.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"grant_type=pass"
        )
        sock.settimeout(6)
        started = time.monotonic()
        response = read_until_closed(sock)
        assert time.monotonic() - started < 5
    # The application saw a disconnect mid-body: no answer, and no server error logged.
    assert status_of(response) in (None, 400)
    assert "Traceback" not in server.log()


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server):
    with connect(server) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # sent nothing, got nothing: closed
        assert time.monotonic() - started < 4


def test_past_the_concurrency_limit_requests_get_503(live_server_factory):
    server = live_server_factory(http_limit_concurrency=5, http_keep_alive_timeout=10).start()
    idle = [connect(server) for _ in range(5)]
    try:
        time.sleep(0.2)  # let the server register them
        response = send_and_read(server, HEALTHZ)
        assert status_of(response) == 503, response[:80]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert healthz_ms(server) < 1000
