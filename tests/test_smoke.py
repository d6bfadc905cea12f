from tests.conftest import PASSWORD, add_client, add_user


def test_password_grant_then_refresh(client, components):
    add_user(components.store)
    secret = add_client(components.store)
    r = client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=("webapp", secret),
    )
    assert r.status_code == 200, r.text
    r2 = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"]},
        auth=("webapp", secret),
    )
    assert r2.status_code == 200, r2.text


def test_live_server(live_server_factory):
    server = live_server_factory().start()
    assert "ready" in __import__("httpx").get(server.url + "/readyz").text
