"""issuer.dependencies guarding a real FastAPI app and a plain Starlette app.

Tokens come from the real issuer (password grant through the issuer's TestClient) and
are presented to separate API apps in the same process, as a resource server would.
"""

import secrets
import subprocess
import sys
import textwrap
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from issuer.compose import build_components
from issuer.dependencies import (
    authenticate,
    get_current_active_user,
    get_current_user,
    require_role,
)
from issuer.models import Role, User
from tests.conftest import add_client, add_user, login


def _user_json(user: User) -> dict:
    return {"sub": user.id, "username": user.username, "role": user.role.value}


ActiveUser = Annotated[User, Depends(get_current_active_user)]
AnyUser = Annotated[User, Depends(get_current_user)]
Admin = Annotated[User, Depends(require_role("admin"))]
Staff = Annotated[User, Depends(require_role("admin", Role.ENGINEER))]


def build_fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/me")
    async def me(user: ActiveUser) -> dict:
        return _user_json(user)

    @api.get("/whoever")
    async def whoever(user: AnyUser) -> dict:
        return _user_json(user)

    @api.get("/admin")
    async def admin(user: Admin) -> dict:
        return _user_json(user)

    @api.get("/staff")
    async def staff(user: Staff) -> dict:
        return _user_json(user)

    return api


async def engineers_only(request: Request) -> JSONResponse:
    return JSONResponse(_user_json(await authenticate(request, "engineer")))


async def anyone(request: Request) -> JSONResponse:
    return JSONResponse(_user_json(await authenticate(request)))


@pytest.fixture
def issuer(client, components):
    """The issuer's TestClient, with alice (engineer), root (admin), vic (viewer), webapp."""
    add_user(components.store, "alice", role=Role.ENGINEER)
    add_user(components.store, "root", role=Role.ADMIN)
    add_user(components.store, "vic", role=Role.VIEWER)
    client.web = ("webapp", add_client(components.store, "webapp"))
    return client


@pytest.fixture
def api(issuer, components):
    app = build_fastapi_app()
    app.state.tokens = components.tokens  # served with the issuer's own components
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def starlette_api(issuer, components):
    app = Starlette(routes=[Route("/eng", engineers_only), Route("/anyone", anyone)])
    app.state.tokens = components.tokens
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def logged_in(issuer, username: str) -> dict[str, str]:
    """The Authorization header of ``username``'s fresh access token."""
    return bearer(login(issuer, issuer.web, username, ok=True)["access_token"])


def assert_invalid_token(response, token: str | None = None) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="issuer"')
    assert 'error="invalid_token"' in challenge
    if token:
        assert token not in response.text


# -- FastAPI -------------------------------------------------------------------


def test_fastapi_route_gets_the_user_behind_a_valid_token(issuer, api, components):
    token = login(issuer, issuer.web, ok=True)["access_token"]
    r = api.get("/me", headers=bearer(token))
    assert r.status_code == 200, r.text
    alice = components.store.get_by_username("alice")
    assert r.json() == {"sub": alice.id, "username": "alice", "role": "engineer"}


def test_missing_token_gets_a_bare_bearer_challenge(api):
    r = api.get("/me")
    assert r.status_code == 401
    # RFC 6750 §3.1: no error code when the request carried no credentials at all.
    assert r.headers["www-authenticate"] == 'Bearer realm="issuer"'


def test_other_authorization_scheme_counts_as_no_token(api):
    r = api.get("/me", headers={"Authorization": "Basic d2ViYXBwOnNlY3JldA=="})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="issuer"'


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_garbage_token_is_invalid_token(api, garbage):
    assert_invalid_token(api.get("/me", headers=bearer(garbage)))


def test_expired_token_is_invalid_token(issuer, api, components):
    alice = components.store.get_by_username("alice")
    claims = components.tokens.access_claims_for(alice, "webapp", "openid")
    leeway = components.settings.leeway
    token, _ = components.tokens.create_access_token(claims, expires_in=-(leeway + 60))
    assert_invalid_token(api.get("/me", headers=bearer(token)), token)


def test_token_revoked_at_the_issuer_is_refused_at_once(issuer, api):
    token = login(issuer, issuer.web, ok=True)["access_token"]
    assert api.get("/me", headers=bearer(token)).status_code == 200
    r = issuer.post("/oauth/revoke", data={"token": token}, auth=issuer.web)
    assert r.status_code == 200, r.text
    assert_invalid_token(api.get("/me", headers=bearer(token)), token)


def test_refresh_token_cannot_stand_in_for_an_access_token(issuer, api):
    refresh = login(issuer, issuer.web, ok=True)["refresh_token"]
    assert_invalid_token(api.get("/me", headers=bearer(refresh)), refresh)
    assert_invalid_token(api.get("/whoever", headers=bearer(refresh)), refresh)


def test_token_of_a_deleted_subject_is_invalid_token(issuer, api, components):
    ghost = User(id="00000000-0000-0000-0000-000000000000", username="ghost", role=Role.ADMIN)
    claims = components.tokens.access_claims_for(ghost, "webapp", "openid")
    token, _ = components.tokens.create_access_token(claims)
    assert_invalid_token(api.get("/me", headers=bearer(token)), token)


def test_disabled_user_is_forbidden_though_the_token_is_valid(issuer, api, components):
    token = login(issuer, issuer.web, ok=True)["access_token"]
    components.store.set_active("alice", False)
    r = api.get("/me", headers=bearer(token))
    assert r.status_code == 403, r.text
    # get_current_user alone still says who it is; "active" is a separate decision.
    assert api.get("/whoever", headers=bearer(token)).json()["username"] == "alice"


def test_role_check_admits_the_role(issuer, api):
    r = api.get("/admin", headers=logged_in(issuer, "root"))
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "admin"


def test_role_check_forbids_other_roles(issuer, api):
    r = api.get("/admin", headers=logged_in(issuer, "alice"))
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


def test_role_check_admits_any_of_several_roles_and_no_other(issuer, api):
    for username, status in (("root", 200), ("alice", 200), ("vic", 403)):
        r = api.get("/staff", headers=logged_in(issuer, username))
        assert r.status_code == status, (username, r.text)


def test_role_check_refuses_a_disabled_admin(issuer, api, components):
    token = login(issuer, issuer.web, "root", ok=True)["access_token"]
    components.store.set_active("root", False)
    assert api.get("/admin", headers=bearer(token)).status_code == 403


def test_role_check_still_needs_a_valid_token(api):
    assert_invalid_token(api.get("/admin", headers=bearer("nope")))
    assert api.get("/admin").headers["www-authenticate"] == 'Bearer realm="issuer"'


def test_unknown_role_name_fails_when_the_route_is_defined():
    with pytest.raises(ValueError, match="unknown role 'superuser'"):
        require_role("superuser")
    with pytest.raises(ValueError, match="at least one role"):
        require_role()


# -- Starlette -----------------------------------------------------------------


def test_starlette_route_authenticates_with_a_role(issuer, starlette_api):
    r = starlette_api.get("/eng", headers=logged_in(issuer, "alice"))
    assert r.status_code == 200, r.text
    assert r.json()["username"] == "alice"


def test_starlette_route_without_roles_admits_any_active_user(issuer, starlette_api):
    r = starlette_api.get("/anyone", headers=logged_in(issuer, "vic"))
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "viewer"


def test_starlette_role_is_matched_exactly_so_admin_is_not_engineer(issuer, starlette_api):
    r = starlette_api.get("/eng", headers=logged_in(issuer, "root"))
    assert r.status_code == 403


def test_starlette_route_refuses_missing_revoked_and_refresh_tokens(issuer, starlette_api):
    r = starlette_api.get("/eng")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="issuer"'
    tokens = login(issuer, issuer.web, ok=True)
    assert_invalid_token(starlette_api.get("/eng", headers=bearer(tokens["refresh_token"])))
    issuer.post("/oauth/revoke", data={"token": tokens["access_token"]}, auth=issuer.web)
    assert_invalid_token(starlette_api.get("/eng", headers=bearer(tokens["access_token"])))


def test_starlette_route_forbids_a_disabled_user(issuer, starlette_api, components):
    token = login(issuer, issuer.web, ok=True)["access_token"]
    components.store.set_active("alice", False)
    assert starlette_api.get("/anyone", headers=bearer(token)).status_code == 403


def test_dependencies_work_without_fastapi_installed(tmp_path):
    """FastAPI is for tests only: importing and using the module must not need it."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["fastapi"] = None  # makes `import fastapi` raise ImportError
        import asyncio
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from issuer import dependencies

        assert dependencies.get_current_user.__defaults__ == (dependencies.UNSET, None)
        request = Request({"type": "http", "method": "GET", "headers": []})
        try:
            asyncio.run(dependencies.authenticate(request))
        except HTTPException as exc:
            print(exc.status_code, exc.headers["WWW-Authenticate"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '401 Bearer realm="issuer"'
    assert "fastapi" not in result.stderr.lower()


def test_two_apps_in_one_process_each_use_their_own_token_service(
    issuer, components, make_settings, tmp_path
):
    """No module-global service: an app sees only the TokenService it holds."""
    from issuer import tokens  # noqa: PLC0415 - the shim under test

    with pytest.raises(RuntimeError):  # create_app installed nothing global
        tokens.get_service()
    token = login(issuer, issuer.web, ok=True)["access_token"]
    other_settings = make_settings(
        secret_key=secrets.token_urlsafe(48),
        keys_dir=str(tmp_path / "other-keys"),
        database_url=f"sqlite:///{tmp_path / 'o.db'}",
    )
    other = build_components(other_settings)  # another issuer: another secret
    try:
        mine, theirs = build_fastapi_app(), build_fastapi_app()
        mine.state.tokens = components.tokens
        theirs.state.tokens = other.tokens
        with TestClient(mine) as mine_client, TestClient(theirs) as theirs_client:
            assert mine_client.get("/me", headers=bearer(token)).status_code == 200
            assert_invalid_token(theirs_client.get("/me", headers=bearer(token)))
    finally:
        other.close()


def test_an_app_without_a_token_service_says_to_use_issuer_resource():
    from issuer import tokens  # noqa: PLC0415 - the shim under test

    tokens.configure(None)
    with (
        TestClient(build_fastapi_app()) as api,
        pytest.raises(RuntimeError, match=r"issuer\.resource"),
    ):
        api.get("/me", headers=bearer("a.b.c"))
