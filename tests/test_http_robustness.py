"""No client input produces a 500: hostile bodies, headers and tokens at every POST endpoint.

Every answer must be a 4xx with a JSON error body, and nothing may change in the store.
The ``client`` fixture re-raises any server exception, so a crash fails loudly too.
Some inputs cannot be sent through an HTTP client (a broken ``Content-Length``); those
go to the ASGI app directly, as a server would pass them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
from urllib.parse import quote_from_bytes, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from issuer.app import create_app
from issuer.models import AuthMethod
from issuer.oauth.server import KNOWN_PARAMETERS
from issuer.store.schema import refresh_tokens, revoked_access_tokens
from tests.conftest import PASSWORD, add_client, add_user

FORM = "application/x-www-form-urlencoded"
POST_ENDPOINTS = ["/oauth/token", "/oauth/revoke", "/oauth/introspect"]


@pytest.fixture
def world(client, components):
    """A user, a Basic client, a public client and one live token pair; returns a snapshot."""
    add_user(components.store, "alice")
    secret = add_client(components.store, "webapp")
    add_client(components.store, "spa", method=AuthMethod.NONE)
    tokens = client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=("webapp", secret),
    ).json()
    return {"secret": secret, "tokens": tokens}


def snapshot(components) -> tuple:
    """Everything a request could change: refresh records (with their state) and denials."""
    with components.store.engine.connect() as conn:
        records = conn.execute(
            select(
                refresh_tokens.c.jti, refresh_tokens.c.spent_at, refresh_tokens.c.revoked_at
            ).order_by(refresh_tokens.c.jti)
        ).all()
        denied = conn.execute(select(func.count()).select_from(revoked_access_tokens)).scalar()
    return tuple(records), denied


def assert_json_client_error(response) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


# RFC 6749 §5.2: error_description = 1*( %x20-21 / %x23-5B / %x5D-7E ).
DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


def assert_description_is_rfc6749_text(body: dict) -> None:
    description = body.get("error_description")
    if description is not None:
        assert DESCRIPTION.fullmatch(description), description


HARMLESS_SUCCESS = {"/oauth/revoke": {}, "/oauth/introspect": {"active": False}}


def assert_refused(path: str, response) -> None:
    """A JSON 4xx, or the harmless 200 RFC 7009/7662 give for a token they do not know."""
    if response.status_code == 200 and path in HARMLESS_SUCCESS:
        assert response.json() == HARMLESS_SUCCESS[path]
    else:
        assert_description_is_rfc6749_text(assert_json_client_error(response))


# -- hostile bodies --------------------------------------------------------------------

NASTY_BODIES = {
    "invalid UTF-8": b"grant_type=password&username=\xff\xfe&password=x",
    "percent-encoded invalid UTF-8": b"grant_type=password&username=%ff%fe&password=x",
    "percent-encoded surrogate": b"grant_type=password&username=%ed%a0%80&password=x",
    "overlong UTF-8": b"grant_type=password&username=%c0%af&password=x",
    "raw NUL": b"grant_type=password&username=al\x00ice&password=x",
    "encoded NUL in value": b"grant_type=password&username=alice&password=%00",
    "encoded NUL in name": b"grant_type=password&user%00name=alice&password=x",
    "1000 fields": b"&".join(b"f%d=v" % i for i in range(1000)),
    "1000 copies of one field": b"token=" + b"&token=".join([b"x"] * 1000),
    "JSON object": json.dumps({"grant_type": "password", "token": "x"}).encode(),
    "JSON array": b'[{"grant_type":"password"},["token","x"]]',
    "only separators": b"&&&===&&&",
    "bare names": b"grant_type&username&password&token",
    "lone percent signs": b"grant_type=%&username=%%&token=%zz",
    "control characters": b"grant_type=password&username=%01%02%1b%7f&password=%08",
    "empty": b"",
}


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize("name", NASTY_BODIES)
def test_a_nasty_form_body_is_a_json_4xx_and_changes_nothing(client, components, world, path, name):
    before = snapshot(components)
    response = client.post(
        path,
        content=NASTY_BODIES[name],
        headers={"Content-Type": FORM},
        auth=("webapp", world["secret"]),
    )
    assert_refused(path, response)
    assert snapshot(components) == before


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_a_body_over_16_kib_is_413(client, components, world, path):
    before = snapshot(components)
    body = b"token=" + b"a" * (16 * 1024)
    response = client.post(path, content=body, headers={"Content-Type": FORM})
    assert response.status_code == 413
    assert assert_json_client_error(response)["error"] == "invalid_request"
    assert snapshot(components) == before


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_a_chunked_body_over_16_kib_is_413_without_a_content_length(client, world, path):
    def chunks():
        for _ in range(40):
            yield b"a" * 1024

    response = client.post(path, content=chunks(), headers={"Content-Type": FORM})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert_json_client_error(response)


def test_a_body_of_exactly_16_kib_is_read(client, world):
    form = f"grant_type=password&username=alice&password={PASSWORD}&x="
    body = form.encode() + b"a" * (16 * 1024 - len(form))
    response = client.post(
        "/oauth/token",
        content=body,
        headers={"Content-Type": FORM},
        auth=("webapp", world["secret"]),
    )
    assert response.status_code == 200, response.text


def test_random_bytes_never_crash_an_endpoint(client, components, world):
    """A seeded fuzz: random bytes, random form-ish text, random percent escapes."""
    rng = random.Random(20240601)
    alphabet = b"=&%+ ;abcdefgh0123456789\x00\xff\xc3\xa9"
    before = snapshot(components)
    for i in range(150):
        size = rng.randrange(0, 300)
        if i % 3 == 0:
            body = rng.randbytes(size)
        elif i % 3 == 1:
            body = bytes(rng.choice(alphabet) for _ in range(size))
        else:
            body = b"grant_type=password&username=" + quote_from_bytes(rng.randbytes(size)).encode()
        path = POST_ENDPOINTS[i % 3]
        response = client.post(
            path, content=body, headers={"Content-Type": FORM}, auth=("webapp", world["secret"])
        )
        assert response.status_code < 500, (path, body)
        assert_refused(path, response)
    assert snapshot(components) == before


# -- error descriptions never echo what the client sent --------------------------------------

UNSPEAKABLE_NAMES = {
    "non-ASCII": "%C3%A9",
    "double quote": "%22",
    "backslash": "%5C",
    "control character": "%1B",
    "DEL": "%7F",
    "emoji": "%F0%9F%94%91",
    "empty": "",
}


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize("name", UNSPEAKABLE_NAMES)
def test_a_repeated_parameter_whose_name_rfc6749_cannot_carry_is_a_400(
    client, components, world, path, name
):
    """Why: '%C3%A9=1&%C3%A9=2' answered 500 (the name went into error_description)."""
    encoded = UNSPEAKABLE_NAMES[name]
    before = snapshot(components)
    response = client.post(
        path,
        content=f"{encoded}=1&{encoded}=2&token=x&grant_type=password".encode(),
        headers={"Content-Type": FORM},
        auth=("webapp", world["secret"]),
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "A parameter is repeated.",
    }
    assert snapshot(components) == before


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_a_repeated_parameter_of_ours_is_named(client, world, path):
    response = client.post(
        path,
        content=b"token=x&scope=a&scope=b",
        headers={"Content-Type": FORM},
        auth=("webapp", world["secret"]),
    )
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "The 'scope' parameter is repeated.",
    }


@pytest.mark.parametrize("grant_type", ["é", 'a"b', "a\\b", "\x1b[31m", "password\n"])
def test_an_unknown_grant_type_is_described_in_rfc6749_text(client, world, grant_type):
    response = client.post(
        "/oauth/token", data={"grant_type": grant_type}, auth=("webapp", world["secret"])
    )
    body = assert_json_client_error(response)
    assert body["error"] == "unsupported_grant_type"
    assert_description_is_rfc6749_text(body)


# Names the endpoints read, names nobody reads, and the empty name; values from all of
# Unicode (Hypothesis' text() excludes only surrogates, which UTF-8 cannot carry).
FORM_NAMES = st.one_of(st.sampled_from(sorted(KNOWN_PARAMETERS)), st.just(""), st.text(max_size=12))
FORM_PAIRS = st.lists(st.tuples(FORM_NAMES, st.text(max_size=40)), max_size=8)


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    """A form body: pairs, sometimes with a pair repeated, percent-encoded or sent raw."""
    pairs = draw(FORM_PAIRS)
    if pairs and draw(st.booleans()):
        pairs.append(draw(st.sampled_from(pairs)))
    if draw(st.booleans()):
        return urlencode(pairs).encode("ascii")
    return "&".join(f"{name}={value}" for name, value in pairs).encode("utf-8")


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(POST_ENDPOINTS),
    body=form_bodies(),
    authenticated=st.booleans(),
)
def test_no_generated_form_body_gets_a_5xx(client, world, path, body, authenticated):
    """Property: whatever the form, every POST endpoint answers below 500, in RFC 6749 text."""
    response = client.post(
        path,
        content=body,
        headers={"Content-Type": FORM},
        auth=("webapp", world["secret"]) if authenticated else None,
    )
    assert response.status_code < 500, (path, body, response.text)
    assert_refused(path, response)


# -- hostile Authorization headers ----------------------------------------------------------

NASTY_AUTHORIZATION = {
    "non-ASCII bytes": b"Basic \xff\xfe\xfd",
    "non-base64": b"Basic !!!not base64!!!",
    "base64 of non-UTF-8": b"Basic " + base64.b64encode(b"\xff\xfe:\xfa"),
    "base64 of non-ASCII UTF-8": b"Basic " + base64.b64encode("wébäpp:sécret".encode()),
    "no colon": b"Basic " + base64.b64encode(b"webapp"),
    "empty id": b"Basic " + base64.b64encode(b":secret"),
    "empty": b"Basic ",
    "scheme only": b"Basic",
    "bad padding": b"Basic d2ViYXBw=",
    "percent garbage": b"Basic " + base64.b64encode(b"%zz%:%%"),
    "huge": b"Basic " + base64.b64encode(b"webapp:" + b"s" * 100_000),
    "NUL inside": b"Basic " + base64.b64encode(b"web\x00app:se\x00cret"),
    "two schemes": b"Basic a, Basic b",
    "unknown scheme": b"Digest username=webapp",
    "bearer garbage": b"Bearer \xff\x00garbage",
}


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize("name", NASTY_AUTHORIZATION)
def test_a_nasty_authorization_header_is_a_json_4xx_and_changes_nothing(
    client, components, world, path, name
):
    before = snapshot(components)
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": PASSWORD,
        "token": world["tokens"]["refresh_token"],
    }
    response = client.post(
        path,
        data=form,
        headers=[(b"authorization", NASTY_AUTHORIZATION[name])],
    )
    body = assert_json_client_error(response)
    assert body["error"] in {"invalid_client", "invalid_request"}, body
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith(
            'Basic realm="issuer", error="invalid_client"'
        )
    assert snapshot(components) == before


@pytest.mark.parametrize("name", NASTY_AUTHORIZATION)
def test_a_nasty_authorization_header_at_userinfo_is_a_bearer_401(client, world, name):
    response = client.get("/userinfo", headers=[(b"authorization", NASTY_AUTHORIZATION[name])])
    assert response.status_code == 401
    # No usable Bearer credentials at all, or a broken one: either a bare challenge
    # (RFC 6750 §3.1, no error code) or invalid_token, never anything else.
    assert response.json().get("error") in {None, "invalid_token"}
    assert response.headers["www-authenticate"].startswith('Bearer realm="')


# -- hostile tokens -----------------------------------------------------------------------------


def segment(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def crafted_tokens(kid: str) -> list[str]:
    """Compact JWS look-alikes with hostile headers and payloads, some naming our kid."""
    claims = {"sub": "x", "type": "refresh", "jti": "j", "exp": 1}
    headers = [
        [],
        1,
        "x",
        None,
        {"kid": kid},
        {"kid": kid, "alg": "none"},
        {"kid": kid, "alg": "HS256"},
        {"kid": kid, "alg": "RS256"},
        {"kid": [kid], "alg": "HS256"},
        {"kid": kid, "alg": ["HS256"]},
        {"kid": kid, "alg": "HS256", "crit": ["exp"]},
        {"kid": kid, "alg": "HS256", "b64": False},
        {"kid": kid, "alg": "HS256", "typ": 5},
        {"kid": "../../etc/passwd", "alg": "HS256"},
    ]
    payloads = [[], 1, "x", None, {}, {"exp": "soon", "jti": 5}, b"\xff\xfe"]
    tokens = [f"{segment(h)}.{segment(claims)}.c2ln" for h in headers]
    tokens += [f"{segment(headers[6])}.{segment(p)}.c2ln" for p in payloads]
    tokens += [
        f"{segment(headers[6])}.{segment(claims)}.",
        f"{segment(headers[5])}.{segment(claims)}.",
    ]
    tokens += ["", ".", "..", "....", "a.b", "a.b.c.d.e", "x" * 100_00, "é.é.é", "\u2028", " " * 5]
    return tokens


def test_crafted_tokens_are_refused_everywhere_without_a_crash(client, components, world):
    kid = components.keys.current().signing.kid
    auth = ("webapp", world["secret"])
    before = snapshot(components)
    for token in crafted_tokens(kid):
        refreshed = client.post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}, auth=auth
        )
        assert assert_json_client_error(refreshed)["error"] in {"invalid_grant", "invalid_request"}
        introspected = client.post("/oauth/introspect", data={"token": token}, auth=auth)
        assert introspected.json() == {"active": False}, token
        revoked = client.post("/oauth/revoke", data={"token": token}, auth=auth)
        assert revoked.status_code == 200, token
        userinfo = client.get("/userinfo", headers=[(b"authorization", f"Bearer {token}".encode())])
        assert userinfo.status_code == 401, token
    assert snapshot(components) == before


@pytest.mark.parametrize("size", [8192, 8193, 15_000])
def test_very_long_tokens_are_refused_cleanly(client, world, size):
    auth = ("webapp", world["secret"])
    token = "eyJ" + "A" * (size - 3)
    assert client.post("/oauth/introspect", data={"token": token}, auth=auth).json() == {
        "active": False
    }
    assert client.get("/userinfo", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    refreshed = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}, auth=auth
    )
    assert refreshed.json()["error"] == "invalid_grant"


# -- odd but valid input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username", ["zoë", "渡辺", "user name", "a+b@example.com", "🔑", "Ελληνικά", "x" * 150]
)
def test_unicode_and_unusual_usernames_log_in(client, components, world, username):
    add_user(components.store, username, password="Pässwörd-🔑-1")
    response = client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": username, "password": "Pässwörd-🔑-1"},
        auth=("webapp", world["secret"]),
    )
    assert response.status_code == 200, response.text
    access = response.json()["access_token"]
    me = client.get("/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert me.json()["username"] == username


@pytest.mark.parametrize(
    "username", ["alice ", " alice", "alic\u0435", "alice\u200b", "x" * 10_000, "%00"]
)
def test_lookalike_usernames_do_not_log_in_as_alice(client, world, username):
    # Case and NFKC variants (ALICE, full width) *are* alice: see tests/test_usernames.py.
    response = client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": username, "password": PASSWORD},
        auth=("webapp", world["secret"]),
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize("client_id", ["sp\u0430", "x" * 5000, "é", "spa\x7f", "' OR 1=1 --"])
def test_odd_client_ids_are_invalid_client(client, world, client_id):
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORD,
            "client_id": client_id,
        },
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client")


def test_a_huge_scope_is_invalid_scope(client, world):
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORD,
            "scope": " ".join(f"s{i}" for i in range(2000)),
        },
        auth=("webapp", world["secret"]),
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


# -- what no HTTP client will send ----------------------------------------------------------------


def asgi_post(
    app, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], *, hang_up=False
):
    """One request straight into the ASGI app: (status, headers, body).

    ``hang_up``: the client disconnects after the chunks instead of ending the body.
    """

    async def run():
        pending = [
            {"type": "http.request", "body": c, "more_body": hang_up or i < len(chunks) - 1}
            for i, c in enumerate(chunks or [b""])
        ]
        sent: list[dict] = []

        async def receive():
            if pending:
                return pending.pop(0)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5555),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], dict(start["headers"]), body

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("content_length", "status"),
    [
        (b"abc", 400),
        (b"-1", 400),
        (b"+7", 400),
        (b"0x10", 400),
        (b"1_0", 400),
        (b"1e3", 400),
        (b"", 400),
        ("\u0663".encode(), 400),
        (b"99999999999999999999999", 413),
    ],
)
@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_a_broken_content_length_is_a_json_4xx(components, world, path, content_length, status):
    app = create_app(components=components)
    got, headers, body = asgi_post(
        app,
        path,
        [(b"content-type", FORM.encode()), (b"content-length", content_length)],
        [b"token=x"],
    )
    assert got == status, body
    assert headers[b"content-type"].startswith(b"application/json")
    assert json.loads(body)["error"] == "invalid_request"


def test_a_body_larger_than_its_content_length_claims_is_still_bounded(components, world):
    app = create_app(components=components)
    status, _, body = asgi_post(
        app,
        "/oauth/token",
        [(b"content-type", FORM.encode()), (b"content-length", b"10")],
        [b"a" * 8192] * 4,
    )
    assert status == 413, body


def test_a_body_in_many_small_chunks_is_reassembled(components, world):
    app = create_app(components=components)
    form = f"grant_type=password&username=alice&password={PASSWORD}".encode()
    auth = b"Basic " + base64.b64encode(f"webapp:{world['secret']}".encode())
    status, _, body = asgi_post(
        app,
        "/oauth/token",
        [(b"content-type", FORM.encode()), (b"authorization", auth)],
        [form[i : i + 3] for i in range(0, len(form), 3)],
    )
    assert status == 200, body
    assert "access_token" in json.loads(body)


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_a_client_hanging_up_mid_body_is_not_a_server_error(components, world, path, caplog):
    app = create_app(components=components)
    before = snapshot(components)
    status, _, body = asgi_post(
        app, path, [(b"content-type", FORM.encode())], [b"grant_type=pass"], hang_up=True
    )
    assert status == 400, body
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert snapshot(components) == before
