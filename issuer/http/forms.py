"""Reading a form-encoded body into the protocol core's :class:`HttpRequest`, safely.

Bodies are bounded, decoded strictly as UTF-8 and parsed with a field limit; anything
odd is a 400 ``invalid_request``, never a 500.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

MAX_BODY_BYTES = 16 * 1024
MAX_FIELDS = 50


class BadRequestError(Exception):
    """The body could not be read as a form; the message is safe to show the client."""

    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.status = status


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        digits = declared.strip()
        # RFC 9110 §8.6: 1*DIGIT. int() would also take "-1", "+5", "1_0" and "٣".
        if not (digits.isascii() and digits.isdigit()):
            raise BadRequestError("Invalid Content-Length.")
        if int(digits) > limit:
            raise BadRequestError("The request body is too large.", 413)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise BadRequestError("The request body is too large.", 413)
    except ClientDisconnect:
        # The client gave up mid-body: nobody reads the answer, but it must not be
        # logged as a server error (a 500 and a traceback) on every aborted request.
        raise BadRequestError("The client closed the connection before the body ended.") from None
    return bytes(body)


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs, repeats kept, strictly UTF-8."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequestError("The request body is not a valid UTF-8 form.") from None
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise BadRequestError("The request contains a NUL character.")
    return pairs
