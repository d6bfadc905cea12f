"""Talking to the issuer over HTTP: JSON documents, sync or async, and discovery.

Every failure (refused connection, timeout, a status other than 200/304, a body that is
not JSON or too large) becomes :class:`issuer.errors.IssuerUnreachableError`: to an API
it only means "no answer now", never something about the token.

The sync side shares one ``httpx.Client`` (thread-safe, created on first use). The async
side uses the ``httpx.AsyncClient`` you pass, else a short-lived one per call: an
AsyncClient belongs to one event loop, and a verifier may outlive it (JWKS fetches are
rare; for busy introspection pass your own client).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from issuer.errors import IssuerUnreachableError

MAX_DOCUMENT_BYTES = 1 << 20
DEFAULT_TIMEOUT = 5.0
# max-age only: s-maxage is for shared caches (RFC 9111 §5.2.2.10), which a verifier is not.
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.I)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|=|$)", re.I)


@dataclass(frozen=True)
class Answer:
    """A JSON answer (``document`` is None for 304 Not Modified) and its caching headers."""

    status: int
    document: Any
    etag: str | None
    max_age: float | None


@dataclass(frozen=True)
class Request:
    """One HTTP request, described, so sync and async code build it the same way."""

    method: str
    url: str
    headers: Mapping[str, str]
    form: Mapping[str, str] | None = None
    auth: tuple[str, str] | None = None


class Http:
    """JSON over httpx, sync and async; owned clients are closed by :meth:`close`."""

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.timeout = timeout
        self._client = client
        self._owns_client = client is None
        self._async_client = async_client
        self._lock = threading.Lock()

    def send(self, request: Request) -> Answer:
        try:
            response = self._sync_client().request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.form,
                auth=request.auth,
            )
        except httpx.HTTPError as exc:
            raise _unreachable(request, exc.__class__.__name__) from exc
        return _answer(request, response)

    async def asend(self, request: Request) -> Answer:
        try:
            if self._async_client is not None:
                response = await self._async_request(self._async_client, request)
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await self._async_request(client, request)
        except httpx.HTTPError as exc:
            raise _unreachable(request, exc.__class__.__name__) from exc
        return _answer(request, response)

    @staticmethod
    async def _async_request(client: httpx.AsyncClient, request: Request) -> httpx.Response:
        return await client.request(
            request.method,
            request.url,
            headers=dict(request.headers),
            data=request.form,
            auth=request.auth,
        )

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout)
            return self._client

    def close(self) -> None:
        """Close the sync client this object created (not one you passed in)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()


def _answer(request: Request, response: httpx.Response) -> Answer:
    etag = response.headers.get("etag")
    max_age = cache_max_age(response.headers.get("cache-control"))
    if response.status_code == 304:
        return Answer(304, None, etag, max_age)
    if response.status_code != 200:
        raise _unreachable(request, f"HTTP {response.status_code}")
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise _unreachable(request, "answer too large")
    try:
        document = response.json()
    except ValueError as exc:
        raise _unreachable(request, "answer is not JSON") from exc
    return Answer(200, document, etag, max_age)


def _unreachable(request: Request, why: str) -> IssuerUnreachableError:
    return IssuerUnreachableError(f"{request.method} {request.url}: {why}")


def cache_max_age(header: str | None) -> float | None:
    """Seconds a response may be cached per ``Cache-Control`` (0 for no-cache), or None."""
    if not header:
        return None
    if _NO_CACHE.search(header):
        return 0.0
    found = _MAX_AGE.search(header)
    return float(found.group(1)) if found else None


# -- discovery (RFC 8414, then OpenID Connect Discovery 1.0) -------------------------


def metadata_requests(issuer: str) -> list[Request]:
    """Where the issuer's metadata may be: RFC 8414 §3 first, then OIDC Discovery §4."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oauth = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    oidc = issuer.rstrip("/") + "/.well-known/openid-configuration"
    accept = {"Accept": "application/json"}
    return [Request("GET", oauth, accept), Request("GET", oidc, accept)]


def endpoint_from(issuer: str, answer: Answer, name: str) -> str:
    """The ``name`` URL of a metadata answer, after checking it is this issuer's (RFC 8414 §3.3)."""
    document = answer.document
    if not isinstance(document, Mapping) or document.get("issuer") != issuer:
        raise IssuerUnreachableError(f"the metadata does not name the issuer {issuer}")
    url = document.get(name)
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http"):
        raise IssuerUnreachableError(f"the issuer's metadata has no {name}")
    return url


def discover(http: Http, issuer: str, name: str) -> str:
    """The issuer's ``name`` endpoint (e.g. ``jwks_uri``), by discovery."""
    problems: list[str] = []
    for request in metadata_requests(issuer):
        try:
            return endpoint_from(issuer, http.send(request), name)
        except IssuerUnreachableError as exc:
            problems.append(str(exc))
    raise IssuerUnreachableError("discovery failed: " + "; ".join(problems))


async def adiscover(http: Http, issuer: str, name: str) -> str:
    """:func:`discover`, without blocking the event loop."""
    problems: list[str] = []
    for request in metadata_requests(issuer):
        try:
            return endpoint_from(issuer, await http.asend(request), name)
        except IssuerUnreachableError as exc:
            problems.append(str(exc))
    raise IssuerUnreachableError("discovery failed: " + "; ".join(problems))
