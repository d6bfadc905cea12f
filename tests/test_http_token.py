"""POST /oauth/token over HTTP: RFC 6749 §4.3 (password), §6 (refresh), §5.1 and §5.2.

Everything goes through the TestClient; the store is only read to prove what changed.
"""

from __future__ import annotations

import base64
import secrets
from functools import partial

import bcrypt
import pytest
from sqlalchemy import func, select

from issuer.compose import build_components
from issuer.models import AuthMethod
from issuer.store.schema import refresh_tokens
from tests.conftest import PASSWORD, add_client, add_user, password_form
from tests.conftest import login as password_grant
from tests.readme import readme_section

TOKEN = "/oauth/token"
REVOKE = "/oauth/revoke"
INTROSPECT = "/oauth/introspect"


def refresh_form(token: str, **extra: str) -> dict:
    return {"grant_type": "refresh_token", "refresh_token": token, **extra}


def refresh_count(components) -> int:
    with components.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(refresh_tokens)).scalar_one())


@pytest.fixture
def login(client, alice, basic):
    """A successful password grant for alice through the Basic client: the token response."""
    return partial(password_grant, client, basic, ok=True)


def assert_token_response(response, scope: str) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    pair = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    # OIDC Core §3.1.3.3: an ID token exactly when openid was granted.
    assert set(body) == (pair | {"id_token"} if "openid" in scope.split() else pair)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert body["scope"] == scope
    assert body["access_token"] != body["refresh_token"]
    return body


def assert_error(response, error: str, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    return body


def access_claims(components, token: str) -> dict:
    return components.tokens.verify(token, "access")


# -- the password grant: success -----------------------------------------------


def test_password_grant_with_client_secret_basic_returns_a_token_pair(
    client, components, alice, basic
):
    response = password_grant(client, basic)
    body = assert_token_response(response, "openid profile")
    claims = access_claims(components, body["access_token"])
    assert claims["sub"] == alice.id
    assert claims["username"] == "alice"
    assert claims["role"] == "engineer"
    assert claims["client_id"] == "webapp"
    assert claims["scope"] == "openid profile"


def test_password_grant_with_client_secret_post_returns_a_token_pair(client, components, alice):
    secret = add_client(components.store, "poster", method=AuthMethod.CLIENT_SECRET_POST)
    response = client.post(
        TOKEN, data=password_form(client_id="poster", client_secret=secret, scope="read")
    )
    body = assert_token_response(response, "read")
    assert access_claims(components, body["access_token"])["client_id"] == "poster"


def test_password_grant_for_a_public_client_takes_client_id_in_the_body(client, components, alice):
    add_client(components.store, "spa", method=AuthMethod.NONE)
    response = password_grant(client, None, client_id="spa", scope="read write")
    body = assert_token_response(response, "read write")
    assert access_claims(components, body["access_token"])["client_id"] == "spa"


def test_password_grant_records_one_refresh_token(client, components, alice, basic):
    assert refresh_count(components) == 0
    body = assert_token_response(password_grant(client, basic), "openid profile")
    jti = components.tokens.verify(body["refresh_token"], "refresh")["jti"]
    assert refresh_count(components) == 1
    assert components.store.get(jti).is_usable


def test_basic_credentials_are_form_urlencoded_before_base64(client, components, alice):
    """RFC 6749 §2.3.1: id and secret are form-encoded, then joined with a colon."""
    secret = add_client(components.store, "odd:id")
    raw = base64.b64encode(f"odd%3Aid:{secret}".encode()).decode()
    response = client.post(TOKEN, data=password_form(), headers={"Authorization": f"Basic {raw}"})
    assert_token_response(response, "openid profile")


# -- the password grant: every failed login looks the same ----------------------


@pytest.fixture
def bcrypt_checks(monkeypatch):
    """Counts calls to the real ``bcrypt.checkpw``."""
    calls: list[int] = []
    real = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(1)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def test_every_failed_login_gets_the_same_answer_for_one_bcrypt_check(
    client, components, basic, bcrypt_checks
):
    long_password = "Aa1!" + "x" * 68  # exactly 72 bytes: bcrypt's limit
    add_user(components.store, "alice")
    add_user(components.store, "longpw", password=long_password)
    add_user(components.store, "dora", active=False)
    attempts = {
        "unknown user": password_form("nobody"),
        "wrong password": password_form("alice", PASSWORD + "x"),
        "empty password": password_form("alice", ""),
        "empty username": password_form("", PASSWORD),
        "over 72 bytes, first 72 right": password_form("longpw", long_password + "y"),
        "disabled user": password_form("dora", PASSWORD),
    }
    answers = {}
    for name, form in attempts.items():
        bcrypt_checks.clear()
        response = client.post(TOKEN, data=form, auth=basic)
        assert len(bcrypt_checks) == 1, name
        answers[name] = (response.status_code, response.content)
    assert set(answers.values()) == {
        (400, b'{"error":"invalid_grant","error_description":"Invalid username or password."}')
    }, answers
    assert refresh_count(components) == 0
    # The same users do log in with the right password (the failures were not setup errors).
    assert password_grant(client, basic, "longpw", long_password).status_code == 200


def test_a_successful_login_spends_exactly_one_bcrypt_check(client, alice, basic, bcrypt_checks):
    assert password_grant(client, basic).status_code == 200
    assert len(bcrypt_checks) == 1


def test_a_refresh_spends_no_bcrypt_check(client, login, basic, bcrypt_checks):
    token = login()["refresh_token"]
    bcrypt_checks.clear()
    assert client.post(TOKEN, data=refresh_form(token), auth=basic).status_code == 200
    assert bcrypt_checks == []


@pytest.mark.parametrize("missing", ["username", "password"])
def test_password_grant_without_username_or_password_is_invalid_request(
    client, alice, basic, missing
):
    form = password_form()
    del form[missing]
    assert_error(client.post(TOKEN, data=form, auth=basic), "invalid_request")


# -- refresh ---------------------------------------------------------------------


def test_refresh_returns_a_new_pair_in_the_same_family(client, components, login, basic):
    first = login()
    response = client.post(TOKEN, data=refresh_form(first["refresh_token"]), auth=basic)
    second = assert_token_response(response, "openid profile")
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    old = components.tokens.decode(first["refresh_token"])
    new = components.tokens.verify(second["refresh_token"], "refresh")
    assert new["fam"] == old["fam"]
    assert components.store.get(old["jti"]).spent_at is not None
    assert components.store.get(new["jti"]).is_usable


def test_spent_refresh_token_is_refused_and_revokes_its_family(client, components, login, basic):
    first = login()
    second = client.post(TOKEN, data=refresh_form(first["refresh_token"]), auth=basic).json()
    reuse = client.post(TOKEN, data=refresh_form(first["refresh_token"]), auth=basic)
    assert_error(reuse, "invalid_grant")
    # The newest token of the family was revoked too: whoever holds it is cut off.
    newest = client.post(TOKEN, data=refresh_form(second["refresh_token"]), auth=basic)
    assert_error(newest, "invalid_grant")
    jti = components.tokens.decode(second["refresh_token"])["jti"]
    assert components.store.get(jti).revoked_at is not None


def test_reuse_leaves_other_families_of_the_same_user_alone(client, login, basic):
    phone, laptop = login(), login()
    client.post(TOKEN, data=refresh_form(phone["refresh_token"]), auth=basic)
    client.post(TOKEN, data=refresh_form(phone["refresh_token"]), auth=basic)
    response = client.post(TOKEN, data=refresh_form(laptop["refresh_token"]), auth=basic)
    assert_token_response(response, "openid profile")


def test_narrower_scope_on_refresh_narrows_the_access_token_only(client, components, basic, alice):
    first = password_grant(client, basic, scope="read write").json()
    response = client.post(
        TOKEN, data=refresh_form(first["refresh_token"], scope="read"), auth=basic
    )
    second = assert_token_response(response, "read")
    assert access_claims(components, second["access_token"])["scope"] == "read"
    assert components.tokens.verify(second["refresh_token"], "refresh")["scope"] == "read write"
    # The next refresh without a scope gets the original scope back.
    third = client.post(TOKEN, data=refresh_form(second["refresh_token"]), auth=basic)
    assert_token_response(third, "read write")


def test_broader_scope_on_refresh_is_invalid_scope_and_spends_nothing(
    client, components, basic, alice
):
    first = password_grant(client, basic, scope="read").json()
    response = client.post(
        TOKEN, data=refresh_form(first["refresh_token"], scope="read write"), auth=basic
    )
    assert_error(response, "invalid_scope")
    jti = components.tokens.decode(first["refresh_token"])["jti"]
    assert components.store.get(jti).is_usable
    assert refresh_count(components) == 1


def test_refresh_token_of_another_client_is_invalid_grant(client, components, login):
    token = login()["refresh_token"]
    other = ("other", add_client(components.store, "other"))
    assert_error(client.post(TOKEN, data=refresh_form(token), auth=other), "invalid_grant")
    # It did not count as a reuse: the rightful client still refreshes.
    jti = components.tokens.decode(token)["jti"]
    assert components.store.get(jti).is_usable


def test_access_token_as_refresh_token_is_invalid_grant(client, login, basic):
    access = login()["access_token"]
    assert_error(client.post(TOKEN, data=refresh_form(access), auth=basic), "invalid_grant")


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "x" * 9000])
def test_garbage_refresh_token_is_invalid_grant(client, basic, alice, garbage):
    assert_error(client.post(TOKEN, data=refresh_form(garbage), auth=basic), "invalid_grant")


def test_missing_refresh_token_is_invalid_request(client, basic):
    response = client.post(TOKEN, data={"grant_type": "refresh_token"}, auth=basic)
    assert_error(response, "invalid_request")


def test_disabled_user_cannot_refresh(client, components, login, basic):
    token = login()["refresh_token"]
    components.store.set_active("alice", False)
    assert_error(client.post(TOKEN, data=refresh_form(token), auth=basic), "invalid_grant")
    components.store.set_active("alice", True)
    # Disabling ended the session: the family stays revoked after re-enabling.
    assert_error(client.post(TOKEN, data=refresh_form(token), auth=basic), "invalid_grant")


def test_refresh_token_signed_by_another_secret_is_invalid_grant(
    client, make_settings, basic, alice
):
    foreign = build_components(make_settings(secret_key=secrets.token_urlsafe(48)))
    try:
        token, _ = foreign.tokens.create_refresh_token({"sub": alice.id, "client_id": "webapp"})
    finally:
        foreign.close()
    assert_error(client.post(TOKEN, data=refresh_form(token), auth=basic), "invalid_grant")


# -- request errors ----------------------------------------------------------------


def test_missing_grant_type_is_invalid_request(client, basic, alice):
    form = password_form()
    del form["grant_type"]
    assert_error(client.post(TOKEN, data=form, auth=basic), "invalid_request")


@pytest.mark.parametrize(
    "grant_type", ["client_credentials", "authorization_code", "implicit", "", "PASSWORD"]
)
def test_unknown_grant_type_is_unsupported_grant_type(client, basic, grant_type):
    response = password_grant(client, basic, grant_type=grant_type)
    assert_error(response, "unsupported_grant_type")


@pytest.mark.parametrize("scope", ["admin", "read admin", "", "   "])
def test_unknown_or_empty_scope_is_invalid_scope(client, components, basic, alice, scope):
    response = password_grant(client, basic, scope=scope)
    assert_error(response, "invalid_scope")
    assert refresh_count(components) == 0


def test_scope_outside_the_clients_allowed_scopes_is_invalid_scope(client, components, alice):
    secret = add_client(components.store, "reader", scopes=("read",))
    response = password_grant(client, ("reader", secret), scope="write")
    assert_error(response, "invalid_scope")


def test_client_not_registered_for_the_password_grant_is_unauthorized_client(
    client, components, alice
):
    secret = add_client(components.store, "refresher", grants=("refresh_token",))
    response = password_grant(client, ("refresher", secret))
    assert_error(response, "unauthorized_client")


def test_client_without_the_refresh_grant_gets_no_refresh_token_and_no_record(
    client, components, alice
):
    secret = add_client(components.store, "once", grants=("password",))
    response = password_grant(client, ("once", secret))
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    assert access_claims(components, body["access_token"])["client_id"] == "once"
    assert refresh_count(components) == 0


def test_client_not_registered_for_refresh_is_unauthorized_client(client, components, login):
    other = login()["refresh_token"]  # a valid refresh token, of another client
    secret = add_client(components.store, "once", grants=("password",))
    response = client.post(TOKEN, data=refresh_form(other), auth=("once", secret))
    assert_error(response, "unauthorized_client")


def test_default_scope_that_leaves_nothing_for_the_client_is_invalid_scope(
    client, components, alice
):
    """RFC 6749 §3.3: no request scope and no allowed default: refuse, never grant ""."""
    secret = add_client(components.store, "writer", scopes=("write",))
    response = password_grant(client, ("writer", secret))
    body = assert_error(response, "invalid_scope")
    assert "default scope" in body["error_description"]
    assert refresh_count(components) == 0
    granted = password_grant(client, ("writer", secret), scope="write")
    assert assert_token_response(granted, "write")["scope"] == "write"


def test_wrong_secret_via_basic_is_401_with_a_basic_challenge(client, alice, basic):
    response = password_grant(client, ("webapp", basic[1] + "x"))
    assert_error(response, "invalid_client", 401)
    assert response.headers["www-authenticate"].startswith(
        'Basic realm="issuer", error="invalid_client"'
    )


def test_wrong_secret_via_post_is_invalid_client_without_a_basic_challenge(
    client, components, alice
):
    secret = add_client(components.store, "poster", method=AuthMethod.CLIENT_SECRET_POST)
    form = password_form(client_id="poster", client_secret=secret + "x")
    response = client.post(TOKEN, data=form)
    assert_error(response, "invalid_client", 400)
    assert "basic" not in response.headers.get("www-authenticate", "").lower()


def test_unknown_client_is_invalid_client(client, alice):
    response = password_grant(client, ("ghost", "secret"))
    assert_error(response, "invalid_client", 401)
    public = password_grant(client, None, client_id="ghost")
    assert_error(public, "invalid_client", 400)


def test_no_client_authentication_at_all_is_invalid_client(client, alice):
    assert_error(password_grant(client, None), "invalid_client", 400)


def test_confidential_client_cannot_authenticate_with_none(client, basic, alice):
    response = password_grant(client, None, client_id="webapp")
    assert_error(response, "invalid_client", 400)


def test_confidential_client_must_use_its_registered_method(client, components, basic, alice):
    as_post = password_form(client_id="webapp", client_secret=basic[1])
    assert_error(client.post(TOKEN, data=as_post), "invalid_client", 400)
    secret = add_client(components.store, "poster", method=AuthMethod.CLIENT_SECRET_POST)
    assert_error(password_grant(client, ("poster", secret)), "invalid_client", 401)


def test_wrong_method_names_the_registered_and_the_attempted_method(
    client, components, basic, alice
):
    as_post = password_form(client_id="webapp", client_secret=basic[1])
    description = client.post(TOKEN, data=as_post).json()["error_description"]
    assert "registered for client_secret_basic" in description
    assert "used client_secret_post" in description
    assert "--auth-method client_secret_post" in description

    secret = add_client(components.store, "poster", method=AuthMethod.CLIENT_SECRET_POST)
    response = password_grant(client, ("poster", secret))
    assert "registered for client_secret_post" in response.json()["error_description"]
    assert "used client_secret_basic" in response.headers["www-authenticate"]

    add_client(components.store, "spa", method=AuthMethod.NONE)
    with_secret = password_form(client_id="spa", client_secret="anything")
    assert "registered for none" in client.post(TOKEN, data=with_secret).json()["error_description"]


def test_wrong_secret_and_unknown_client_keep_the_generic_description(client, basic, alice):
    wrong = password_grant(client, ("webapp", basic[1] + "x"))
    unknown = password_grant(client, ("ghost", "secret"))
    for response in (wrong, unknown):
        assert response.json()["error_description"] == "Client authentication failed."


def test_public_client_with_a_secret_is_invalid_client(client, components, alice):
    add_client(components.store, "spa", method=AuthMethod.NONE)
    form = password_form(client_id="spa", client_secret="anything")
    assert_error(client.post(TOKEN, data=form), "invalid_client", 400)


def test_repeated_parameter_is_invalid_request(client, components, basic, alice):
    body = f"grant_type=password&username=alice&password={PASSWORD}&scope=read&scope=write"
    response = client.post(
        TOKEN,
        content=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=basic,
    )
    body_json = assert_error(response, "invalid_request")
    assert "scope" in body_json["error_description"]
    assert refresh_count(components) == 0


@pytest.mark.parametrize("where", ["password", "client_secret", "grant_type"])
def test_parameters_in_the_query_string_are_invalid_request(
    client, components, basic, alice, where
):
    form = password_form()
    query = {where: form.pop(where, basic[1])}
    response = client.post(TOKEN, params=query, data=form, auth=basic)
    assert_error(response, "invalid_request")
    assert refresh_count(components) == 0


CREDENTIALS_IN_URL = (
    "Credentials are not accepted in the URL (RFC 6749 sections 2.3.1 and 3.2): "
    "send them in the application/x-www-form-urlencoded request body."
)


@pytest.mark.parametrize("where", ["password", "client_secret", "refresh_token"])
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "application/json", "text/plain", None]
)
@pytest.mark.usefixtures("alice")
def test_credentials_in_the_query_string_are_refused_as_credentials_in_the_url(
    client, components, basic, where, content_type
):
    """RFC 6749 §2.3.1, §3.2: said plainly, whatever the body (or none) looks like."""
    form = password_form()
    query = {where: form.pop(where, basic[1])}
    headers = {"Content-Type": content_type} if content_type else {}
    body = "&".join(f"{k}={v}" for k, v in form.items()) if content_type else ""
    response = client.post(TOKEN, params=query, content=body, headers=headers, auth=basic)
    assert assert_error(response, "invalid_request")["error_description"] == CREDENTIALS_IN_URL
    assert refresh_count(components) == 0
    # Troubleshooting quotes it up to the colon.
    assert CREDENTIALS_IN_URL.partition(": ")[0] in readme_section("Troubleshooting")


@pytest.mark.parametrize("path", [REVOKE, INTROSPECT])
def test_a_token_in_the_query_string_of_revoke_or_introspect_is_credentials_in_the_url(
    client, basic, path
):
    response = client.post(path, params={"token": "x"}, auth=basic)
    assert assert_error(response, "invalid_request")["error_description"] == CREDENTIALS_IN_URL


def test_json_body_is_invalid_request(client, basic, alice):
    response = client.post(TOKEN, json=password_form(), auth=basic)
    assert_error(response, "invalid_request")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/json", ""]
)
def test_a_body_that_is_not_form_encoded_is_invalid_request(client, basic, alice, content_type):
    body = f"grant_type=password&username=alice&password={PASSWORD}".encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(TOKEN, content=body, headers=headers, auth=basic)
    assert_error(response, "invalid_request")


def test_form_content_type_with_charset_is_accepted(client, alice, basic):
    body = f"grant_type=password&username=alice&password={PASSWORD}".encode()
    response = client.post(
        TOKEN,
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
        auth=basic,
    )
    assert_token_response(response, "openid profile")


def test_basic_auth_plus_client_secret_in_the_body_is_invalid_request(client, alice, basic):
    form = password_form(client_secret=basic[1])
    assert_error(client.post(TOKEN, data=form, auth=basic), "invalid_request")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_json(client, method):
    response = client.request(method, TOKEN)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]


def test_error_responses_are_not_cacheable(client, alice, basic):
    response = password_grant(client, basic, password="wrong")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
