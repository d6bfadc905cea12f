"""Public documents answered on the event loop: the JWKS and the discovery metadata.

Their bytes are computed once (the discovery document at start-up, the JWKS whenever the
key set changes), so a request should cost no more than sending them. The only work that
may block is learning whether the key set changed: ``KeyStore.current()`` re-reads
``keys/`` every ``key_reload_interval`` and, after a rotation, parses the new PEMs (an
RSA key takes ~26 ms). That call runs in a worker thread, and only when the JWKS answer
was last checked more than ``recheck`` seconds ago; in between, requests are answered on
the event loop from the prepared bytes, with no thread hop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from issuer.keystore import KeySet, KeyStore

JSON = "application/json"
# The JWKS trails the key store by at most this much more than key_reload_interval.
MAX_RECHECK_SECONDS = 0.05
# How long past a due check the HTTP edge may still answer while the check runs.
STALE_GRACE_SECONDS = 0.25


@dataclass(frozen=True)
class Document:
    """A prepared public document: its bytes and the validator and caching headers."""

    body: bytes
    headers: dict[str, str]
    etag: str | None = None

    def response(self, if_none_match: str | None = None) -> Response:
        """200 with the bytes, or 304 when ``If-None-Match`` names this ETag."""
        if self.etag is not None and etag_matches(if_none_match, self.etag):
            return Response(status_code=304, headers=self.headers)
        return Response(self.body, media_type=JSON, headers=self.headers)

    def answer(
        self, if_none_match: str | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """What :meth:`response` sends, as ASGI status, raw headers and body (prepared once)."""
        if self.etag is not None and etag_matches(if_none_match, self.etag):
            return self._not_modified
        return self._ok

    def framed(self, if_none_match: str | None = None) -> tuple[int, bytes, bytes]:
        """:meth:`answer` with the headers as HTTP/1.1 header lines (for the HTTP edge)."""
        if self.etag is not None and etag_matches(if_none_match, self.etag):
            return self._not_modified_framed
        return self._ok_framed

    @functools.cached_property
    def _ok_framed(self) -> tuple[int, bytes, bytes]:
        return _framed(self._ok)

    @functools.cached_property
    def _not_modified_framed(self) -> tuple[int, bytes, bytes]:
        return _framed(self._not_modified)

    @functools.cached_property
    def _ok(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, self.response().raw_headers, self.body

    @functools.cached_property
    def _not_modified(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 304, Response(status_code=304, headers=self.headers).raw_headers, b""


def _framed(
    answer: tuple[int, list[tuple[bytes, bytes]], bytes],
) -> tuple[int, bytes, bytes]:
    status, headers, body = answer
    return status, b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers), body


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison against an ``If-None-Match`` header."""
    if not header:
        return False
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


def jwks_document(key_set: KeySet, max_age: int) -> Document:
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": key_set.etag}
    return Document(key_set.jwks_bytes, headers, key_set.etag)


class PublishedJwks:
    """The JWKS document of the key set in force, re-checked at most every ``recheck`` s.

    ``recheck`` is ``min(key_reload_interval, MAX_RECHECK_SECONDS)``: with a reload
    interval of 0 every request asks the key store (as tests that rotate and look at
    once need); with the default of 1 s, at most 20 requests a second take a thread hop,
    and the JWKS trails ``keys/`` by at most 50 ms more than the key store does (at the
    HTTP edge, plus the time the background check takes: see :meth:`fresh`).
    Concurrent requests that find the answer due may each ask; the key store's own lock
    makes sure a changed key set is parsed once.
    """

    def __init__(
        self,
        keys: KeyStore,
        max_age: int,
        key_reload_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._max_age = max_age
        self._recheck = min(max(key_reload_interval, 0.0), MAX_RECHECK_SECONDS)
        self._clock = clock
        self._key_set: KeySet | None = None
        self._document: Document | None = None
        self._checked_at = float("-inf")
        self._background: asyncio.Task[None] | None = None
        self._check_failed = False

    @property
    def key_set(self) -> KeySet | None:
        """The key set the current document was built from (None before the first)."""
        return self._key_set

    def fresh(self) -> Document | None:
        """The document to answer now without waiting, else None (ask :meth:`document`).

        For the HTTP edge (:mod:`issuer.http.fastpath`), on the event loop. Within
        ``recheck`` of the last check: the document. Once a check is due, still the
        document for up to ``STALE_GRACE_SECONDS`` while one check runs in the
        background: waiting for it (a thread hop) made every request that arrived
        meanwhile wait too, 20 times a second. None with a ``recheck`` of 0 (every
        request asks), before the first document, after a failed background check, or
        past the grace: the caller then awaits :meth:`document`, as before.
        """
        document = self._document
        if document is None:
            return None
        age = self._clock() - self._checked_at
        if age < self._recheck:
            return document
        if self._recheck <= 0 or self._check_failed or age >= self._recheck + STALE_GRACE_SECONDS:
            return None
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._check())
        return document

    async def _check(self) -> None:
        try:
            await self.document()
            self._check_failed = False
        except Exception:  # the key store's error reaches a client through document()
            self._check_failed = True
        finally:
            self._background = None

    async def document(self) -> Document:
        document = self._document
        if document is not None and self._clock() - self._checked_at < self._recheck:
            return document
        asked_at = self._clock()
        key_set = await run_in_threadpool(self._keys.current)
        if asked_at < self._checked_at and self._document is not None:
            return self._document  # a later question was answered first: keep its answer
        if key_set is not self._key_set or self._document is None:
            self._document = jwks_document(key_set, self._max_age)
            self._key_set = key_set
        # The time of asking, not of answering: the answer is at least that fresh.
        self._checked_at = asked_at
        return self._document
