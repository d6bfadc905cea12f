"""JSON responses, errors included, shaped once for every endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import Response

JSON = "application/json"


def json_bytes(body: Any) -> bytes:
    """Compact UTF-8 JSON (RFC 8259 §8.1)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(
    body: Any,
    status: int = 200,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
) -> Response:
    """A JSON response; ``Content-Type`` is always ``application/json``."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    response = Response(json_bytes(body), status_code=status, media_type=JSON)
    for name, value in pairs:
        if name.lower() == "content-type":
            continue
        response.headers.append(name, value)
    return response


def error_response(
    error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None
) -> Response:
    """An RFC 6749 §5.2-shaped error body with no-store caching."""
    merged = {"Cache-Control": "no-store", **(headers or {})}
    return json_response({"error": error, "error_description": description}, status, merged)
