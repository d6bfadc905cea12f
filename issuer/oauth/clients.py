"""Authlib's view of our :class:`issuer.models.Client`, and safe client authentication.

Authlib's own ``client_secret_basic`` parser lets a non-ASCII or non-UTF-8 Authorization
header escape as an exception (a 500); ours answers ``invalid_client``. Secrets are
compared as SHA-256 digests in constant time (:meth:`Client.check_secret`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, OAuth2Request

from issuer.models import AuthMethod, Client

TOKEN_AUTH_METHODS = [m.value for m in AuthMethod]
QueryClient = Callable[[str], "OAuthClient | None"]


def scope_list(scope: str) -> list[str]:
    """The scope tokens of ``scope``, in order, each once.

    RFC 6749 §3.3: tokens are separated by spaces only; a tab or any other character
    stays part of a token (which then matches no known scope).
    """
    return list(dict.fromkeys(token for token in scope.split(" ") if token))


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """Adapts a stored client to Authlib's ClientMixin."""

    def __init__(self, client: Client, server_scopes: tuple[str, ...]) -> None:
        self.client = client
        # A client registered with scopes the server no longer offers loses them.
        self.allowed_scopes = (
            tuple(s for s in client.scopes if s in server_scopes)
            if client.scopes
            else server_scopes
        )

    @property
    def client_id(self) -> str:
        return self.client.client_id

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        return " ".join(s for s in scope_list(scope) if s in self.allowed_scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client.check_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.client.auth_method.value

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.client.grant_types


REALM = "issuer"


class ClientAuthenticationError(InvalidClientError):  # type: ignore[misc]
    """``invalid_client``; as a 401 it challenges with ``Basic realm=…`` (RFC 7617 §2).

    Authlib's challenge omits the realm, which RFC 7617 makes required.
    """

    def get_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = [
            h for h in super().get_headers() if h[0].lower() != "www-authenticate"
        ]
        if self.status_code == 401:
            description = self.get_error_description().replace('"', "'")
            headers.append(
                (
                    "WWW-Authenticate",
                    f'Basic realm="{REALM}", error="{self.error}", '
                    f'error_description="{description}"',
                )
            )
        return headers


def uses_basic(request: OAuth2Request) -> bool:
    """True if the request carries an ``Authorization: Basic`` header, well-formed or not."""
    header = request.headers.get("Authorization") or ""
    return header.partition(" ")[0].lower() == "basic"


def basic_credentials(request: OAuth2Request) -> tuple[str, str] | None:
    """``(client_id, secret)`` from an HTTP Basic header; None if there is no Basic header.

    A malformed Basic header is ``invalid_client`` (401), never an exception.
    """
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise ClientAuthenticationError(
            status_code=401, description="Malformed HTTP Basic credentials."
        ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise ClientAuthenticationError(
            status_code=401, description="Malformed HTTP Basic credentials."
        )
    return unquote(client_id), unquote(secret)


def presented_secret(request: OAuth2Request) -> str | None:
    """The secret the (already authenticated) client presented, by Basic or in the form."""
    credentials = basic_credentials(request)
    if credentials is not None:
        return credentials[1]
    return request.form.get("client_secret") or None


def attempted_auth_method(request: OAuth2Request) -> tuple[AuthMethod, str] | None:
    """Which client authentication method the request used, and the client id it named.

    None when it names no client at all. A malformed Basic header counts as
    ``client_secret_basic`` with no usable id (the caller already refused it).
    """
    if uses_basic(request):
        try:
            credentials = basic_credentials(request)
        except InvalidClientError:
            return None
        return (AuthMethod.CLIENT_SECRET_BASIC, credentials[0]) if credentials else None
    client_id = request.form.get("client_id")
    if not client_id:
        return None
    if "client_secret" in request.form:
        return AuthMethod.CLIENT_SECRET_POST, client_id
    return AuthMethod.NONE, client_id


def method_mismatch_description(registered: AuthMethod, attempted: AuthMethod) -> str:
    """Why a known client failed: it used another method than the one it is registered for.

    Client ids are not secrets (they travel in every request), and naming both methods
    saves a developer an hour; ORY Hydra answers the same way. The secret's correctness
    is never hinted at.
    """
    how = {
        AuthMethod.CLIENT_SECRET_BASIC: "send client_id and client_secret in an HTTP Basic "
        "Authorization header",
        AuthMethod.CLIENT_SECRET_POST: "send client_id and client_secret in the form body",
        AuthMethod.NONE: "send only client_id in the form body, no secret",
    }[registered]
    return (
        f"This client is registered for {registered.value}, but the request used "
        f"{attempted.value}: {how}, or register the client with "
        f"--auth-method {attempted.value}."
    )


def authenticate_client_secret_basic(
    query_client: QueryClient, request: OAuth2Request
) -> OAuthClient | None:
    credentials = basic_credentials(request)
    if credentials is None:
        return None
    client = query_client(credentials[0])
    if client is not None and client.check_client_secret(credentials[1]):
        return client
    return None


def authenticate_client_secret_post(
    query_client: QueryClient, request: OAuth2Request
) -> OAuthClient | None:
    client_id = request.form.get("client_id")
    secret = request.form.get("client_secret")
    if not client_id or not secret:
        return None
    client = query_client(client_id)
    if client is not None and client.check_client_secret(secret):
        return client
    return None


def authenticate_none(query_client: QueryClient, request: OAuth2Request) -> OAuthClient | None:
    client_id = request.form.get("client_id")
    if not client_id or "client_secret" in request.form:
        return None
    if basic_credentials(request) is not None:
        return None
    client = query_client(client_id)
    if client is not None and client.client.is_public:
        return client
    return None
