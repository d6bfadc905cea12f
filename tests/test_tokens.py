"""Tokens: RFC 9068 access tokens and refresh tokens, verified step by step, each failure named."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import warnings
from datetime import timedelta

import jwt as pyjwt
import pytest

from issuer import jwtrules, tokens
from issuer.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidAudienceError,
    InvalidIssuerError,
    MalformedTokenError,
    NotYetValidError,
    RevokedTokenError,
    TokenError,
    UnknownUserError,
    WrongTokenTypeError,
)
from issuer.keystore import (
    KeyRecord,
    KeyState,
    LoadedKey,
    StaticKeyStore,
    build_key_set,
    generate_key,
    key_id,
)
from issuer.models import Role, User
from issuer.tokens import TokenService

SECRET = secrets.token_urlsafe(48)
ISS = "https://id.example.com"
AUD = "orders-api"
LEEWAY = 30
START = int(time.time())  # near real time, so PyJWT's own exp check agrees


class Clock:
    """A clock the test moves by hand; starts at a fractional second to prove flooring."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Revocations:
    """A RevocationCheck that refuses the listed jtis and records what it was asked."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.asked: list[str] = []

    def is_revoked(self, claims):
        self.asked.append(claims["jti"])
        return claims["jti"] in self.revoked


class Keys:
    """The smallest KeyStore: a fixed KeySet."""

    def __init__(self, key_set) -> None:
        self.key_set = key_set

    def current(self):
        return self.key_set


def asymmetric_keys(alg: str, *others: LoadedKey) -> tuple[Keys, LoadedKey]:
    key = generate_key(alg, rsa_key_size=2048)
    record = KeyRecord(kid=key_id(key), alg=alg, state=KeyState.ACTIVE, file="", created_at=0)
    loaded = LoadedKey(record, key)
    return Keys(build_key_set([loaded, *others], alg)), loaded


@pytest.fixture
def clock():
    return Clock(START + 0.75)


@pytest.fixture
def revocations():
    return Revocations()


@pytest.fixture
def service(clock, revocations):
    return TokenService(
        StaticKeyStore(SECRET),
        issuer=ISS,
        audience=AUD,
        access_ttl=1800,
        refresh_ttl=604800,
        leeway=LEEWAY,
        clock=clock,
        revocations=revocations,
    )


@pytest.fixture
def user():
    return User(id="u-123", username="alice", role=Role.ENGINEER)


@pytest.fixture
def access(service, user):
    """An access token for alice and its claims."""
    return service.create_access_token(service.access_claims_for(user, "webapp", "openid read"))


@pytest.fixture
def refresh(service, user):
    return service.create_refresh_token({"sub": user.id, "client_id": "webapp", "scope": "read"})


def kid_of(service: TokenService) -> str:
    return service.keys.current().signing.kid


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload, secret: bytes | str = SECRET) -> str:
    """An HS256 compact JWS built by hand (``payload``: claims, or raw bytes)."""
    key = secret.encode() if isinstance(secret, str) else secret
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(raw)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def resign(service, claims: dict, *, typ: str = "at+jwt", **header) -> str:
    """``claims`` signed with the service's own key and kid: only the claims are at fault."""
    return forge({"alg": "HS256", "kid": kid_of(service), "typ": typ, **header}, claims)


def refused(service, token, error: type[TokenError], token_type: str = tokens.ACCESS):
    """Verify ``token`` expecting exactly ``error``; its message never quotes the token."""
    with pytest.raises(TokenError) as caught:
        service.verify(token, token_type)
    assert type(caught.value) is error, repr(caught.value)
    if isinstance(token, str) and token:
        assert token not in str(caught.value)
    return caught.value


# -- minting ---------------------------------------------------------------------


def test_access_token_header_is_rfc_9068(service, access):
    token, _ = access
    header = pyjwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": kid_of(service), "typ": "at+jwt"}


def test_access_token_claims_are_complete_whole_numbers_and_floored(access, user):
    _, claims = access
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
        "username",
        "role",
        "roles",
        "type",
    }
    assert claims["iss"] == ISS and claims["aud"] == AUD
    assert claims["sub"] == user.id and claims["username"] == "alice"
    assert claims["role"] == "engineer" and claims["roles"] == ["engineer"]
    assert claims["client_id"] == "webapp" and claims["scope"] == "openid read"
    assert claims["type"] == "access"
    assert type(claims["iat"]) is int and type(claims["exp"]) is int
    assert claims["iat"] == START  # START + 0.75, floored
    assert claims["exp"] - claims["iat"] == 1800


def test_the_returned_claims_are_the_signed_claims(service, access):
    token, claims = access
    assert service.verify(token) == claims


def test_access_tokens_verify_with_pyjwt(access):
    token, claims = access
    decoded = pyjwt.decode(token, SECRET, algorithms=["HS256"], audience=AUD, issuer=ISS)
    assert decoded == claims


def test_refresh_tokens_are_jwts_for_the_issuer_itself(service, refresh):
    token, claims = refresh
    assert pyjwt.get_unverified_header(token)["typ"] == "rt+jwt"
    assert claims["type"] == "refresh" and claims["aud"] == ISS
    assert claims["exp"] - claims["iat"] == 604800
    assert claims["fam"] and claims["jti"] and claims["client_id"] == "webapp"
    decoded = pyjwt.decode(token, SECRET, algorithms=["HS256"], audience=ISS, issuer=ISS)
    assert decoded == claims
    # A resource server configured for the API audience refuses it.
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, SECRET, algorithms=["HS256"], audience=AUD, issuer=ISS)


def test_a_refresh_token_keeps_the_family_it_is_given(service):
    _, claims = service.create_refresh_token({"sub": "u-1", "fam": "family-1"})
    assert claims["fam"] == "family-1"


def test_every_token_has_its_own_jti(service):
    jtis = {service.create_access_token({"sub": "u-1"})[1]["jti"] for _ in range(200)}
    assert len(jtis) == 200


@pytest.mark.parametrize("data", [{}, {"sub": ""}, {"sub": None}, {"sub": 42}])
def test_a_token_needs_a_string_subject(service, data):
    with pytest.raises(ValueError, match="sub"):
        service.create_access_token(data)
    with pytest.raises(ValueError, match="sub"):
        service.create_refresh_token(data)


def test_reserved_claims_cannot_be_overridden_by_the_caller(service, clock):
    data = {
        "sub": "u-1",
        "iss": "https://evil.example",
        "aud": "everything",
        "iat": 1,
        "exp": 4102444800,
        "nbf": 1,
        "jti": "chosen",
        "type": "refresh",
        "username": "kept",
    }
    token, claims = service.create_access_token(data)
    assert claims["iss"] == ISS and claims["aud"] == AUD
    assert claims["iat"] == START and claims["exp"] == START + 1800
    assert claims["jti"] != "chosen" and claims["type"] == "access"
    assert "nbf" not in claims and claims["username"] == "kept"
    assert service.verify(token) == claims


def test_an_explicit_lifetime_is_honoured(service):
    _, claims = service.create_access_token({"sub": "u-1"}, expires_in=300)
    assert claims["exp"] - claims["iat"] == 300


def test_the_subject_is_the_only_required_input(service):
    token, claims = service.create_access_token({"sub": "u-1"})
    assert claims["client_id"] == "issuer"  # a default, so RFC 9068's claim is never absent
    assert service.verify(token)["sub"] == "u-1"


# -- verification: time ---------------------------------------------------------------


def test_a_token_is_accepted_until_its_expiry_plus_leeway(service, access, clock):
    token, claims = access
    clock.now = claims["exp"] + LEEWAY - 1
    assert service.verify(token)["jti"] == claims["jti"]


def test_a_token_past_its_expiry_plus_leeway_is_expired(service, access, clock):
    token, claims = access
    clock.now = claims["exp"] + LEEWAY
    refused(service, token, ExpiredTokenError)
    clock.now = claims["exp"] + 86400
    refused(service, token, ExpiredTokenError)


def test_an_expired_refresh_token_is_expired(service, refresh, clock):
    token, claims = refresh
    clock.now = claims["exp"] + LEEWAY
    refused(service, token, ExpiredTokenError, "refresh")


def test_a_token_issued_in_the_future_beyond_leeway_is_not_yet_valid(service, access, clock):
    token, claims = access
    clock.now = claims["iat"] - LEEWAY  # within leeway: clock skew is tolerated
    assert service.verify(token)
    clock.now = claims["iat"] - LEEWAY - 1
    refused(service, token, NotYetValidError)


def test_a_not_before_in_the_future_beyond_leeway_is_not_yet_valid(service, access):
    _, claims = access
    assert service.verify(resign(service, {**claims, "nbf": START + LEEWAY}))
    refused(service, resign(service, {**claims, "nbf": START + LEEWAY + 1}), NotYetValidError)


# -- verification: signature, key and algorithm ------------------------------------------


def test_the_forging_helper_makes_tokens_the_service_accepts(service, access):
    """Without this, the refusals below could be the helper's fault."""
    _, claims = access
    assert service.verify(resign(service, claims)) == claims


def test_a_tampered_payload_has_a_bad_signature(service, access):
    token, claims = access
    header, _, signature = token.split(".")
    payload = b64(json.dumps({**claims, "role": "admin"}).encode())
    refused(service, f"{header}.{payload}.{signature}", BadSignatureError)


def test_a_flipped_signature_is_a_bad_signature(service, access):
    token, _ = access
    head, _, signature = token.rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    refused(service, f"{head}.{flipped}", BadSignatureError)


def test_a_token_signed_with_another_secret_is_refused(service, access, clock):
    _, claims = access
    other = secrets.token_urlsafe(48)
    # Same kid, other secret: the signature is wrong.
    refused(service, resign_with(service, claims, other), BadSignatureError)
    # Another issuer's own token: its kid is unknown here.
    stranger = TokenService(StaticKeyStore(other), issuer=ISS, audience=AUD, clock=clock)
    refused(service, stranger.create_access_token({"sub": "u-1"})[0], BadSignatureError)


def resign_with(service, claims, secret):
    return forge({"alg": "HS256", "kid": kid_of(service), "typ": "at+jwt"}, claims, secret)


def test_an_unknown_or_missing_kid_is_refused(service, access):
    _, claims = access
    unknown = forge({"alg": "HS256", "kid": "hs-unknown", "typ": "at+jwt"}, claims)
    error = refused(service, unknown, BadSignatureError)
    assert "key" in str(error)
    refused(service, forge({"alg": "HS256", "typ": "at+jwt"}, claims), BadSignatureError)
    refused(service, resign(service, claims, kid=7), BadSignatureError)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS512", "RS256"])
def test_an_algorithm_other_than_the_keys_is_refused(service, access, alg):
    token, claims = access
    header = {"alg": alg, "kid": kid_of(service), "typ": "at+jwt"}
    payload = b64(json.dumps(claims).encode())
    unsigned = f"{b64(json.dumps(header).encode())}.{payload}."
    refused(service, unsigned, BadSignatureError)
    # Even with the original, valid HS256 signature attached.
    refused(service, unsigned + token.rsplit(".", 1)[1], BadSignatureError)


def test_an_hs256_token_naming_an_asymmetric_kid_is_refused(clock):
    """Algorithm confusion: HMAC keyed with the public key the JWKS hands to everyone."""
    keys, loaded = asymmetric_keys("EdDSA")
    service = TokenService(keys, issuer=ISS, audience=AUD, clock=clock)
    _, claims = service.create_access_token({"sub": "u-1"})
    public_pem = loaded.key.as_pem(private=False)
    public_raw = json.dumps(loaded.key.as_dict(private=False)).encode()
    for hmac_key in (public_pem, public_raw):
        token = forge({"alg": "HS256", "kid": loaded.kid, "typ": "at+jwt"}, claims, hmac_key)
        refused(service, token, BadSignatureError)


def test_a_critical_header_is_refused(service, access):
    _, claims = access
    refused(service, resign(service, claims, crit=["exp"]), BadSignatureError)


# -- verification: type, issuer, audience ---------------------------------------------------


def test_an_access_token_is_not_a_refresh_token(service, access):
    refused(service, access[0], WrongTokenTypeError, "refresh")


def test_a_refresh_token_is_not_an_access_token(service, refresh):
    refused(service, refresh[0], WrongTokenTypeError, "access")


def test_the_typ_header_must_match_the_type_claim(service, access, refresh):
    _, access_claims = access
    _, refresh_claims = refresh
    refused(service, resign(service, access_claims, typ="rt+jwt"), WrongTokenTypeError)
    refused(service, resign(service, access_claims, typ="JWT"), WrongTokenTypeError)
    refused(service, resign(service, refresh_claims, typ="at+jwt"), WrongTokenTypeError, "refresh")
    untyped = forge({"alg": "HS256", "kid": kid_of(service)}, access_claims)
    refused(service, untyped, WrongTokenTypeError)


def test_the_typ_header_may_carry_the_media_type_prefix(service, access):
    _, claims = access
    assert service.verify(resign(service, claims, typ="application/AT+JWT")) == claims


@pytest.mark.parametrize("value", [None, "", "Access", "id", 1])
def test_a_type_claim_other_than_access_is_the_wrong_type(service, access, value):
    _, claims = access
    forged = {k: v for k, v in claims.items() if k != "type"}
    if value is not None:
        forged["type"] = value
    refused(service, resign(service, forged), WrongTokenTypeError)


def test_unknown_token_types_are_a_programming_error(service, access):
    with pytest.raises(ValueError, match="token_type"):
        service.verify(access[0], "id")


@pytest.mark.parametrize("iss", ["https://evil.example", ISS + "/", ISS.upper(), ""])
def test_another_issuer_is_refused(service, access, iss):
    _, claims = access
    refused(service, resign(service, {**claims, "iss": iss}), InvalidIssuerError)


def test_a_service_for_another_issuer_refuses_our_tokens(access, clock):
    other = TokenService(StaticKeyStore(SECRET), issuer=ISS + "/other", audience=AUD, clock=clock)
    refused(other, access[0], InvalidIssuerError)


@pytest.mark.parametrize("aud", ["billing-api", ["billing-api", "other"], ISS, ""])
def test_another_audience_is_refused(service, access, aud):
    _, claims = access
    refused(service, resign(service, {**claims, "aud": aud}), InvalidAudienceError)


def test_an_audience_list_naming_us_is_accepted(service, access):
    _, claims = access
    forged = {**claims, "aud": ["billing-api", AUD]}
    assert service.verify(resign(service, forged))["aud"] == ["billing-api", AUD]


# -- verification: malformed --------------------------------------------------------------


def signed_raw(service, payload: bytes) -> str:
    return forge({"alg": "HS256", "kid": kid_of(service), "typ": "at+jwt"}, payload)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "only.two",
        "a.b.c.d",
        "...",
        "",
        "é.é.é",
        "x" * 8193,
        b64(b"{not json") + ".e30.sig",
        b64(b"[1, 2]") + ".e30.sig",
        b64(b'"a string"') + ".e30.sig",
    ],
    ids=lambda t: t[:12] if t else "empty",
)
def test_garbage_is_malformed(service, token):
    refused(service, token, MalformedTokenError)


@pytest.mark.parametrize("token", [None, b"a.b.c", 42, ["a", "b", "c"]])
def test_a_token_that_is_not_a_string_is_malformed(service, token):
    with pytest.raises(MalformedTokenError):
        service.verify(token)
    with pytest.raises(MalformedTokenError):
        service.decode(token)


def test_an_oversized_real_token_is_malformed(service):
    token, _ = service.create_access_token({"sub": "u-1", "padding": "x" * 9000})
    refused(service, token, MalformedTokenError)


@pytest.mark.parametrize(
    "payload", [b"[1, 2, 3]", b'"claims"', b"42", b"null", b"{not json", b"\xff\xfe"]
)
def test_signed_claims_that_are_not_a_json_object_are_malformed(service, payload):
    refused(service, signed_raw(service, payload), MalformedTokenError)
    with pytest.raises(MalformedTokenError):
        service.decode(signed_raw(service, payload))


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "jti", "iss", "aud"])
def test_a_missing_required_claim_is_malformed(service, access, claim):
    _, claims = access
    error = refused(
        service,
        resign(service, {k: v for k, v in claims.items() if k != claim}),
        MalformedTokenError,
    )
    assert claim in str(error)


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", "tomorrow"), ("iat", "now"), ("sub", 123), ("jti", 5), ("exp", True), ("sub", "")],
)
def test_a_claim_of_the_wrong_shape_is_malformed(service, access, claim, value):
    _, claims = access
    refused(service, resign(service, {**claims, claim: value}), MalformedTokenError)


# -- revocation --------------------------------------------------------------------------


def test_a_revoked_token_is_refused(service, access, revocations):
    token, claims = access
    revocations.revoked.add(claims["jti"])
    refused(service, token, RevokedTokenError)


def test_check_revoked_false_skips_the_revocation_check(service, access, revocations):
    token, claims = access
    revocations.revoked.add(claims["jti"])
    assert service.verify(token, check_revoked=False) == claims


def test_the_revocation_check_is_asked_only_about_otherwise_valid_tokens(
    service, access, revocations, clock
):
    token, claims = access
    service.verify(token)
    assert revocations.asked == [claims["jti"]]
    clock.now = claims["exp"] + LEEWAY
    refused(service, token, ExpiredTokenError)
    refused(service, resign_with(service, claims, secrets.token_urlsafe(48)), BadSignatureError)
    assert revocations.asked == [claims["jti"]]


def test_every_failure_is_a_token_error_with_its_own_code():
    classes = [
        MalformedTokenError,
        BadSignatureError,
        ExpiredTokenError,
        NotYetValidError,
        WrongTokenTypeError,
        InvalidIssuerError,
        InvalidAudienceError,
        RevokedTokenError,
    ]
    assert all(issubclass(cls, TokenError) for cls in classes)
    assert len({cls.code for cls in classes}) == len(classes)


# -- decode (for tooling) --------------------------------------------------------------------


def test_decode_skips_expiry_and_type_but_checks_the_signature(service, access, refresh, clock):
    token, claims = access
    clock.now = claims["exp"] + 86400
    assert service.decode(token) == claims
    assert service.decode(refresh[0]) == refresh[1]
    header, _, signature = token.split(".")
    tampered = f"{header}.{b64(json.dumps({**claims, 'role': 'admin'}).encode())}.{signature}"
    with pytest.raises(BadSignatureError):
        service.decode(tampered)
    none_header = b64(json.dumps({"alg": "none", "kid": kid_of(service)}).encode())
    unsigned = f"{none_header}.{tampered.split('.')[1]}."
    with pytest.raises(BadSignatureError):
        service.decode(unsigned)


# -- current user -------------------------------------------------------------------------


@pytest.fixture
def users_service(service, memory_store):
    service.users = memory_store
    return service


def test_get_current_user_returns_the_tokens_user(users_service, memory_store):
    alice = memory_store.add_user("alice", "$2b$04$" + "a" * 53, Role.ADMIN)
    token, _ = users_service.create_access_token(users_service.access_claims_for(alice, "w", ""))
    assert users_service.get_current_user(token) == alice


def test_get_current_user_refuses_an_unknown_subject(users_service):
    token, _ = users_service.create_access_token({"sub": "no-such-user"})
    with pytest.raises(UnknownUserError):
        users_service.get_current_user(token)


def test_get_current_user_verifies_the_token_first(users_service, memory_store, clock):
    alice = memory_store.add_user("alice", "$2b$04$" + "a" * 53, Role.VIEWER)
    refresh_token, _ = users_service.create_refresh_token({"sub": alice.id})
    with pytest.raises(WrongTokenTypeError):
        users_service.get_current_user(refresh_token)
    token, claims = users_service.create_access_token({"sub": alice.id})
    clock.now = claims["exp"] + LEEWAY
    with pytest.raises(ExpiredTokenError):
        users_service.get_current_user(token)


def test_get_current_user_without_a_user_store_is_an_unknown_user(service, access):
    with pytest.raises(UnknownUserError):
        service.get_current_user(access[0])


# -- the module façade ------------------------------------------------------------------------


@pytest.fixture
def facade(users_service):
    tokens.configure(users_service)
    try:
        yield users_service
    finally:
        tokens.configure(None)


def test_the_facade_says_what_to_do_before_it_is_configured():
    tokens.configure(None)
    calls = [
        lambda: tokens.create_access_token({"sub": "u-1"}),
        lambda: tokens.create_refresh_token({"sub": "u-1"}),
        lambda: tokens.verify_token("a.b.c"),
        lambda: tokens.decode_token("a.b.c"),
        lambda: tokens.get_current_user("a.b.c"),
        tokens.get_service,
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="configure"):
            call()


def test_the_facade_mints_and_verifies_with_the_configured_service(facade, memory_store):
    alice = memory_store.add_user("alice", "$2b$04$" + "a" * 53, Role.ENGINEER)
    access_token = tokens.create_access_token({"sub": alice.id, "role": "engineer"})
    claims = tokens.verify_token(access_token)
    assert claims["sub"] == alice.id and claims["roles"] == ["engineer"]
    assert claims["exp"] - claims["iat"] == 1800
    assert tokens.decode_token(access_token) == claims
    assert tokens.get_current_user(access_token) == alice
    refresh_token = tokens.create_refresh_token({"sub": alice.id})
    assert tokens.verify_token(refresh_token, "refresh")["type"] == "refresh"
    with pytest.raises(WrongTokenTypeError):
        tokens.verify_token(refresh_token)
    with pytest.raises(UnknownUserError):
        tokens.get_current_user(tokens.create_access_token({"sub": "ghost"}))


def test_the_facade_honours_expires_delta(facade, clock):
    token = tokens.create_access_token({"sub": "u-1"}, expires_delta=timedelta(minutes=5))
    claims = tokens.verify_token(token)
    assert claims["exp"] - claims["iat"] == 300
    clock.now = claims["exp"] + LEEWAY
    with pytest.raises(ExpiredTokenError):
        tokens.verify_token(token)
    with pytest.raises(ValueError, match="sub"):
        tokens.create_access_token({"username": "no subject"})


# -- asymmetric keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_asymmetric_tokens_verify_with_pyjwt_and_the_public_key(alg, clock):
    keys, loaded = asymmetric_keys(alg)
    service = TokenService(keys, issuer=ISS, audience=AUD, clock=clock)
    token, claims = service.create_access_token({"sub": "u-1"})
    assert pyjwt.get_unverified_header(token) == {"alg": alg, "kid": loaded.kid, "typ": "at+jwt"}
    public_pem = loaded.key.as_pem(private=False)
    assert pyjwt.decode(token, public_pem, algorithms=[alg], audience=AUD, issuer=ISS) == claims
    assert service.verify(token) == claims


def test_eddsa_signs_and_verifies_without_any_warning(clock):
    keys, _ = asymmetric_keys("EdDSA")
    service = TokenService(keys, issuer=ISS, audience=AUD, clock=clock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token, claims = service.create_access_token({"sub": "u-1"})
        assert service.verify(token) == claims
        assert service.decode(token) == claims
    assert [str(w.message) for w in caught] == []
    assert pyjwt.get_unverified_header(token)["alg"] == "EdDSA"  # the name verifiers know


def test_building_a_service_leaves_the_warning_filters_alone(clock):
    before = list(warnings.filters)
    TokenService(asymmetric_keys("EdDSA")[0], issuer=ISS, audience=AUD, clock=clock)
    assert warnings.filters == before


def test_tokens_of_a_previous_key_verify_until_it_retires(clock):
    old_keys, old = asymmetric_keys("ES256")
    old_service = TokenService(old_keys, issuer=ISS, audience=AUD, clock=clock)
    token, claims = old_service.create_access_token({"sub": "u-1"})
    retire_at = START + 600
    previous = LoadedKey(
        KeyRecord(
            kid=old.kid,
            alg="ES256",
            state=KeyState.PREVIOUS,
            file="",
            created_at=0,
            retire_at=retire_at,
        ),
        old.key,
    )
    new_keys, new = asymmetric_keys("ES256", previous)
    service = TokenService(new_keys, issuer=ISS, audience=AUD, clock=clock)
    assert pyjwt.get_unverified_header(service.create_access_token({"sub": "u"})[0])["kid"] == (
        new.kid
    )
    assert service.verify(token) == claims
    clock.now = retire_at
    refused(service, token, BadSignatureError)


def test_a_token_signed_by_one_asymmetric_key_fails_under_another_with_the_same_kid(clock):
    keys, loaded = asymmetric_keys("ES256")
    impostor_key = generate_key("ES256")
    impostor_record = KeyRecord(
        kid=loaded.kid, alg="ES256", state=KeyState.ACTIVE, file="", created_at=0
    )
    impostor = Keys(build_key_set([LoadedKey(impostor_record, impostor_key)], "ES256"))
    token, _ = TokenService(impostor, issuer=ISS, audience=AUD, clock=clock).create_access_token(
        {"sub": "u-1"}
    )
    refused(TokenService(keys, issuer=ISS, audience=AUD, clock=clock), token, BadSignatureError)


# -- verification cost (issue 13) -------------------------------------------------


def test_a_token_is_parsed_once_and_the_claim_checks_are_built_once(service, access, monkeypatch):
    """verify_token ran at 0.78x joserfc: it parsed each token twice and built its claim
    checks anew per call. Both are now done once (per token, per verifier)."""
    parses = []
    real_extract = jwtrules.jws.extract_compact
    monkeypatch.setattr(
        jwtrules.jws, "extract_compact", lambda *a, **k: parses.append(1) or real_extract(*a, **k)
    )
    builds = []
    real_registry = jwtrules.JWTClaimsRegistry
    monkeypatch.setattr(
        jwtrules, "JWTClaimsRegistry", lambda *a, **k: builds.append(1) or real_registry(*a, **k)
    )
    jwtrules._claims_registry.cache_clear()
    token, claims = access
    for _ in range(3):
        assert service.verify(token) == claims
    assert len(parses) == 3
    assert len(builds) == 1
