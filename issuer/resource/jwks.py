"""The issuer's published keys, cached the way a well-behaved resource server caches them.

* Fresh for the JWKS answer's ``Cache-Control: max-age``, bounded by ``min_age`` and
  ``max_age`` (``default_age`` without one); then revalidated with ``If-None-Match`` so an
  unchanged set costs a 304.
* An unknown ``kid`` refetches, but never sooner than ``cooldown`` after the last fetch:
  a flood of tokens with made-up kids costs the issuer at most one request per cooldown.
  The issuer publishes a key ``jwks_max_age`` before it signs with it, so a cache that
  honours max-age knows the key already; the refetch covers caches started in between.
* Concurrent fetches are one fetch (a :class:`Flight`), for threads and coroutines alike.
* When the issuer is unreachable the last good key set keeps serving, however stale,
  and another attempt waits ``retry_interval``; with no key set at all, verification
  raises :class:`issuer.errors.IssuerUnreachableError`.

Times come from ``timer`` (monotonic by default), so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from issuer.errors import BadSignatureError, IssuerUnreachableError
from issuer.resource.fetch import Answer, Http, Request, adiscover, discover
from issuer.resource.flight import Flight
from issuer.resource.keyset import PinnedKey, read_jwks

log = logging.getLogger("issuer.resource")

Timer = Callable[[], float]


@dataclass(frozen=True)
class CachePolicy:
    """How long a key set stays fresh and how often the issuer may be asked again (seconds)."""

    min_age: float = 1.0
    max_age: float = 3600.0
    default_age: float = 300.0
    cooldown: float = 30.0
    retry_interval: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_age <= self.max_age:
            raise ValueError("need 0 <= min_age <= max_age")
        if self.cooldown < 0 or self.retry_interval < 0 or self.default_age < 0:
            raise ValueError("cooldown, retry_interval and default_age must be >= 0")

    def lifetime(self, max_age: float | None) -> float:
        """How long an answer with ``max_age`` (None: no header) stays fresh."""
        wanted = self.default_age if max_age is None else max_age
        return min(max(wanted, self.min_age), self.max_age)


class RemoteKeySet:
    """Keys by kid from a JWKS URL (given, or found by discovery on first use)."""

    def __init__(
        self,
        http: Http,
        algorithms: frozenset[str],
        *,
        issuer: str,
        jwks_uri: str | None = None,
        policy: CachePolicy | None = None,
        timer: Timer = time.monotonic,
    ) -> None:
        self.http = http
        self.algorithms = algorithms
        self.issuer = issuer
        self.policy = policy or CachePolicy()
        self.timer = timer
        self._jwks_uri = jwks_uri
        self._lock = threading.Lock()
        self._keys: dict[str, PinnedKey] | None = None
        self._etag: str | None = None
        self._fresh_until = 0.0
        self._last_fetch: float | None = None
        self._retry_at = 0.0
        self._flight: Flight | None = None
        self._failing = False
        self._last_error = "not fetched yet"
        self.fetches = 0  # requests made for the key set (discovery excluded)

    # -- public -----------------------------------------------------------------------

    def get(self, kid: str) -> PinnedKey:
        """The key ``kid`` names, fetching if the cache says so; BadSignatureError if unknown."""
        flight, leader = self._plan(kid)
        if flight is not None:
            if leader:
                self._lead_sync(flight)
            else:
                flight.wait(self._wait_limit())
        return self._lookup(kid)

    async def aget(self, kid: str) -> PinnedKey:
        """:meth:`get` without blocking the event loop."""
        flight, leader = self._plan(kid)
        if flight is not None:
            if leader:
                await self._lead_async(flight)
            else:
                await flight.await_done(self._wait_limit())
        return self._lookup(kid)

    def load(self) -> None:
        """Fetch the key set now (e.g. at start-up); IssuerUnreachableError if that fails."""
        flight, leader = self._force()
        if leader:
            self._lead_sync(flight)
        else:
            flight.wait(self._wait_limit())
        self._require_loaded()

    async def aload(self) -> None:
        """:meth:`load` without blocking the event loop."""
        flight, leader = self._force()
        if leader:
            await self._lead_async(flight)
        else:
            await flight.await_done(self._wait_limit())
        self._require_loaded()

    def kids(self) -> frozenset[str]:
        """The kids currently cached (empty before the first fetch)."""
        with self._lock:
            return frozenset(self._keys or ())

    # -- deciding -----------------------------------------------------------------------

    def _plan(self, kid: str) -> tuple[Flight | None, bool]:
        """Whether this lookup must fetch (or wait for a fetch), decided under the lock."""
        with self._lock:
            if self._flight is not None:
                if self._keys is not None and kid in self._keys:
                    return None, False  # a refresh is under way: the known key serves meanwhile
                return self._flight, False
            if not self._should_fetch(kid, self.timer()):
                return None, False
            self._flight = Flight()
            return self._flight, True

    def _should_fetch(self, kid: str, now: float) -> bool:
        if now < self._retry_at:
            return False  # the issuer just failed us: serve what we have
        if self._keys is None or now >= self._fresh_until:
            return True
        if kid in self._keys:
            return False
        return self._last_fetch is None or now - self._last_fetch >= self.policy.cooldown

    def _force(self) -> tuple[Flight, bool]:
        with self._lock:
            if self._flight is not None:
                return self._flight, False
            self._flight = Flight()
            return self._flight, True

    def _lookup(self, kid: str) -> PinnedKey:
        with self._lock:
            keys = self._keys
        if keys is None:
            raise IssuerUnreachableError(f"no key set from {self.issuer}: {self._last_error}")
        key = keys.get(kid)
        if key is None:
            raise BadSignatureError("unknown key id")
        return key

    def _require_loaded(self) -> None:
        with self._lock:
            if self._keys is None:
                raise IssuerUnreachableError(f"no key set from {self.issuer}: {self._last_error}")

    def _wait_limit(self) -> float:
        # Discovery (two requests at most) plus the JWKS request, each with the timeout.
        return 3 * self.http.timeout + 1

    # -- fetching -----------------------------------------------------------------------

    def _lead_sync(self, flight: Flight) -> None:
        try:
            outcome: Answer | Exception
            try:
                if self._jwks_uri is None:
                    self._jwks_uri = discover(self.http, self.issuer, "jwks_uri")
                outcome = self.http.send(self._request(self._jwks_uri))
            except IssuerUnreachableError as exc:
                outcome = exc
            self._apply(outcome)
        finally:
            self._land(flight)

    async def _lead_async(self, flight: Flight) -> None:
        try:
            outcome: Answer | Exception
            try:
                if self._jwks_uri is None:
                    self._jwks_uri = await adiscover(self.http, self.issuer, "jwks_uri")
                outcome = await self.http.asend(self._request(self._jwks_uri))
            except IssuerUnreachableError as exc:
                outcome = exc
            self._apply(outcome)
        finally:
            self._land(flight)

    def _request(self, url: str) -> Request:
        headers = {"Accept": "application/json"}
        with self._lock:
            if self._etag and self._keys is not None:
                headers["If-None-Match"] = self._etag
            self.fetches += 1
        return Request("GET", url, headers)

    def _apply(self, outcome: Answer | Exception) -> None:
        now = self.timer()
        keys: dict[str, PinnedKey] | None = None
        if isinstance(outcome, Answer) and outcome.status == 200:
            try:
                keys = read_jwks(outcome.document, self.algorithms)
            except ValueError as exc:
                outcome = IssuerUnreachableError(f"{self._jwks_uri}: {exc}")
        with self._lock:
            self._last_fetch = now
            if isinstance(outcome, Exception):
                self._retry_at = now + self.policy.retry_interval
                self._last_error = str(outcome)
                first_failure, self._failing = not self._failing, True
            else:
                if keys is not None:
                    self._keys, self._etag = keys, outcome.etag
                self._fresh_until = now + self.policy.lifetime(outcome.max_age)
                self._retry_at = 0.0
                first_failure, self._failing = False, False
        if keys == {}:
            # An HS256 issuer publishes nothing: every token would be an "unknown key id".
            log.warning(
                "the JWKS at %s has no key for %s: is the issuer signing with HS256? "
                "(use SecretVerifier or IntrospectionVerifier then)",
                self._jwks_uri,
                ", ".join(sorted(self.algorithms)),
            )
        if isinstance(outcome, Exception) and first_failure:
            stale = "keeping the last good key set" if self._keys is not None else "no keys yet"
            log.warning("JWKS fetch failed (%s); %s", outcome, stale)

    def _land(self, flight: Flight) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
        flight.finish()
