"""Error handlers: clients see a safe JSON error, the log gets the detail (never a token)."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from issuer.http.responses import json_response

log = logging.getLogger("issuer.http")


async def http_exception(request: Request, exc: Exception) -> Response:
    """404, 405 and friends as JSON, keeping the headers the exception carries."""
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    headers = dict(exc.headers or {})
    if exc.status_code < 500:
        return json_response(
            {"error": error, "error_description": str(exc.detail)}, exc.status_code, headers
        )
    return json_response({"error": "server_error"}, exc.status_code, headers)


async def unexpected(request: Request, exc: Exception) -> Response:
    """Anything unforeseen: a generic 500 body; the traceback goes to the log."""
    log.error(
        "unhandled %s on %s %s",
        exc.__class__.__name__,
        request.method,
        request.url.path,
        exc_info=exc,
    )
    return json_response(
        {"error": "server_error", "error_description": "An unexpected error occurred."}, 500
    )
