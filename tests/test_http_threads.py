"""Requests that wait for bcrypt run on their own threads (``BCRYPT_WAITER_THREADS``).

Why: bcrypt runs one check per core, so during a login storm every password login holds
its thread for seconds while it waits its turn. In the thread pool every other blocking
call shares (anyio's 40 threads), 40 waiting logins left refresh, introspection and the
readiness check with no thread at all. Here the shared pool is cut to one thread and a
login is held "in bcrypt": other requests must still be answered meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread
import pytest
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import Components
from issuer.http.endpoints import Endpoints
from issuer.http.routes import JWKS
from issuer.oauth.requests import HttpRequest, OAuthResponse
from tests.conftest import login

WAIT_S = 10


@pytest.fixture
def client(components: Components) -> Iterator[TestClient]:
    app = create_app(components=components)
    with TestClient(app, base_url=components.settings.url) as test_client:

        async def one_shared_thread() -> None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = 1

        assert test_client.portal is not None
        test_client.portal.call(one_shared_thread)
        yield test_client


def endpoints_of(client: TestClient) -> Endpoints:
    source: Any = client.app.state.edge.documents[JWKS]  # type: ignore[attr-defined]
    endpoints: Endpoints = source.__self__
    return endpoints


def hold_logins(endpoints: Endpoints) -> tuple[threading.Event, threading.Event]:
    """Make password logins block (as if queued for bcrypt): (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    call = endpoints.token_call
    assert call is not None

    def held(request: HttpRequest) -> OAuthResponse:
        if ("grant_type", "password") in request.form:
            entered.set()
            assert release.wait(WAIT_S)
        return call(request)

    endpoints.token_call = held
    return entered, release


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    return thread, result


def test_a_login_waiting_for_bcrypt_leaves_the_shared_threads_free(client, alice, basic) -> None:
    entered, release = hold_logins(endpoints_of(client))
    login_thread, login_result = in_thread(lambda: login(client, basic))
    try:
        assert entered.wait(WAIT_S)
        # The one shared thread is free: readiness (a thread hop) and a refresh answer.
        ready_thread, ready = in_thread(lambda: client.get("/readyz"))
        ready_thread.join(WAIT_S)
        assert ready and ready[0].status_code == 200
        refresh_thread, refresh = in_thread(
            lambda: client.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": "not-a-token"},
                auth=basic,
            )
        )
        refresh_thread.join(WAIT_S)
        assert refresh and refresh[0].status_code == 400
        assert refresh[0].json()["error"] == "invalid_grant"
        assert login_thread.is_alive()  # the login is still waiting
    finally:
        release.set()
    login_thread.join(WAIT_S)
    assert login_result and login_result[0].status_code == 200
    assert "refresh_token" in login_result[0].json()


def test_logins_beyond_the_shared_pool_all_complete(client, alice, basic) -> None:
    """Three held logins with a shared pool of one: each has a thread of its own."""
    entered, release = hold_logins(endpoints_of(client))
    threads = [in_thread(lambda: login(client, basic)) for _ in range(3)]
    try:
        assert entered.wait(WAIT_S)
    finally:
        release.set()
    for thread, _ in threads:
        thread.join(WAIT_S)
    assert [result[0].status_code for _, result in threads] == [200, 200, 200]
