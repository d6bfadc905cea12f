"""The protocol core without HTTP: ``HttpRequest`` in, ``OAuthResponse`` out.

Most tests run the server over the in-memory reference store with an injected clock
(expiry without sleeping); a few run the components the app builds over SQLite, where
concurrent refreshes really race in threads.
"""

from __future__ import annotations

import base64
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from issuer.compose import StoreRevocations, build_components
from issuer.keystore import StaticKeyStore
from issuer.models import AuthMethod
from issuer.oauth.requests import HttpRequest, OAuthResponse
from issuer.oauth.server import IssuerServer
from issuer.passwords import PasswordHasher
from issuer.store import migrate
from issuer.store.memory import MemoryStore
from issuer.store.sql import make_engine
from issuer.tokens import TokenService
from tests.conftest import PASSWORD, TEST_ROUNDS, add_client, add_user
from tests.conftest import login as password_grant

ISSUER = "https://issuer.example"
FORM = "application/x-www-form-urlencoded"
START = 1_700_000_000


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def basic_header(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def request(
    path: str,
    form: dict[str, str] | list[tuple[str, str]],
    *,
    headers: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = FORM,
    method: str = "POST",
    client_ip: str = "192.0.2.1",
) -> HttpRequest:
    pairs = list(form.items()) if isinstance(form, dict) else list(form)
    return HttpRequest(
        method=method,
        url=ISSUER + path,
        headers=headers or {},
        form=pairs,
        query=query or [],
        content_type=content_type,
        client_ip=client_ip,
    )


class Core:
    """A server over a MemoryStore, with its clock, a Basic client and a login-failure log."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.failures: list[tuple[str, str]] = []
        self.tokens = TokenService(
            StaticKeyStore(secrets.token_urlsafe(48)),
            issuer=ISSUER,
            audience="api",
            access_ttl=600,
            refresh_ttl=3600,
            leeway=5,
            clock=self.clock,
            revocations=StoreRevocations(self.store),
            users=self.store,
        )
        self.server = IssuerServer(
            store=self.store,
            users=self.store,
            tokens=self.tokens,
            hasher=PasswordHasher(TEST_ROUNDS),
            scopes=("openid", "profile", "read", "write"),
            default_scope="openid profile",
            login_failure_hook=lambda req, username: self.failures.append(
                (req.client_ip, username)
            ),
        )
        self.user = add_user(self.store, "alice")
        self.secret = add_client(self.store, "webapp")
        self.auth = basic_header("webapp", self.secret)

    def token(self, form: dict[str, str], **kwargs) -> OAuthResponse:
        kwargs.setdefault("headers", self.auth)
        return self.server.token_response(request("/oauth/token", form, **kwargs))

    def post(self, path: str, *, data: dict[str, str], auth: tuple[str, str]) -> httpx.Response:
        """The core answering as an HTTP client would, for the suite's shared login helper."""
        answer = self.server.token_response(request(path, data, headers=basic_header(*auth)))
        return httpx.Response(answer.status, json=answer.body, headers=answer.headers)

    def login(self, **extra: str) -> dict:
        return password_grant(self, ("webapp", self.secret), ok=True, **extra)

    def refresh(self, token: str, **extra: str) -> OAuthResponse:
        return self.token({"grant_type": "refresh_token", "refresh_token": token, **extra})

    def introspect(self, token: str, **extra: str) -> OAuthResponse:
        return self.server.introspection_response(
            request("/oauth/introspect", {"token": token, **extra}, headers=self.auth)
        )

    def revoke(self, token: str, **extra: str) -> OAuthResponse:
        return self.server.revocation_response(
            request("/oauth/revoke", {"token": token, **extra}, headers=self.auth)
        )


@pytest.fixture
def core() -> Core:
    return Core()


def header(response: OAuthResponse, name: str) -> str | None:
    values = [v for k, v in response.headers if k.lower() == name.lower()]
    assert len(values) <= 1, response.headers
    return values[0] if values else None


# -- token responses ------------------------------------------------------------


def test_password_grant_answers_a_plain_result_with_no_store_headers(core):
    response = core.token({"grant_type": "password", "username": "alice", "password": PASSWORD})
    assert isinstance(response, OAuthResponse)
    assert response.status == 200
    assert header(response, "Cache-Control") == "no-store"
    assert header(response, "Pragma") == "no-cache"
    assert header(response, "Content-Type") == "application/json"
    assert response.body["token_type"] == "Bearer"
    assert response.body["expires_in"] == 600
    assert response.body["scope"] == "openid profile"
    claims = core.tokens.verify(response.body["access_token"])
    assert claims["iss"] == ISSUER
    assert claims["iat"] == START
    assert claims["exp"] == START + 600


def test_error_results_carry_no_store_headers_exactly_once(core):
    response = core.token({"grant_type": "password", "username": "alice", "password": "nope"})
    assert response.status == 400
    assert response.body["error"] == "invalid_grant"
    assert header(response, "Cache-Control") == "no-store"
    assert header(response, "Pragma") == "no-cache"


def test_default_scope_is_limited_to_what_the_client_may_have(core):
    secret = add_client(core.store, "reader", scopes=("profile", "read"))
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD},
        headers=basic_header("reader", secret),
    )
    assert response.body["scope"] == "profile"


def test_repeated_scope_values_are_granted_once(core):
    assert core.login(scope="read read write")["scope"] == "read write"


def test_refresh_token_is_a_refresh_jwt_addressed_to_the_issuer(core):
    body = core.login()
    claims = core.tokens.verify(body["refresh_token"], "refresh")
    assert claims["aud"] == ISSUER
    assert claims["type"] == "refresh"
    assert claims["client_id"] == "webapp"
    assert claims["sub"] == core.user.id
    assert claims["exp"] == START + 3600
    assert core.store.get(claims["jti"]).family_id == claims["fam"]


def test_failed_logins_reach_the_hook_with_address_and_username(core):
    core.token(
        {"grant_type": "password", "username": "alice", "password": "bad"}, client_ip="203.0.113.9"
    )
    core.token({"grant_type": "password", "username": "mallory", "password": "bad"})
    core.login()
    assert core.failures == [("203.0.113.9", "alice"), ("192.0.2.1", "mallory")]


def test_client_errors_do_not_reach_the_login_failure_hook(core):
    core.token(
        {"grant_type": "password", "username": "alice", "password": "bad"},
        headers=basic_header("webapp", "wrong"),
    )
    assert core.failures == []


# -- refresh, with the clock ------------------------------------------------------


def test_expired_refresh_token_is_invalid_grant(core):
    token = core.login()["refresh_token"]
    core.clock.now += 3600 + 5 + 1
    response = core.refresh(token)
    assert (response.status, response.body["error"]) == (400, "invalid_grant")


def test_refresh_token_within_leeway_still_works(core):
    token = core.login()["refresh_token"]
    core.clock.now += 3600 + 4
    assert core.refresh(token).status == 200


def test_rotation_chain_keeps_one_family_and_one_usable_token(core):
    token = core.login()["refresh_token"]
    family = core.tokens.verify(token, "refresh")["fam"]
    jtis = [core.tokens.verify(token, "refresh")["jti"]]
    for _ in range(5):
        core.clock.now += 60
        response = core.refresh(token)
        assert response.status == 200, response.body
        token = response.body["refresh_token"]
        claims = core.tokens.verify(token, "refresh")
        assert claims["fam"] == family
        jtis.append(claims["jti"])
    records = [core.store.get(j) for j in jtis]
    assert [r.is_usable for r in records] == [False] * 5 + [True]
    assert all(r.spent_at is not None for r in records[:-1])


def test_reuse_revokes_the_family_and_is_audited(core, caplog):
    first = core.login()["refresh_token"]
    second = core.refresh(first).body["refresh_token"]
    with caplog.at_level("WARNING", logger="issuer.audit"):
        assert core.refresh(first).body["error"] == "invalid_grant"
    assert core.refresh(second).body["error"] == "invalid_grant"
    fam = core.tokens.decode(first)["fam"]
    assert any(fam in r.getMessage() and "reuse" in r.getMessage() for r in caplog.records)
    assert first not in caplog.text and second not in caplog.text


def test_refresh_for_a_deleted_user_is_invalid_grant(core):
    token = core.login()["refresh_token"]
    core.store._users.clear()  # the reference store has no delete; a plugin store might
    assert core.refresh(token).body["error"] == "invalid_grant"


def test_refresh_of_a_removed_client_is_invalid_client(core):
    token = core.login()["refresh_token"]
    core.store.remove_client("webapp")
    response = core.refresh(token)
    assert response.body["error"] == "invalid_client"


def test_refresh_with_an_empty_scope_is_invalid_scope(core):
    token = core.login()["refresh_token"]
    assert core.refresh(token, scope=" ").body["error"] == "invalid_scope"
    assert core.refresh(token).status == 200


# -- request shape, checked before any grant runs ------------------------------------


def test_repeated_parameters_are_refused_before_any_password_check(core):
    form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", PASSWORD),
        ("password", "other"),
    ]
    response = core.server.token_response(request("/oauth/token", form, headers=core.auth))
    assert response.body["error"] == "invalid_request"
    assert "password" in response.body["error_description"]
    assert core.failures == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "", "multipart/form-data", "text/plain"]
)
def test_only_form_bodies_are_accepted(core, content_type):
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD},
        content_type=content_type,
    )
    assert response.body["error"] == "invalid_request"


def test_form_content_type_is_matched_case_insensitively_with_parameters(core):
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD},
        content_type="Application/X-WWW-Form-URLEncoded; charset=utf-8",
    )
    assert response.status == 200


def test_any_query_parameter_is_refused(core):
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD},
        query=[("foo", "bar")],
    )
    assert response.body["error"] == "invalid_request"


def test_non_post_methods_are_refused_by_the_core_too(core):
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD}, method="GET"
    )
    assert response.body["error"] == "invalid_request"


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic ",
        "Basic !!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":secret").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic w6k=:",
    ],
)
def test_malformed_basic_credentials_are_invalid_client_401(core, authorization):
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD},
        headers={"Authorization": authorization},
    )
    assert (response.status, response.body["error"]) == (401, "invalid_client"), response.body
    assert header(response, "WWW-Authenticate").startswith(
        'Basic realm="issuer", error="invalid_client"'
    )


def test_request_url_comes_from_the_issuer_not_a_host_header(core):
    response = core.token(
        {"grant_type": "password", "username": "alice", "password": PASSWORD},
        headers={**core.auth, "Host": "evil.example"},
    )
    assert response.status == 200
    assert core.tokens.verify(response.body["access_token"])["iss"] == ISSUER


def test_plain_http_issuer_url_works_without_authlib_insecure_transport(monkeypatch, core):
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    req = HttpRequest(
        method="POST",
        url="http://127.0.0.1:8000/oauth/token",
        headers=core.auth,
        form=[("grant_type", "password"), ("username", "alice"), ("password", PASSWORD)],
        content_type=FORM,
    )
    assert core.server.token_response(req).status == 200


# -- revocation and introspection in the core -----------------------------------------


def test_introspection_of_an_access_token_lists_its_claims(core):
    body = core.login(scope="read")
    response = core.introspect(body["access_token"])
    assert response.status == 200
    assert header(response, "Cache-Control") == "no-store"
    claims = response.body
    assert claims["active"] is True
    assert claims["scope"] == "read"
    assert claims["client_id"] == "webapp"
    assert claims["username"] == "alice"
    assert claims["sub"] == core.user.id
    assert claims["exp"] == START + 600
    assert claims["token_type"] == "Bearer"


def test_introspection_is_inactive_once_the_clock_passes_expiry(core):
    access = core.login()["access_token"]
    core.clock.now += 600 + 5 + 1
    assert core.introspect(access).body == {"active": False}


def test_revoking_an_access_token_denies_it_until_it_expires(core):
    access = core.login()["access_token"]
    assert core.revoke(access, token_type_hint="access_token").status == 200
    jti = core.tokens.decode(access)["jti"]
    assert core.store.is_denied(jti)
    assert core.store._denied[jti] == START + 600
    assert core.introspect(access).body == {"active": False}


def test_revoking_a_refresh_token_revokes_its_family(core):
    first = core.login()["refresh_token"]
    second = core.refresh(first).body["refresh_token"]
    assert core.revoke(second).status == 200
    assert core.refresh(second).body["error"] == "invalid_grant"
    assert core.introspect(second, token_type_hint="refresh_token").body == {"active": False}


def test_revoking_an_expired_token_is_harmless(core):
    access = core.login()["access_token"]
    core.clock.now += 10_000
    assert core.revoke(access).status == 200


# -- the SQLite components: a real race ------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sql_components(request, make_settings):
    """Components over a migrated SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        settings = make_settings()
    else:
        settings = make_settings(database_url=request.getfixturevalue("postgres_url"))
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    parts = build_components(settings)
    yield parts
    parts.close()


def test_concurrent_refreshes_of_one_token_let_exactly_one_win(sql_components):
    components = sql_components
    add_user(components.store, "alice")
    secret = add_client(components.store, "webapp")
    auth = basic_header("webapp", secret)
    server = components.server
    login = server.token_response(
        request(
            "/oauth/token",
            {"grant_type": "password", "username": "alice", "password": PASSWORD},
            headers=auth,
        )
    )
    token = login.body["refresh_token"]
    barrier = threading.Barrier(6)

    def refresh(_: int) -> OAuthResponse:
        barrier.wait(timeout=10)
        return server.token_response(
            request(
                "/oauth/token",
                {"grant_type": "refresh_token", "refresh_token": token},
                headers=auth,
            )
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(refresh, range(6)))
    winners = [r for r in results if r.status == 200]
    assert len(winners) == 1, [r.body for r in results]
    assert {r.body["error"] for r in results if r.status != 200} == {"invalid_grant"}
    # Losing the race is reuse: the winner's new token is revoked with its family.
    again = server.token_response(
        request(
            "/oauth/token",
            {"grant_type": "refresh_token", "refresh_token": winners[0].body["refresh_token"]},
            headers=auth,
        )
    )
    assert again.body["error"] == "invalid_grant"


def test_components_server_issues_tokens_for_the_configured_issuer(components):
    add_user(components.store, "alice")
    add_client(components.store, "spa", method=AuthMethod.NONE)
    response = components.server.token_response(
        HttpRequest(
            method="POST",
            url=components.settings.url + "/oauth/token",
            headers={},
            form=[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
                ("client_id", "spa"),
            ],
            content_type=FORM,
        )
    )
    assert response.status == 200, response.body
    claims = components.tokens.verify(response.body["access_token"])
    assert claims["iss"] == components.settings.url
    assert claims["aud"] == components.settings.audience


def test_a_json_body_is_refused_for_its_content_type_before_anything_else(core):
    response = core.server.token_response(
        request("/oauth/token", [], headers=core.auth, content_type="application/json")
    )
    assert response.body["error"] == "invalid_request"
    assert "application/x-www-form-urlencoded" in response.body["error_description"]


def test_a_missing_grant_type_is_invalid_request_not_unsupported(core):
    response = core.token({"username": "alice", "password": PASSWORD})
    assert (response.status, response.body["error"]) == (400, "invalid_request")
    assert "grant_type" in response.body["error_description"]
    assert core.failures == []


# -- scope syntax (RFC 6749 §3.3) ------------------------------------------------------


def test_scope_tokens_are_separated_by_spaces_only(core):
    assert core.login(scope="read  write ")["scope"] == "read write"
    for odd in ("read\twrite", "read\nwrite", "read\u3000write", "read\x1cwrite"):
        response = core.token(
            {"grant_type": "password", "username": "alice", "password": PASSWORD, "scope": odd}
        )
        assert response.body["error"] == "invalid_scope", repr(odd)


def test_a_narrowed_refresh_scope_is_normalised(core):
    token = core.login(scope="read write")["refresh_token"]
    response = core.refresh(token, scope="read  read")
    assert response.body["scope"] == "read"
    assert core.tokens.verify(response.body["access_token"])["scope"] == "read"


def test_a_client_loses_scopes_the_server_no_longer_offers(core):
    secret = add_client(core.store, "legacy", scopes=("read", "retired"))
    auth = basic_header("legacy", secret)
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    refused = core.token({**form, "scope": "retired"}, headers=auth)
    assert refused.body["error"] == "invalid_scope"
    assert core.token({**form, "scope": "read"}, headers=auth).body["scope"] == "read"
