"""issuer.resource's verifiers against an in-memory issuer (httpx's MockTransport).

Tokens are signed here with real keys, the way the issuer signs them; the JWKS, discovery
and introspection answers come from handlers that count every request, so caching rules
are checked by counting fetches while an injected timer moves, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from issuer.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidAudienceError,
    InvalidIssuerError,
    IssuerUnreachableError,
    MalformedTokenError,
    NotYetValidError,
    RevokedTokenError,
    TokenError,
    WrongTokenTypeError,
)
from issuer.jwtrules import registry
from issuer.resource import (
    CachePolicy,
    IntrospectionVerifier,
    JWKSVerifier,
    Principal,
    SecretVerifier,
)
from issuer.resource.fetch import cache_max_age, metadata_requests
from tests.test_jwks import forge, hs256_with

ISSUER = "https://id.example.com"
AUDIENCE = "orders-api"
JWKS_URI = ISSUER + "/.well-known/jwks.json"
INTROSPECT = ISSUER + "/oauth/introspect"


class Timer:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_key(alg: str) -> Any:
    if alg == "RS256":
        return RSAKey.generate_key(2048, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    return OKPKey.generate_key("Ed25519", private=True)


def public_jwk(key: Any, alg: str) -> dict[str, Any]:
    jwk = key.as_dict(private=False)
    jwk.update({"kid": key.thumbprint(), "use": "sig", "alg": alg})
    return jwk


def claims_for(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "u-1",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "client_id": "webapp",
        "scope": "openid read",
        "username": "alice",
        "role": "engineer",
        "roles": ["engineer"],
        "type": "access",
        "sid": "fam-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: Any, alg: str, claims: dict[str, Any], **header: Any) -> str:
    head = {"alg": alg, "kid": key.thumbprint() if alg != "HS256" else "hs-1", "typ": "at+jwt"}
    head.update(header)
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(head, claims, key, registry=registry(alg))


class FakeIssuer:
    """Discovery, JWKS (Cache-Control, ETag, 304) and nothing else; counts requests."""

    def __init__(self, keys: list[tuple[Any, str]], max_age: int | None = 300) -> None:
        self.keys = keys
        self.max_age = max_age
        self.jwks_fetches = 0
        self.metadata_fetches = 0
        self.down = False
        self.if_none_match: list[str | None] = []
        self.gate: threading.Event | None = None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(key, alg) for key, alg in self.keys]}

    def etag(self) -> str:
        return '"' + str(abs(hash(json.dumps(self.jwks(), sort_keys=True)))) + '"'

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/.well-known/oauth-authorization-server":
            self.metadata_fetches += 1
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": JWKS_URI})
        if str(request.url) == JWKS_URI:
            self.jwks_fetches += 1
            if self.gate is not None:
                self.gate.wait(10)
            self.if_none_match.append(request.headers.get("if-none-match"))
            headers = {"ETag": self.etag()}
            if self.max_age is not None:
                headers["Cache-Control"] = f"public, max-age={self.max_age}"
            if request.headers.get("if-none-match") == self.etag():
                return httpx.Response(304, headers=headers)
            return httpx.Response(200, json=self.jwks(), headers=headers)
        return httpx.Response(404)


def jwks_verifier(fake: FakeIssuer, timer: Timer | None = None, **options: Any) -> JWKSVerifier:
    return JWKSVerifier(
        ISSUER,
        AUDIENCE,
        http_client=httpx.Client(transport=httpx.MockTransport(fake.handle)),
        timer=timer or Timer(),
        **options,
    )


@pytest.fixture(scope="module")
def rsa() -> Any:
    return new_key("RS256")


@pytest.fixture
def fake(rsa) -> FakeIssuer:
    return FakeIssuer([(rsa, "RS256")])


# -- JWKSVerifier: what it accepts --------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_valid_token_becomes_a_principal(alg):
    key = new_key(alg)
    verifier = jwks_verifier(FakeIssuer([(key, alg)]))
    principal = verifier.verify(sign(key, alg, claims_for()))
    assert principal == Principal(
        sub="u-1",
        username="alice",
        role="engineer",
        roles=frozenset({"engineer"}),
        scope=frozenset({"openid", "read"}),
        client_id="webapp",
        sid="fam-1",
        claims=principal.claims,
    )
    assert principal.claims["aud"] == AUDIENCE
    assert asyncio.run(verifier.averify(sign(key, alg, claims_for()))).sub == "u-1"


def test_nothing_is_fetched_before_the_first_token(fake):
    jwks_verifier(fake)
    assert (fake.metadata_fetches, fake.jwks_fetches) == (0, 0)


def test_the_jwks_is_found_by_rfc8414_discovery_once(fake, rsa):
    verifier = jwks_verifier(fake)
    for _ in range(3):
        verifier.verify(sign(rsa, "RS256", claims_for()))
    assert (fake.metadata_fetches, fake.jwks_fetches) == (1, 1)


def test_discovery_falls_back_to_openid_configuration(rsa):
    seen: list[str] = []
    fake = FakeIssuer([(rsa, "RS256")])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": JWKS_URI})
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(404)
        return fake.handle(request)

    verifier = JWKSVerifier(
        ISSUER, AUDIENCE, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    assert verifier.verify(sign(rsa, "RS256", claims_for())).sub == "u-1"
    assert seen[:2] == [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ]


def test_metadata_naming_another_issuer_is_not_trusted(rsa):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"issuer": "https://evil.example", "jwks_uri": JWKS_URI})

    verifier = JWKSVerifier(
        ISSUER, AUDIENCE, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(IssuerUnreachableError, match="does not name the issuer"):
        verifier.verify(sign(rsa, "RS256", claims_for()))


def test_a_given_jwks_uri_skips_discovery(fake, rsa):
    verifier = jwks_verifier(fake, jwks_uri=JWKS_URI)
    verifier.verify(sign(rsa, "RS256", claims_for()))
    assert (fake.metadata_fetches, fake.jwks_fetches) == (0, 1)


# -- JWKSVerifier: what it refuses --------------------------------------------------------


def tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def unsigned(claims: dict[str, Any], kid: str) -> str:
    return forge({"alg": "none", "kid": kid, "typ": "at+jwt"}, claims, lambda data: b"")


def hs256_with_public_key(key: Any) -> str:
    """The classic confusion: HMAC keyed with the public key's PEM, which anyone has."""
    head = {"alg": "HS256", "kid": key.thumbprint(), "typ": "at+jwt"}
    return forge(head, claims_for(), hs256_with(key.as_pem(private=False)))


REFUSALS: dict[str, tuple[Callable[[Any], str], type[TokenError]]] = {
    "tampered": (lambda k: tampered(sign(k, "RS256", claims_for())), BadSignatureError),
    "expired": (
        lambda k: sign(k, "RS256", claims_for(exp=int(time.time()) - 31)),
        ExpiredTokenError,
    ),
    "not yet valid": (
        lambda k: sign(k, "RS256", claims_for(nbf=int(time.time()) + 600)),
        NotYetValidError,
    ),
    "wrong audience": (lambda k: sign(k, "RS256", claims_for(aud="other")), InvalidAudienceError),
    "wrong issuer": (
        lambda k: sign(k, "RS256", claims_for(iss="https://evil.example")),
        InvalidIssuerError,
    ),
    "refresh token": (
        lambda k: sign(k, "RS256", claims_for(type="refresh", aud=ISSUER), typ="rt+jwt"),
        WrongTokenTypeError,
    ),
    "access claims with a refresh typ": (
        lambda k: sign(k, "RS256", claims_for(), typ="JWT"),
        WrongTokenTypeError,
    ),
    "alg none": (lambda k: unsigned(claims_for(), k.thumbprint()), BadSignatureError),
    "HS256 with the public key": (hs256_with_public_key, BadSignatureError),
    "no kid": (lambda k: sign(k, "RS256", claims_for(), kid=None), BadSignatureError),
    "unknown kid": (lambda k: sign(k, "RS256", claims_for(), kid="nope"), BadSignatureError),
    "no jti": (lambda k: sign(k, "RS256", claims_for(jti=None)), MalformedTokenError),
    "crit header": (lambda k: sign(k, "RS256", claims_for(), crit=["kid"]), BadSignatureError),
    "garbage": (lambda k: "not-a-token", MalformedTokenError),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_tokens_are_refused_with_their_own_error(fake, rsa, case):
    make, error = REFUSALS[case]
    verifier = jwks_verifier(fake)
    with pytest.raises(error):
        verifier.verify(make(rsa))
    with pytest.raises(error):
        asyncio.run(verifier.averify(make(rsa)))


def test_the_key_pins_the_algorithm_not_the_token(rsa):
    """An RS256-bound key never verifies a token that names another algorithm."""
    verifier = jwks_verifier(FakeIssuer([(rsa, "RS256")]))
    relabelled = sign(rsa, "PS256", claims_for(), kid=rsa.thumbprint())
    with pytest.raises(BadSignatureError):
        JWKSVerifier(
            ISSUER,
            AUDIENCE,
            algorithms=["RS256", "PS256"],
            http_client=httpx.Client(
                transport=httpx.MockTransport(FakeIssuer([(rsa, "RS256")]).handle)
            ),
        ).verify(relabelled)
    with pytest.raises(BadSignatureError):
        verifier.verify(relabelled)


def test_keys_of_algorithms_not_accepted_are_left_out():
    ec, ed = new_key("ES256"), new_key("EdDSA")
    fake = FakeIssuer([(ec, "ES256"), (ed, "EdDSA")])
    verifier = jwks_verifier(fake, algorithms=["ES256"])
    assert verifier.verify(sign(ec, "ES256", claims_for())).sub == "u-1"
    assert verifier.keys.kids() == {ec.thumbprint()}
    with pytest.raises(BadSignatureError):
        verifier.verify(sign(ed, "EdDSA", claims_for()))


def test_malformed_jwks_members_are_skipped_not_fatal(rsa):
    good = public_jwk(rsa, "RS256")
    wrong_type = dict(good, kid="k2", alg="ES256")
    symmetric = {"kty": "oct", "k": "c2VjcmV0", "kid": "k3", "alg": "HS256"}
    broken = {"kty": "RSA", "kid": "k4", "alg": "RS256", "n": "AQAB"}
    encryption = dict(good, kid="k5", use="enc")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"keys": [wrong_type, symmetric, broken, encryption, "junk", good]}
        )

    verifier = JWKSVerifier(
        ISSUER,
        AUDIENCE,
        jwks_uri=JWKS_URI,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    assert verifier.verify(sign(rsa, "RS256", claims_for())).sub == "u-1"
    assert verifier.keys.kids() == {rsa.thumbprint()}


def test_symmetric_algorithms_cannot_be_accepted_from_a_jwks():
    with pytest.raises(ValueError, match="SecretVerifier"):
        JWKSVerifier(ISSUER, AUDIENCE, algorithms=["HS256"])
    with pytest.raises(ValueError):
        JWKSVerifier(ISSUER, AUDIENCE, algorithms=["none"])


# -- the JWKS cache -------------------------------------------------------------------------


def test_max_age_is_honoured_and_revalidation_uses_the_etag(fake, rsa):
    timer = Timer()
    verifier = jwks_verifier(fake, timer)
    token = sign(rsa, "RS256", claims_for())
    verifier.verify(token)
    timer.now += 299
    verifier.verify(token)
    assert fake.jwks_fetches == 1
    timer.now += 1
    verifier.verify(token)
    assert fake.jwks_fetches == 2
    assert fake.if_none_match == [None, fake.etag()]  # the second answer was a 304
    assert verifier.keys.kids() == {rsa.thumbprint()}


@pytest.mark.parametrize(("max_age", "fresh_for"), [(0, 10), (86_400, 3600), (None, 120)])
def test_max_age_is_bounded(rsa, max_age, fresh_for):
    fake = FakeIssuer([(rsa, "RS256")], max_age=max_age)
    timer = Timer()
    policy = CachePolicy(min_age=10, max_age=3600, default_age=120)
    verifier = jwks_verifier(fake, timer, cache=policy)
    token = sign(rsa, "RS256", claims_for())
    verifier.verify(token)
    timer.now += fresh_for - 0.5
    verifier.verify(token)
    assert fake.jwks_fetches == 1
    timer.now += 0.5
    verifier.verify(token)
    assert fake.jwks_fetches == 2


def test_a_new_key_is_picked_up_at_once_by_an_unknown_kid_after_the_cooldown(fake, rsa):
    timer = Timer()
    verifier = jwks_verifier(fake, timer)
    verifier.verify(sign(rsa, "RS256", claims_for()))
    ec = new_key("ES256")
    fake.keys.append((ec, "ES256"))
    timer.now += 30
    assert verifier.verify(sign(ec, "ES256", claims_for())).sub == "u-1"
    assert fake.jwks_fetches == 2


def test_a_flood_of_random_kids_costs_at_most_one_fetch_per_cooldown(fake, rsa):
    timer = Timer()
    verifier = jwks_verifier(fake, timer, cache=CachePolicy(cooldown=30))
    verifier.verify(sign(rsa, "RS256", claims_for()))
    valid = sign(rsa, "RS256", claims_for())
    fetches_per_window: list[int] = []
    for _window in range(4):
        before = fake.jwks_fetches
        for i in range(1000):
            forged = sign(rsa, "RS256", claims_for(), kid=secrets.token_urlsafe(16))
            with pytest.raises(BadSignatureError, match="unknown key id"):
                verifier.verify(forged)
            if i % 100 == 0:
                assert verifier.verify(valid).sub == "u-1"  # real tokens keep passing
            timer.now += 0.029  # 1,000 tokens take 29 s: just under one cooldown
        fetches_per_window.append(fake.jwks_fetches - before)
        timer.now += 1
    assert all(count <= 1 for count in fetches_per_window), fetches_per_window
    assert sum(fetches_per_window) >= 1  # it did look again, once per window at most


def test_concurrent_misses_from_threads_share_one_fetch(fake, rsa):
    verifier = jwks_verifier(fake)
    fake.gate = threading.Event()
    token = sign(rsa, "RS256", claims_for())
    results: list[str] = []

    def verify() -> None:
        results.append(verifier.verify(token).sub)

    threads = [threading.Thread(target=verify) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # let them pile up behind the first fetch
    fake.gate.set()
    for thread in threads:
        thread.join(10)
    assert results == ["u-1"] * 16
    assert fake.jwks_fetches == 1


def test_concurrent_misses_from_coroutines_and_threads_share_one_fetch(rsa):
    fake = FakeIssuer([(rsa, "RS256")])
    release = asyncio.Event()
    fetches = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        if request.url.path == "/.well-known/jwks.json":
            fetches += 1
            await release.wait()
        return fake.handle(request)

    async def scenario() -> list[str]:
        verifier = JWKSVerifier(
            ISSUER,
            AUDIENCE,
            async_http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        )
        token = sign(rsa, "RS256", claims_for())
        tasks = [asyncio.create_task(verifier.averify(token)) for _ in range(50)]
        # A thread asking meanwhile waits for the same fetch instead of making its own.
        in_thread = asyncio.create_task(asyncio.to_thread(verifier.verify, token))
        for _ in range(20):
            await asyncio.sleep(0)
        release.set()
        done = await asyncio.gather(*tasks, in_thread)
        return [p.sub for p in done]

    assert asyncio.run(scenario()) == ["u-1"] * 51
    assert fetches == 1
    assert fake.jwks_fetches == 1


def test_the_last_good_keys_keep_verifying_while_the_issuer_is_down(fake, rsa):
    timer = Timer()
    verifier = jwks_verifier(fake, timer, cache=CachePolicy(retry_interval=5))
    token = sign(rsa, "RS256", claims_for())
    verifier.verify(token)
    timer.now += 300  # stale
    fake.down = True
    attempts_before = fake.jwks_fetches
    for _ in range(100):  # ten seconds of requests, one every 0.1 s
        assert verifier.verify(token).sub == "u-1"
        assert asyncio.run(verifier.averify(token)).sub == "u-1"
        timer.now += 0.1
    assert fake.jwks_fetches - attempts_before <= 3  # one try per retry_interval
    fake.down = False
    timer.now += 5
    verifier.verify(token)
    assert fake.if_none_match[-1] == fake.etag()  # back to normal revalidation


def test_with_no_key_set_at_all_an_unreachable_issuer_is_not_a_token_error(fake, rsa):
    fake.down = True
    verifier = jwks_verifier(fake)
    with pytest.raises(IssuerUnreachableError):
        verifier.verify(sign(rsa, "RS256", claims_for()))
    with pytest.raises(IssuerUnreachableError):
        verifier.load()


def test_load_fetches_ahead_of_the_first_token(fake, rsa):
    verifier = jwks_verifier(fake)
    verifier.load()
    assert verifier.keys.kids() == {rsa.thumbprint()}
    verifier.verify(sign(rsa, "RS256", claims_for()))
    assert fake.jwks_fetches == 1


# -- SecretVerifier -------------------------------------------------------------------------


def test_secret_verifier_accepts_hs256_tokens_of_the_shared_secret():
    secret = secrets.token_urlsafe(48)
    key = OctKey.import_key(secret.encode())
    verifier = SecretVerifier(secret, ISSUER, AUDIENCE)
    assert verifier.verify(sign(key, "HS256", claims_for())).username == "alice"
    assert asyncio.run(verifier.averify(sign(key, "HS256", claims_for()))).role == "engineer"
    assert secret not in repr(verifier)


def test_secret_verifier_refuses_other_secrets_algorithms_and_refresh_tokens(rsa):
    secret = secrets.token_urlsafe(48)
    verifier = SecretVerifier(secret, ISSUER, AUDIENCE)
    other = OctKey.import_key(secrets.token_bytes(48))
    own = OctKey.import_key(secret.encode())
    with pytest.raises(BadSignatureError):
        verifier.verify(sign(other, "HS256", claims_for()))
    with pytest.raises(BadSignatureError):
        verifier.verify(sign(rsa, "RS256", claims_for()))
    with pytest.raises(WrongTokenTypeError):
        verifier.verify(sign(own, "HS256", claims_for(type="refresh"), typ="rt+jwt"))
    with pytest.raises(BadSignatureError):
        verifier.verify(unsigned(claims_for(), "hs-1"))


def test_secret_verifier_refuses_a_short_secret():
    with pytest.raises(ValueError, match="32 bytes"):
        SecretVerifier("short", ISSUER, AUDIENCE)


# -- IntrospectionVerifier ------------------------------------------------------------------


class FakeIntrospection:
    """An RFC 7662 endpoint: answers from ``answers`` by token; counts requests."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(
                200, json={"issuer": ISSUER, "introspection_endpoint": INTROSPECT}
            )
        self.requests.append(request)
        form = dict(httpx.QueryParams(request.content.decode()))
        return httpx.Response(200, json=self.answers.get(form["token"], {"active": False}))


def introspection_verifier(fake: FakeIntrospection, clock: Timer, **options: Any):
    return IntrospectionVerifier(
        ISSUER,
        "orders-api",
        "s3cret-of-the-api",
        audience=AUDIENCE,
        http_client=httpx.Client(transport=httpx.MockTransport(fake.handle)),
        clock=clock,
        **options,
    )


def active(**overrides: Any) -> dict[str, Any]:
    return {"active": True, "token_type": "Bearer", **claims_for(**overrides)}


def test_introspection_asks_the_issuer_as_a_confidential_client():
    fake, clock = FakeIntrospection(), Timer(time.time())
    fake.answers["tok"] = active()
    verifier = introspection_verifier(fake, clock)
    principal = verifier.verify("tok")
    assert (principal.sub, principal.scope) == ("u-1", frozenset({"openid", "read"}))
    request = fake.requests[0]
    expected = base64.b64encode(b"orders-api:s3cret-of-the-api").decode()
    assert request.headers["authorization"] == "Basic " + expected
    assert dict(httpx.QueryParams(request.content.decode())) == {
        "token": "tok",
        "token_type_hint": "access_token",
    }
    assert "s3cret" not in repr(verifier)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"active": False}, RevokedTokenError),
        (active(type="refresh", aud=ISSUER), WrongTokenTypeError),
        (active(iss="https://evil.example"), InvalidIssuerError),
        (active(aud="other-api"), InvalidAudienceError),
        (active(exp=int(time.time()) - 60), ExpiredTokenError),
    ],
)
def test_introspection_refuses_what_is_not_an_active_access_token_for_us(answer, error):
    fake, clock = FakeIntrospection(), Timer(time.time())
    fake.answers["tok"] = answer
    verifier = introspection_verifier(fake, clock)
    with pytest.raises(error):
        verifier.verify("tok")
    with pytest.raises(error):
        asyncio.run(verifier.averify("tok"))


def test_introspection_answers_are_cached_within_the_bound_and_the_tokens_life():
    fake, clock = FakeIntrospection(), Timer(time.time())
    fake.answers["long"] = active()  # 600 s left: the 30 s bound applies
    fake.answers["short"] = active(exp=int(clock.now) + 10 - 30)  # 10 s left with leeway
    verifier = introspection_verifier(fake, clock)
    verifier.verify("long")
    verifier.verify("short")
    clock.now += 9
    verifier.verify("long")
    verifier.verify("short")
    assert len(fake.requests) == 2
    clock.now += 1.5
    fake.answers["short"] = {"active": False}
    with pytest.raises(RevokedTokenError):
        verifier.verify("short")
    fake.answers["long"] = {"active": False}  # revoked at the issuer
    verifier.verify("long")  # still within 30 s of the last answer
    clock.now += 20
    with pytest.raises(RevokedTokenError):
        verifier.verify("long")


def test_introspection_with_no_cache_sees_a_revocation_at_once():
    fake, clock = FakeIntrospection(), Timer(time.time())
    fake.answers["tok"] = active()
    verifier = introspection_verifier(fake, clock, cache_ttl=0)
    verifier.verify("tok")
    fake.answers["tok"] = {"active": False}
    with pytest.raises(RevokedTokenError):
        verifier.verify("tok")


def test_introspection_failures_are_not_token_errors_and_not_cached():
    fake, clock = FakeIntrospection(), Timer(time.time())
    fake.answers["tok"] = active()
    verifier = introspection_verifier(fake, clock)
    fake.down = True
    with pytest.raises(IssuerUnreachableError):
        verifier.verify("tok")
    fake.down = False
    assert verifier.verify("tok").sub == "u-1"


def test_introspection_cache_is_bounded_in_size():
    fake, clock = FakeIntrospection(), Timer(time.time())
    verifier = introspection_verifier(fake, clock, cache_size=10)
    for i in range(100):
        with pytest.raises(RevokedTokenError):
            verifier.verify(f"junk-{i}")
    assert len(verifier._cache) == 10


def test_unsigned_helper_really_is_unsigned(rsa):
    """Guard for the alg-none case above: the token parses and carries no signature."""
    token = unsigned(claims_for(), rsa.thumbprint())
    assert token.endswith(".")
    assert jws.extract_compact(token.encode()).headers()["alg"] == "none"


def test_an_empty_jwks_says_what_is_probably_wrong(caplog, rsa):
    fake = FakeIssuer([])
    verifier = jwks_verifier(fake)
    with pytest.raises(BadSignatureError):
        verifier.verify(sign(rsa, "RS256", claims_for()))
    assert "HS256" in caplog.text and "SecretVerifier" in caplog.text


def test_while_a_refresh_is_under_way_known_keys_do_not_wait_for_it(fake, rsa):
    timer = Timer()
    verifier = jwks_verifier(fake, timer, timeout=60)
    token = sign(rsa, "RS256", claims_for())
    verifier.verify(token)
    timer.now += 300  # stale: the next lookup refreshes
    fake.gate = threading.Event()
    leader = threading.Thread(target=verifier.verify, args=(token,))
    leader.start()
    while fake.jwks_fetches < 2:  # the leader is inside its fetch, held at the gate
        time.sleep(0.01)
    follower = threading.Thread(target=verifier.verify, args=(token,))
    follower.start()
    follower.join(10)  # a deadlock detector, not a timing check: it would wait ~3 minutes
    stuck = follower.is_alive()
    fake.gate.set()
    leader.join(10)
    follower.join(10)
    assert not stuck


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=300", 300.0),
        ("s-maxage=10, max-age=20", 20.0),  # s-maxage is for shared caches, not us
        ("no-cache", 0.0),
        ("no-store, max-age=60", 0.0),
        ("private", None),
        (None, None),
        ('max-age="5"', 5.0),
    ],
)
def test_cache_control_is_read_as_a_private_cache_reads_it(header, seconds):
    assert cache_max_age(header) == seconds


def test_discovery_of_an_issuer_with_a_path_asks_where_rfc8414_and_oidc_say():
    urls = [r.url for r in metadata_requests("https://id.example.com/tenant")]
    assert urls == [
        "https://id.example.com/.well-known/oauth-authorization-server/tenant",
        "https://id.example.com/tenant/.well-known/openid-configuration",
    ]
