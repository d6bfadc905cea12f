"""Graceful shutdown (issue 9): SIGTERM during a stream of refreshes loses no session.

Each client thread keeps its own refresh chain going on a fresh connection per request.
After SIGTERM the server stops accepting and finishes the requests in progress. A
connection still waiting in the listen backlog is reset unread (the client sees a reset
and retries; nothing happened). A rotation committed but never answered would show
here: with no retry window the chain's last token would be a reuse, invalid_grant and
the session ended. After a restart every chain's last refresh token must continue.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.test_e2e_rotation import App

pytestmark = pytest.mark.e2e

CHAINS = 6


def refresh(server, secret: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as http:  # one connection each
        return http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=("webapp", secret),
        )


def test_sigterm_during_a_stream_of_refreshes_loses_no_session(live_server_factory):
    server = live_server_factory(workers=2, shutdown_timeout=20, refresh_retry_window=0).start()
    app = App(server)
    latest = [app.tokens()["refresh_token"] for _ in range(CHAINS)]
    answered = [0] * CHAINS
    unanswered: list[str] = []  # reset unread, or an answer lost (the final check tells)
    statuses: set[int] = set()

    def keep_refreshing(chain: int) -> None:
        while True:
            try:
                response = refresh(server, app.secret, latest[chain])
            except httpx.ConnectError:
                break  # the server no longer accepts: nothing was sent
            except httpx.HTTPError as exc:
                unanswered.append(f"chain {chain}: {exc.__class__.__name__}")
                break
            statuses.add(response.status_code)
            if response.status_code != 200:
                break
            latest[chain] = response.json()["refresh_token"]
            answered[chain] += 1

    threads = [threading.Thread(target=keep_refreshing, args=(i,)) for i in range(CHAINS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while min(answered) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # until every chain has refreshed a few times: the stream flows
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=120)
    assert server.process.wait(timeout=60) == 0

    assert statuses <= {200}, statuses  # a request it accepted was answered, not 5xx
    assert all(n >= 5 for n in answered), answered

    server.start()
    outcomes = []
    for token in latest:
        response = refresh(server, app.secret, token)
        outcomes.append(response.status_code)
        if response.status_code != 200:
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "invalid_grant"
    assert outcomes.count(200) == CHAINS, (outcomes, unanswered)  # every session continues
