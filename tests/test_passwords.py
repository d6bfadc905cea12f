"""Passwords: bcrypt round trips, no silent truncation, one bcrypt per check, strength rules."""

from __future__ import annotations

import re

import bcrypt
import pytest

from issuer.passwords import (
    PasswordHasher,
    generate_password_reset_token,
    hash_password,
    password_strength_failures,
    validate_password_strength,
    verify_password,
)

ROUNDS = 4
STRONG = "Corr3ct-Horse!"


@pytest.fixture
def checkpw_calls(monkeypatch):
    """Every call to the real ``bcrypt.checkpw``, recorded as (password, hash)."""
    calls: list[tuple[bytes, bytes]] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    return calls


def cost_of(hashed: bytes | str) -> int:
    text = hashed.decode() if isinstance(hashed, bytes) else hashed
    match = re.fullmatch(r"\$2b\$(\d\d)\$.{53}", text)
    assert match, text
    return int(match.group(1))


# -- hashing -------------------------------------------------------------------


def test_a_hashed_password_verifies_and_a_wrong_one_does_not():
    hashed = hash_password(STRONG, rounds=ROUNDS)
    assert verify_password(STRONG, hashed) is True
    assert verify_password(STRONG + "x", hashed) is False
    assert verify_password(STRONG.lower(), hashed) is False


def test_the_hash_is_bcrypt_at_the_requested_cost_with_a_fresh_salt():
    first = hash_password(STRONG, rounds=ROUNDS)
    second = hash_password(STRONG, rounds=5)
    assert cost_of(first) == 4 and cost_of(second) == 5
    assert hash_password(STRONG, rounds=ROUNDS) != first
    assert STRONG not in first
    assert bcrypt.checkpw(STRONG.encode(), first.encode())  # a plain bcrypt hash, portable


def test_the_hasher_uses_the_cost_it_was_given():
    assert cost_of(PasswordHasher(5).hash(STRONG)) == 5


@pytest.mark.parametrize("rounds", [3, 32, 0, -1])
def test_a_cost_outside_bcrypts_range_is_refused(rounds):
    with pytest.raises(ValueError, match="rounds"):
        PasswordHasher(rounds)


def test_unicode_passwords_round_trip():
    password = "Pässwörd-日本語-1"
    hashed = hash_password(password, rounds=ROUNDS)
    assert verify_password(password, hashed)
    assert not verify_password("Passwort-日本語-1", hashed)


def test_a_password_of_exactly_72_bytes_round_trips():
    password = "x" * 70 + "é"  # 72 bytes in UTF-8
    assert len(password.encode()) == 72
    assert verify_password(password, hash_password(password, rounds=ROUNDS))


@pytest.mark.parametrize(
    "password",
    ["", "x" * 73, "€" * 25, "x" * 71 + "é"],
    ids=["empty", "73-ascii", "75-bytes-in-25-chars", "73-bytes-split-char"],
)
def test_hashing_an_empty_or_over_72_byte_password_raises_value_error(password):
    with pytest.raises(ValueError, match=r"empty|72 bytes"):
        hash_password(password, rounds=ROUNDS)


def test_hashing_a_password_with_a_nul_byte_raises_value_error():
    with pytest.raises(ValueError, match="NUL"):
        hash_password("Abc\x00def1!", rounds=ROUNDS)


@pytest.mark.parametrize("password", [None, b"Corr3ct-Horse!", 12345678])
def test_hashing_something_other_than_a_string_raises_type_error(password):
    with pytest.raises(TypeError):
        hash_password(password, rounds=ROUNDS)


# -- checking never raises ---------------------------------------------------------

STORED = hash_password("x" * 72, rounds=ROUNDS)


@pytest.mark.parametrize(
    "password",
    [
        "x" * 72 + "y",  # the first 72 bytes equal the stored password: no truncation
        "x" * 72 + "x" * 100,
        "x" * 71 + "é",  # 73 bytes, the first 72 equal "x" * 71 + one byte of é
        "x" * 71,
        "",
        "x" * 36 + "\x00" + "x" * 35,
        "\ud800" * 10,  # lone surrogates, as a sloppy decoder may produce
    ],
    ids=["72+1", "72+100", "split-char", "71", "empty", "nul", "surrogates"],
)
def test_verify_password_is_false_for_anything_but_the_stored_password(password):
    assert verify_password(password, STORED, rounds=ROUNDS) is False


def test_a_password_with_a_nul_byte_never_matches_its_prefix():
    stored = hash_password("Abcdef1!", rounds=ROUNDS)
    assert verify_password("Abcdef1!\x00anything", stored, rounds=ROUNDS) is False


@pytest.mark.parametrize(
    "hashed",
    [
        None,
        "",
        "not a hash",
        "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",  # sha256 hex
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
        STORED[:-1],  # truncated
        STORED + "A",  # too long
        STORED.replace("$2b$04$", "$2b$99$"),  # impossible cost
        STORED.replace("$2b$", "$2x$"),  # unknown variant
        STORED[:29] + "!" * 31,  # not bcrypt's base64
        STORED[:29] + "é" * 31,  # not even ASCII
        b"$2b$04$" + b"a" * 53,  # bytes, not str
        12345,
    ],
    # Stable ids (STORED has a random salt): pytest-xdist workers must collect the same tests.
    ids=[
        "none",
        "empty",
        "not-a-hash",
        "sha256-hex",
        "argon2id",
        "truncated",
        "too-long",
        "impossible-cost",
        "unknown-variant",
        "not-bcrypt-base64",
        "not-ascii",
        "bytes",
        "int",
    ],
)
def test_verify_password_is_false_for_a_missing_or_malformed_hash(hashed):
    assert verify_password("x" * 72, hashed, rounds=ROUNDS) is False


@pytest.mark.parametrize("password", [None, b"x" * 72, 72, ["x"]])
def test_verify_password_is_false_for_a_password_that_is_not_a_string(password):
    assert verify_password(password, STORED, rounds=ROUNDS) is False


# -- one bcrypt check per attempt, whatever goes wrong -----------------------------------


@pytest.fixture
def hasher():
    return PasswordHasher(ROUNDS)


@pytest.fixture
def stored(hasher):
    return hasher.hash(STRONG)


@pytest.mark.parametrize(
    ("case", "password", "hashed"),
    [
        ("unknown user", STRONG, None),
        ("malformed hash", STRONG, "$2b$04$" + "!" * 53),
        ("non-bcrypt hash", STRONG, "plaintext"),
        ("empty password", "", "STORED"),
        ("over 72 bytes", "x" * 73, "STORED"),
        ("over 72 bytes, same prefix", STRONG + "x" * 70, "STORED"),
        ("nul byte", STRONG + "\x00", "STORED"),
        ("not a string", None, "STORED"),
        ("wrong password", "Wr0ng-Horse!", "STORED"),
    ],
)
def test_every_failed_check_costs_exactly_one_bcrypt(hasher, checkpw_calls, case, password, hashed):
    hashed = hasher.hash(STRONG) if hashed == "STORED" else hashed
    assert hasher.verify(password, hashed) is False, case
    assert len(checkpw_calls) == 1, case
    assert cost_of(checkpw_calls[0][1]) == ROUNDS, case


def test_a_successful_check_costs_exactly_one_bcrypt(hasher, stored, checkpw_calls):
    assert hasher.verify(STRONG, stored) is True
    assert checkpw_calls == [(STRONG.encode(), stored.encode())]


def test_the_dummy_hash_has_the_hashers_cost(checkpw_calls):
    assert PasswordHasher(5).verify(STRONG, None) is False
    assert PasswordHasher(4).verify(STRONG, None) is False
    assert [cost_of(h) for _, h in checkpw_calls] == [5, 4]
    # The dummy check never uses the presented password (it could never match anyway).
    assert all(pw != STRONG.encode() for pw, _ in checkpw_calls)


def test_verify_password_spends_one_bcrypt_at_the_given_cost_for_an_unknown_user(checkpw_calls):
    assert verify_password(STRONG, None, rounds=5) is False
    assert len(checkpw_calls) == 1 and cost_of(checkpw_calls[0][1]) == 5


def test_verify_password_spends_one_bcrypt_at_the_stored_cost_on_a_bad_password(checkpw_calls):
    stored = hash_password(STRONG, rounds=5)
    assert verify_password("x" * 100, stored, rounds=ROUNDS) is False
    assert len(checkpw_calls) == 1 and cost_of(checkpw_calls[0][1]) == 5


# -- strength ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "broken"),
    [
        ("Abcde1!", "at least 8 characters"),
        ("abcdefg1!", "an uppercase letter"),
        ("ABCDEFG1!", "a lowercase letter"),
        ("Abcdefgh!", "a digit"),
        ("Abcdefg12", "a special character"),
        ("Aa1!" + "é" * 35, "at most 72 bytes in UTF-8"),
        ("Abcdef1!\x00", "no NUL character"),
        ("Abcdef1!\udc80", "only valid Unicode characters"),
    ],
)
def test_each_strength_rule_is_reported_on_its_own(password, broken):
    assert password_strength_failures(password) == [broken]
    assert validate_password_strength(password) is False


@pytest.mark.parametrize(
    "password",
    [
        "Abcdef1!",
        STRONG,
        "Ünïcödé1!",
        "Пароль-123",
        "Abcdefg1🙂",  # an emoji is a special character
        "Abc def 1",  # so is a space
        "A" * 35 + "b1!" + "c" * 34,  # exactly 72 bytes
    ],
)
def test_strong_passwords_pass_every_rule(password):
    assert password_strength_failures(password) == []
    assert validate_password_strength(password) is True


def test_length_counts_characters_not_bytes():
    password = "Ab1!éé"  # 6 characters, 8 bytes
    assert len(password.encode()) == 8
    assert password_strength_failures(password) == ["at least 8 characters"]


def test_every_broken_rule_is_listed_at_once():
    assert password_strength_failures("") == [
        "at least 8 characters",
        "an uppercase letter",
        "a lowercase letter",
        "a digit",
        "a special character",
    ]


@pytest.mark.parametrize("password", [None, b"Abcdef1!", 12345678])
def test_validate_password_strength_is_false_for_a_non_string(password):
    assert validate_password_strength(password) is False


def test_every_strong_password_can_be_hashed():
    """The strength rules admit nothing that hashing would refuse."""
    for password in ("Abcdef1!", "A" * 35 + "b1!" + "c" * 34, "Ünïcödé1!"):
        assert validate_password_strength(password)
        assert verify_password(password, hash_password(password, rounds=ROUNDS))


# -- reset tokens ------------------------------------------------------------------


def test_reset_tokens_are_url_safe_256_bit_and_unique():
    tokens = [generate_password_reset_token() for _ in range(2000)]
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token), token
    assert len(set(tokens)) == len(tokens)
    # Every character of the alphabet turns up: the tokens are not drawn from a narrow set.
    assert set("".join(tokens)) == set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
