"""Sensitive values: Secret hides itself, URLs lose their password, weak secrets are refused."""

from __future__ import annotations

import secrets

import pytest

from issuer.sensitive import (
    MIN_SECRET_ENTROPY_BITS,
    Secret,
    estimated_entropy_bits,
    redact_url,
    secret_problem,
)

# -- Secret --------------------------------------------------------------------


def test_a_secret_never_shows_in_repr_str_or_format():
    value = secrets.token_urlsafe(48)
    secret = Secret(value)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert value not in shown
        assert "**********" in shown
    assert secret.reveal() == value


def test_secrets_compare_and_hash_by_value_and_never_equal_a_plain_string():
    assert Secret("same") == Secret("same")
    assert hash(Secret("same")) == hash(Secret("same"))
    assert Secret("one") != Secret("two")
    assert Secret("same") != "same"


# -- redact_url ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://app:hunter2-pw@db.internal:5432/issuer?sslmode=require",
            "postgresql://app:***@db.internal:5432/issuer?sslmode=require",
        ),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://app:p%40ss@db/issuer", "postgresql://app:***@db/issuer"),
    ],
)
def test_redact_url_replaces_the_password_and_keeps_the_rest(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["sqlite:///var/issuer.db", "postgresql://app@db/issuer", "memory://", "redis://cache:6379/0"],
)
def test_redact_url_leaves_a_url_without_a_password_alone(url):
    assert redact_url(url) == url


def test_redact_url_of_an_unparsable_url_shows_nothing_of_it():
    assert redact_url("redis://user:pw@[::1/0") == "<unparsable URL>"


# -- secret strength -----------------------------------------------------------


def test_a_secret_under_32_bytes_is_refused_saying_how_to_make_one():
    problem = secret_problem(secrets.token_urlsafe(32)[:31])
    assert problem is not None
    assert "31 bytes" in problem and "secrets.token_urlsafe" in problem


def test_size_is_counted_in_utf8_bytes_not_characters():
    problem = secret_problem("é" * 16)  # 16 characters, 32 bytes, but one symbol repeated
    assert problem is not None and "bytes" not in problem and "guessable" in problem


@pytest.mark.parametrize(
    "weak",
    [
        "a" * 40,
        "password" * 5,
        "abcdefghij" * 4,  # ten distinct characters: a plain Shannon count calls it 133 bits
        "Tr0ub4dor&3-" * 3 + "xyzw",
        "0123456789abcdefghijklmnopqrstuvwxyzABCD",
    ],
)
def test_an_obviously_guessable_secret_of_40_bytes_is_refused(weak):
    assert len(weak.encode()) >= 40
    assert estimated_entropy_bits(weak) < MIN_SECRET_ENTROPY_BITS
    problem = secret_problem(weak)
    assert problem is not None and "guessable" in problem
    assert weak not in problem


def test_random_secrets_are_accepted():
    for _ in range(100):
        for secret in (secrets.token_urlsafe(32), secrets.token_hex(32)):
            assert secret_problem(secret) is None


def test_the_entropy_of_nothing_is_zero():
    assert estimated_entropy_bits("") == 0.0
