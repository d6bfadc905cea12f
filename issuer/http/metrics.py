"""Prometheus metrics: ``GET /metrics``, correct with several uvicorn workers.

Where the numbers come from, so that no grant carries metrics code:

- **Audit events** (:mod:`issuer.audit`): one listener turns each event into counters
  (logins, bcrypt checks, throttled logins by budget, refresh reuse, sessions ended by
  cause, every event by name). A counter and its audit line cannot disagree.
- **The token endpoint's answers**: requests by grant type and outcome (``success`` or
  the RFC 6749 error code; ``throttled`` for 429).
- **A small ASGI middleware**: request latency per endpoint (the route table's paths).
- **The key store**: reloads and failed reloads (its ``on_reload`` hook); the signing
  key's id, age and the seconds until the next key may sign are read at scrape time from
  ``keys/manifest.json``, the same for every worker.
- **The HTTP edge**: database errors (the 503 answers when the database is down).

Several workers: ``issuer serve`` gives each run its own ``PROMETHEUS_MULTIPROC_DIR``
(created at start, removed at exit), so every worker writes its counters to memory-mapped
files there and whichever worker answers ``/metrics`` adds them all up
(prometheus-client's multiprocess mode). Without that variable (one process, tests) the
counters live in this app's own registry.

The hot path pays a dict lookup and an increment: every label combination is built once,
here, never per request. Unknown grant types, errors and paths share one ``other`` label,
so a client cannot make the series count grow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from issuer.audit import EVENTS, Fields
from issuer.errors import KeyStoreError
from issuer.http.addresses import Network, address_in, client_address
from issuer.http.responses import error_response
from issuer.keystore import KeyRecord, KeyState, KeyStore
from issuer.oauth.requests import HttpRequest, OAuthResponse

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
GRANT_TYPES = ("password", "refresh_token")
OUTCOMES = (
    "success",
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "unauthorized_client",
    "unsupported_grant_type",
    "throttled",
    "temporarily_unavailable",
    "server_error",
)
BUDGETS = ("user-address", "address", "user")
LOGIN_OUTCOMES = ("success", "failure", "throttled")
# bcrypt at cost 12 takes ~0.25 s: buckets around it, and fine ones for the cheap paths.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_GRANT_SET = frozenset(GRANT_TYPES)
_OUTCOME_SET = frozenset(OUTCOMES) - {"success"}

TokenCall = Callable[[HttpRequest], OAuthResponse]


class Metrics:
    """Every metric of one app, each label child built in advance."""

    def __init__(self, collectors: Iterable[Collector] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collectors = list(collectors)  # computed at scrape time, not per worker
        for collector in self.collectors:
            self.registry.register(collector)
        r = self.registry
        self.token_requests = Counter(
            "issuer_token_requests",
            "Token endpoint answers by grant type and outcome (success or the error code).",
            ["grant_type", "outcome"],
            registry=r,
        )
        self._tokens = {
            (grant, outcome): self.token_requests.labels(grant, outcome)
            for grant in (*GRANT_TYPES, OTHER)
            for outcome in (*OUTCOMES, OTHER)
        }
        self.latency = Histogram(
            "issuer_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, per endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._latency = {OTHER: self.latency.labels(OTHER)}
        self.logins = Counter(
            "issuer_logins", "Password logins by outcome.", ["outcome"], registry=r
        )
        self._logins = {o: self.logins.labels(o) for o in LOGIN_OUTCOMES}
        self.bcrypt_checks = Counter(
            "issuer_bcrypt_checks", "Password checks that ran bcrypt.", registry=r
        )
        self.throttled = Counter(
            "issuer_login_throttled",
            "Logins refused before bcrypt, by the failure budget that was spent.",
            ["budget"],
            registry=r,
        )
        self._throttled = {b: self.throttled.labels(b) for b in (*BUDGETS, OTHER)}
        self.reuse = Counter(
            "issuer_refresh_reuse_detections",
            "Spent refresh tokens presented again; each revoked its whole family.",
            registry=r,
        )
        self.sessions_ended = Counter(
            "issuer_sessions_ended",
            "Sessions ended, by the event that ended them.",
            ["cause"],
            registry=r,
        )
        self._ended = {e: self.sessions_ended.labels(e) for e in EVENTS}
        self.audit_events = Counter(
            "issuer_audit_events", "Audit events by name (see README).", ["event"], registry=r
        )
        self._events = {e: self.audit_events.labels(e) for e in EVENTS}
        self.key_reloads = Counter(
            "issuer_key_reloads",
            "Reloads of a changed keys/manifest.json, by result (failed: last good kept).",
            ["result"],
            registry=r,
        )
        self._reloads = {o: self.key_reloads.labels(o) for o in ("reloaded", "failed")}
        self.database_errors = Counter(
            "issuer_database_errors",
            "Requests answered 503 because the database was unreachable.",
            registry=r,
        )

    # -- sources ----------------------------------------------------------------------

    def on_audit(self, event: str, fields: Fields) -> None:
        """The :mod:`issuer.audit` listener."""
        self._events[event].inc()
        if event == "login.succeeded":
            self._logins["success"].inc()
            self.bcrypt_checks.inc()
        elif event == "login.failed":  # after its bcrypt check, whatever the reason
            self._logins["failure"].inc()
            self.bcrypt_checks.inc()
        elif event == "login.throttled":
            self._logins["throttled"].inc()
            budget = fields.get("budget")
            child = self._throttled.get(budget) if isinstance(budget, str) else None
            (child or self._throttled[OTHER]).inc()
        elif event == "refresh.reuse_detected":
            self.reuse.inc()
        elif event == "session.ended":
            cause, count = fields.get("cause"), fields.get("sessions")
            child = self._ended.get(cause) if isinstance(cause, str) else None
            if child is not None and isinstance(count, int):
                child.inc(count)

    def on_key_reload(self, result: str) -> None:
        """The key store's ``on_reload`` hook."""
        self._reloads[result].inc()

    def on_database_error(self) -> None:
        self.database_errors.inc()

    def counting_tokens(self, call: TokenCall) -> TokenCall:
        """``call`` (the token endpoint) counting each answer by grant type and outcome."""
        tokens = self._tokens

        def counted(request: HttpRequest) -> OAuthResponse:
            response = call(request)
            grant = next((v for k, v in request.form if k == "grant_type"), OTHER)
            outcome = "throttled" if response.status == 429 else response.body.get("error")
            tokens[
                grant if grant in _GRANT_SET else OTHER,
                outcome if outcome in _OUTCOME_SET else "success" if outcome is None else OTHER,
            ].inc()
            return response

        return counted

    def label_endpoints(self, paths: Iterable[str]) -> None:
        """Build the latency child of each served path (any other path is ``other``)."""
        for path in paths:
            self._latency[path] = self.latency.labels(path)

    def observe(self, path: str, seconds: float) -> None:
        self._latency.get(path, self._latency[OTHER]).observe(seconds)

    # -- exposition ---------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format: every worker's counters in multiprocess mode, else this app's."""
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in self.collectors:
            registry.register(collector)
        return generate_latest(registry)


class KeyCollector(Collector):
    """Signing-key gauges, computed at scrape time from the manifest and the key store."""

    def __init__(
        self,
        keys: KeyStore,
        records: Callable[[], list[KeyRecord]] | None,
        lead_time: Callable[[str], int] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.records = records
        self.lead_time = lead_time
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        info = GaugeMetricFamily(
            "issuer_signing_key_info", "The key that signs now (value 1).", labels=["kid", "alg"]
        )
        age = GaugeMetricFamily(
            "issuer_signing_key_age_seconds",
            "Seconds since the signing key started signing.",
            labels=["kid"],
        )
        until = GaugeMetricFamily(
            "issuer_next_key_may_sign_in_seconds",
            "Seconds until the next key may sign (0: a rotation may run now).",
            labels=["kid"],
        )
        # A broken keys/ shows as missing gauges (and failed reloads), never as a 500.
        try:
            signing = self.keys.current().signing  # the last good set while keys/ is broken
        except KeyStoreError:
            signing = None
        try:
            records = self.records() if self.records is not None else []
        except KeyStoreError:
            records = []
        if signing is not None:
            info.add_metric([signing.kid, signing.record.alg], 1)
        for record in records:
            if record.state is KeyState.ACTIVE and signing and record.kid == signing.kid:
                started = record.activated_at or record.created_at
                age.add_metric([record.kid], max(0.0, now - started))
            elif record.state is KeyState.NEXT and self.lead_time is not None:
                known_since = record.published_at or record.created_at
                wait = known_since + self.lead_time(record.alg) - now
                until.add_metric([record.kid], max(0.0, wait))
        yield from (info, age, until)


class MetricsMiddleware:
    """Observes each HTTP request's duration under its route path (others: ``other``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.observe = metrics.observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.observe(scope["path"], time.perf_counter() - started)


def metrics_endpoint(
    metrics: Metrics, allowed: Sequence[Network] = (), trusted_proxies: Sequence[Network] = ()
) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: the Prometheus text format, never cached; only for clients in
    ``allowed`` (the ``metrics_networks`` setting) when it is set, else 403."""
    headers = {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}

    async def endpoint(request: Request) -> Response:
        if allowed:
            address = client_address(
                request.client.host if request.client else "",
                request.headers.getlist("x-forwarded-for"),
                trusted_proxies,
            )
            if not address_in(address, allowed):
                return error_response("access_denied", "Metrics are not served to you.", 403)
        body = await run_in_threadpool(metrics.exposition)  # reads files: off the loop
        return Response(body, headers=headers)

    return endpoint
