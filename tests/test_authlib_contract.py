"""What ``issuer/oauth/grants.py`` relies on Authlib to do, pinned.

The grants fill in Authlib's documented hooks and let Authlib's own
``validate_token_request`` and ``create_token_response`` run. The order in which Authlib
calls those hooks, and what it hands each, is behaviour a release could change without
touching a signature. These tests record the real calls of a real login and refresh, so an
Authlib upgrade that changes the flow fails here, by name, rather than somewhere in the
security tests (or nowhere).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import authlib
import pytest
from authlib.consts import default_json_headers

from issuer.oauth import grants
from issuer.oauth.grants import PasswordGrant, RefreshCredential, RefreshTokenGrant
from tests.conftest import PASSWORD, add_client, password_form
from tests.test_oauth_server import Core, basic_header

ROOT = Path(__file__).resolve().parent.parent

PASSWORD_HOOKS = (
    "authenticate_token_endpoint_client",
    "authenticate_user",
    "validate_requested_scope",
    "generate_token",
    "save_token",
    "login_succeeded",
)
REFRESH_HOOKS = (
    "authenticate_token_endpoint_client",
    "authenticate_refresh_token",
    "authenticate_user",
    "generate_token",
    "save_token",
    "revoke_old_credential",
    "refreshed",
)


class Call:
    """One recorded call of a grant method: its name, arguments, result and request state."""

    def __init__(self, name: str, grant: Any, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.name = name
        self.grant = grant
        self.args = args
        self.kwargs = kwargs
        self.client_was_set = getattr(grant.request, "client", None) is not None
        self.result: Any = None


class Recorder:
    """Wraps grant methods (on the class, so Authlib's own flow calls the wrappers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.calls: list[Call] = []

    def watch(self, cls: type, names: tuple[str, ...]) -> None:
        for name in names:
            self.monkeypatch.setattr(cls, name, self._wrap(name, getattr(cls, name)))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(grant: Any, *args: Any, **kwargs: Any) -> Any:
            call = Call(name, grant, args, kwargs)
            self.calls.append(call)
            call.result = method(grant, *args, **kwargs)
            return call.result

        return recorded

    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    def one(self, name: str) -> Call:
        found = [call for call in self.calls if call.name == name]
        assert len(found) == 1, self.names()
        return found[0]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder(monkeypatch)
    recorder.watch(PasswordGrant, PASSWORD_HOOKS)
    recorder.watch(RefreshTokenGrant, REFRESH_HOOKS)
    yield recorder


@pytest.fixture
def core() -> Core:
    return Core()


# -- the version this contract was written against -------------------------------------


def test_the_installed_authlib_is_the_pinned_minor_release():
    match = re.match(r"(\d+)\.(\d+)\.", authlib.__version__)
    assert match is not None, authlib.__version__
    assert (int(match[1]), int(match[2])) == (1, 9), (
        "Authlib moved to another minor release: re-read its grants/base.py, "
        "refresh_token.py and resource_owner_password_credentials.py against this file."
    )


def test_pyproject_pins_authlib_major_and_minor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.lower().startswith("authlib")]
    assert pins == ["authlib>=1.9,<1.10"]


# -- the password grant ----------------------------------------------------------------


def test_password_grant_calls_the_hooks_in_this_order(core, recorder):
    response = core.token(password_form(scope="read"))
    assert response.status == 200, response.body
    assert recorder.names() == list(PASSWORD_HOOKS)
    # The client is on the request before authenticate_user (budgets and scope need it).
    assert recorder.one("authenticate_user").client_was_set


def test_password_grant_hands_each_hook_what_the_grants_expect(core, recorder):
    response = core.token(password_form(scope="read"))
    assert recorder.one("authenticate_user").args == ("alice", PASSWORD)
    user = recorder.one("authenticate_user").result
    generate = recorder.one("generate_token")
    # Authlib passes the user authenticate_user returned and the *requested* scope.
    assert generate.kwargs == {"user": user, "scope": "read"}
    token = generate.result
    assert recorder.one("save_token").args == (token,)
    assert token is not None and token["access_token"] == response.body["access_token"]
    # The after_create_token_response hook gets the (status, body, headers) answered.
    decided = recorder.one("login_succeeded").args
    assert decided == ((200, token, default_json_headers),)
    assert decided[0][1] is token


def test_password_grant_requested_no_scope_reaches_generate_token_as_none(core, recorder):
    response = core.token(password_form())
    assert recorder.one("generate_token").kwargs["scope"] is None
    assert response.body["scope"] == "openid profile"  # the default, resolved by the grant


def test_password_grant_checks_the_grant_type_before_authenticate_user(core, recorder):
    secret = add_client(core.store, "refresher", grants=("refresh_token",))
    response = core.token(password_form(), headers=basic_header("refresher", secret))
    assert (response.status, response.body["error"]) == (400, "unauthorized_client")
    # The README's wording (grants.py checks before Authlib does, with its own).
    assert response.body["error_description"] == "The client may not use the password grant."
    assert recorder.names() == ["authenticate_token_endpoint_client"]


def test_refresh_grant_checks_the_grant_type_before_authenticate_refresh_token(core, recorder):
    secret = add_client(core.store, "once", grants=("password",))
    response = core.token(
        {"grant_type": "refresh_token", "refresh_token": "anything"},
        headers=basic_header("once", secret),
    )
    assert (response.status, response.body["error"]) == (400, "unauthorized_client")
    assert response.body["error_description"] == ("The client may not use the refresh_token grant.")
    assert recorder.names() == ["authenticate_token_endpoint_client"]


@pytest.mark.parametrize("missing", ["username", "password"])
def test_password_grant_refuses_missing_credentials_before_authenticate_user(
    core, recorder, missing
):
    form = password_form()
    del form[missing]
    response = core.token(form)
    assert (response.status, response.body["error"]) == (400, "invalid_request")
    assert recorder.names() == ["authenticate_token_endpoint_client"]


def test_a_refusal_in_save_token_is_the_answer(core, recorder, monkeypatch):
    # The login race: grants.py raises from save_token, and Authlib must answer with it
    # (no token in the body) and skip the after hook (no success audit, no rehash).
    monkeypatch.setattr(core.server, "start_session", lambda record, user: False)
    response = core.token(password_form())
    assert (response.status, response.body["error"]) == (400, "invalid_grant")
    assert "access_token" not in response.body
    assert recorder.names()[-1] == "save_token"


# -- the refresh grant -----------------------------------------------------------------


def test_refresh_grant_calls_the_hooks_in_this_order(core, recorder):
    refresh = core.login()["refresh_token"]
    recorder.calls.clear()
    response = core.refresh(refresh)
    assert response.status == 200, response.body
    assert recorder.names() == list(REFRESH_HOOKS)
    assert recorder.one("authenticate_refresh_token").client_was_set


@pytest.mark.parametrize(
    ("requested", "passed"), [(None, "openid profile"), ("profile", "profile")]
)
def test_refresh_grant_hands_each_hook_what_the_grants_expect(core, recorder, requested, passed):
    refresh = core.login()["refresh_token"]
    recorder.calls.clear()
    extra = {"scope": requested} if requested is not None else {}
    response = core.refresh(refresh, **extra)
    assert response.status == 200, response.body
    assert recorder.one("authenticate_refresh_token").args == (refresh,)
    credential = recorder.one("authenticate_refresh_token").result
    assert isinstance(credential, RefreshCredential)
    assert recorder.one("authenticate_user").args == (credential,)
    user = recorder.one("authenticate_user").result
    generate = recorder.one("generate_token")
    # Authlib's issue_token: the requested scope, else the credential's get_scope().
    assert generate.kwargs == {"user": user, "scope": passed, "include_refresh_token": True}
    token = generate.result
    assert recorder.one("save_token").args == (token,)
    assert recorder.one("revoke_old_credential").args == (credential,)
    assert generate.grant.request.refresh_token is credential
    assert generate.grant.request.user is user
    assert recorder.one("refreshed").args == ((200, token, default_json_headers),)


def test_refresh_grant_without_a_refresh_token_stops_before_authenticate_refresh_token(
    core, recorder
):
    response = core.token({"grant_type": "refresh_token"})
    assert (response.status, response.body["error"]) == (400, "invalid_request")
    assert recorder.names() == ["authenticate_token_endpoint_client"]


def test_authlib_checks_the_scope_after_authenticate_refresh_token(core, recorder, monkeypatch):
    """With the issuer's own check switched off, Authlib's runs: after the token, and it
    lets an empty scope through, which is why grants.check_refresh_scope exists."""
    monkeypatch.setattr(grants, "check_refresh_scope", lambda requested, granted: None)
    first = core.login(scope="read")["refresh_token"]
    recorder.calls.clear()
    wider = core.refresh(first, scope="read write")
    assert (wider.status, wider.body["error"]) == (400, "invalid_scope")
    assert recorder.names() == ["authenticate_token_endpoint_client", "authenticate_refresh_token"]
    empty = core.refresh(first, scope="")
    assert empty.status == 200, empty.body
    assert empty.body["scope"] == "read"


def test_the_default_token_response_headers_are_the_issuers(core):
    # Authlib answers with the grant's TOKEN_RESPONSE_HEADER (default_json_headers).
    assert core.server.token_headers() == PasswordGrant.TOKEN_RESPONSE_HEADER
    assert core.server.token_headers() == RefreshTokenGrant.TOKEN_RESPONSE_HEADER


def test_the_server_level_save_token_is_never_reached(core):
    # IssuerServer.save_token raises: a login and a refresh that succeed prove each grant's
    # save_token overrides Authlib's (which would delegate to the server's).
    body = core.login()
    assert core.refresh(body["refresh_token"]).status == 200
    with pytest.raises(NotImplementedError):
        core.server.save_token({}, None)
