"""The framework-free request the protocol core works on, and its Authlib adapter."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request


@dataclass(frozen=True)
class HttpRequest:
    """What the HTTP layer hands the protocol core: already read, already decoded.

    ``url`` is built from the configured issuer URL, never from the Host header.
    ``form`` keeps repeated parameters so the core can refuse them (RFC 6749 §3.2).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    form: list[tuple[str, str]] = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = ""
    client_ip: str = ""


@dataclass(frozen=True)
class OAuthResponse:
    """What the protocol core answers: status, JSON body, headers (no framework types)."""

    status: int
    body: dict[str, Any]
    headers: list[tuple[str, str]]


class FormPayload(OAuth2Payload):  # type: ignore[misc]
    """Authlib's view of the form: first value per name (repeats are refused earlier)."""

    def __init__(self, form: list[tuple[str, str]]) -> None:
        self._data = dict(form[::-1])  # first occurrence wins
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in form:
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class IssuerOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """Authlib's OAuth2Request over an :class:`HttpRequest`."""

    def __init__(self, request: HttpRequest) -> None:
        # Authlib refuses plain-http URIs unless a process-wide environment variable is set.
        # The issuer URL was validated at start-up (https, loopback http, or the operator's
        # explicit allow_insecure_http), so the check is made on an https twin of the URL.
        super().__init__(request.method, _https_twin(request.url), headers=request.headers)
        self.uri = request.url
        self.http = request
        self.payload = FormPayload(request.form)

    @property
    def args(self) -> dict[str, str]:
        return dict(self.http.query)

    @property
    def form(self) -> dict[str, str]:
        data: dict[str, str] = self.payload.data
        return data


def _https_twin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("https", *parts[1:]))
