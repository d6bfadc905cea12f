"""``POST /password/reset`` in the protocol core's terms: HttpRequest in, OAuthResponse out.

The form rules are the token endpoint's (form body only, no query string, no repeated
parameter); the answers are RFC 6749 §5.2-shaped JSON errors, never a 500:
``invalid_grant`` for a bad, used or expired token, ``invalid_request`` naming the
failed strength rules (also in ``failed_rules``), 429 with ``Retry-After`` once the
address spent its failure budget. The work itself is :class:`issuer.resets.PasswordResets`.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error

from issuer.errors import PasswordPolicyError
from issuer.oauth.requests import HttpRequest, OAuthResponse
from issuer.oauth.server import NO_STORE_HEADERS, check_form_request
from issuer.resets import PasswordResets, ResetThrottledError, ResetTokenError


def _error(status: int, error: str, description: str, **extra: object) -> OAuthResponse:
    body: dict[str, object] = {"error": error, "error_description": description, **extra}
    return OAuthResponse(status, body, list(NO_STORE_HEADERS))


class PasswordResetEndpoint:
    """Redeems a reset token from a form with ``token`` and ``new_password``. Blocking."""

    def __init__(self, resets: PasswordResets) -> None:
        self.resets = resets

    def __call__(self, request: HttpRequest) -> OAuthResponse:
        try:
            check_form_request(request)
        except OAuth2Error as error:
            status, body, _ = error()
            return _error(status, body["error"], body.get("error_description", ""))
        form = dict(request.form)
        missing = [name for name in ("token", "new_password") if name not in form]
        if missing:
            names = " and ".join(f"'{name}'" for name in missing)
            return _error(400, "invalid_request", f"The {names} parameter is required.")
        try:
            self.resets.redeem(form["token"], form["new_password"], address=request.client_ip)
        except ResetThrottledError as exc:
            response = _error(429, "too_many_requests", str(exc))
            response.headers.append(("Retry-After", str(exc.retry_after)))
            return response
        except ResetTokenError as exc:
            return _error(400, "invalid_grant", str(exc))
        except PasswordPolicyError as exc:
            return _error(
                400,
                "invalid_request",
                "The new password must have " + ", ".join(exc.failures) + ".",
                failed_rules=exc.failures,
            )
        body = {"status": "password_changed", "sessions_ended": True}
        return OAuthResponse(200, body, list(NO_STORE_HEADERS))
