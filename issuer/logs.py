r"""Logging set-up: text or JSON lines, and the guarantees about what never reaches a log.

Authlib logs issued tokens at debug level; ``issuer.oauth.server`` holds its logger at INFO
whatever the root level. Access logs are ours (``issuer.http.access``: the path without
its query string), not uvicorn's, because a client that wrongly puts credentials in a
query string must not get them logged.

Log lines cannot be forged (CWE-117): paths, usernames and anything else a request
carries may hold CR, LF or terminal escapes. The text format escapes every C0 and C1
control (and U+2028/U+2029) as ``\n``, ``\x1b``, ``\u2028``; a traceback keeps its
lines but each is indented, so only a real record starts at column 0. The JSON format
escapes them as JSON ``\u`` escapes: one record is always one line.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from issuer.audit import AuditValue, json_value

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_TEXT_ESCAPES = {
    c: _NAMED_ESCAPES.get(chr(c), f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}") for c in _CONTROLS
}
# json.dumps escapes C0 itself; with ensure_ascii=False it leaves C1 and U+2028/9 raw.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _CONTROLS if c >= 0x7F}
TRACEBACK_INDENT = "    "


def escape_controls(text: str) -> str:
    """``text`` with every C0/C1 control and line separator written as an escape."""
    return text.translate(_TEXT_ESCAPES)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line per record (tracebacks indented below)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join(TRACEBACK_INDENT + escape_controls(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception type).

    An audit record (:func:`issuer.audit.audit_event`) has its event name as the message
    and in ``event``, and each of its fields as a member of its own.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "audit_event", None)
        if event is not None:  # issuer.audit: the event and its fields as members
            entry["message"] = event
            entry["event"] = event
            fields: dict[str, AuditValue] = getattr(record, "audit_fields", {})
            entry.update((name, json_value(value)) for name, value in fields.items())
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False).translate(_JSON_ESCAPES)


def formatter(fmt: str = "text") -> logging.Formatter:
    """The line format of every log the issuer writes: ``text`` or ``json``."""
    if fmt == "json":
        return JsonFormatter()
    return TextFormatter()


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_audit_to_stderr(fmt: str = "text") -> None:
    """CLI commands that change security state: their ``issuer.audit`` lines on stderr.

    Only that logger, so library chatter (Alembic) stays quiet; idempotent.
    """
    audit = logging.getLogger("issuer.audit")
    if not any(isinstance(h, CurrentStderrHandler) for h in audit.handlers):
        handler = CurrentStderrHandler()
        handler.setFormatter(formatter(fmt))
        audit.addHandler(handler)
    audit.setLevel(logging.INFO)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for the process (CLI and server workers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True
