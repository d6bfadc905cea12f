"""Domain records: roles, client secrets compared as hashes, refresh-record state."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import pytest

from issuer.errors import (
    BadSignatureError,
    ConfigError,
    IssuerError,
    PasswordPolicyError,
    TokenError,
)
from issuer.models import AuthMethod, Client, RefreshRecord, Role, User, hash_client_secret

# -- roles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "role"), [("admin", Role.ADMIN), ("engineer", Role.ENGINEER), ("viewer", Role.VIEWER)]
)
def test_role_parse_accepts_each_role_by_name(text, role):
    assert Role.parse(text) is role
    assert str(role) == text  # what the ``role`` claim carries


@pytest.mark.parametrize("text", ["root", "Admin", " admin", "", "ADMIN", "viewer,admin"])
def test_role_parse_refuses_anything_else_listing_the_roles(text):
    with pytest.raises(ValueError) as caught:
        Role.parse(text)
    assert "expected admin | engineer | viewer" in str(caught.value)
    assert repr(text) in str(caught.value)


# -- clients ---------------------------------------------------------------------------


def confidential(secret: str, method: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC) -> Client:
    return Client(client_id="webapp", auth_method=method, secret_hash=hash_client_secret(secret))


def test_client_secrets_are_stored_as_sha256_hex():
    secret = secrets.token_urlsafe(32)
    assert hash_client_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in hash_client_secret(secret)


@pytest.mark.parametrize("method", [AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST])
def test_the_right_secret_is_accepted(method):
    secret = secrets.token_urlsafe(32)
    assert confidential(secret, method).check_secret(secret) is True


@pytest.mark.parametrize(
    "presented",
    ["", "wrong", "SECRET", "secret ", " secret", "secre", "secret\x00", "s\u00e9cret"],
)
def test_a_wrong_secret_is_refused(presented):
    assert confidential("secret").check_secret(presented) is False


def test_presenting_the_stored_hash_itself_is_refused():
    client = confidential("secret")
    assert client.check_secret(client.secret_hash) is False


@pytest.mark.parametrize("presented", [None, b"secret", 42, "\ud800"])
def test_a_presented_secret_of_the_wrong_kind_is_refused_without_error(presented):
    assert confidential("secret").check_secret(presented) is False


def test_a_public_client_never_accepts_a_secret():
    public = Client(client_id="spa", auth_method=AuthMethod.NONE)
    assert public.is_public
    assert public.check_secret("") is False
    assert public.check_secret("anything") is False
    # Even a stray hash on a public client does not make it confidential.
    stray = dataclasses.replace(public, secret_hash=hash_client_secret("known"))
    assert stray.check_secret("known") is False


def test_a_confidential_client_without_a_hash_accepts_nothing():
    client = Client(client_id="webapp", auth_method=AuthMethod.CLIENT_SECRET_POST)
    assert client.check_secret("") is False and client.check_secret("x") is False


def test_a_corrupt_stored_hash_refuses_without_error():
    client = dataclasses.replace(confidential("secret"), secret_hash="not-hex-\u00e9")
    assert client.check_secret("secret") is False


def test_secrets_and_hashes_stay_out_of_repr():
    secret = secrets.token_urlsafe(32)
    client = confidential(secret)
    assert secret not in repr(client) and client.secret_hash not in repr(client)
    user = User(id="u", username="alice", role=Role.ADMIN, password_hash="$2b$04$" + "a" * 53)
    assert "$2b$" not in repr(user)


# -- refresh records -------------------------------------------------------------------


def record(**changes) -> RefreshRecord:
    base = RefreshRecord(
        jti="j1",
        family_id="f1",
        user_id="u1",
        client_id="webapp",
        scope="read",
        issued_at=100,
        expires_at=200,
    )
    return dataclasses.replace(base, **changes)


def test_a_fresh_refresh_record_is_usable():
    assert record().is_usable is True


def test_a_spent_refresh_record_is_not_usable():
    assert record(spent_at=150).is_usable is False


def test_a_revoked_refresh_record_is_not_usable():
    assert record(revoked_at=150).is_usable is False
    assert record(spent_at=140, revoked_at=150).is_usable is False


def test_a_spent_or_revoked_time_of_zero_still_counts():
    """0 is a timestamp, not "unset": only None means never."""
    assert record(spent_at=0).is_usable is False
    assert record(revoked_at=0).is_usable is False


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        record().spent_at = 1  # type: ignore[misc]


# -- the exception tree ----------------------------------------------------------------


def test_config_errors_list_every_problem():
    error = ConfigError(["url: bad", "port: bad"])
    assert error.problems == ["url: bad", "port: bad"]
    assert "url: bad" in str(error) and "port: bad" in str(error)
    assert isinstance(error, IssuerError) and error.code == "invalid_config"


def test_password_policy_errors_name_the_broken_rules():
    error = PasswordPolicyError(["a digit", "a special character"])
    assert str(error) == "password must have a digit, a special character"
    assert error.failures == ["a digit", "a special character"]


def test_token_errors_belong_to_the_tree_with_a_code():
    assert issubclass(BadSignatureError, TokenError) and issubclass(TokenError, IssuerError)
    assert BadSignatureError.code == "bad_signature"
