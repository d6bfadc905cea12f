"""Audit events: one structured record per security-relevant event, on ``issuer.audit``.

An event is a dotted name (``login.failed``, ``session.ended``) and a few fields
(``user``, ``client_id``, ``address``, ``reason``…). The text format renders it as
``login.failed user=alice client_id=web address=192.0.2.7 reason=invalid_credentials``;
the JSON format (:mod:`issuer.logs`) as one object with ``event`` and each field as a
JSON member, so a log pipeline can alert on ``event == "refresh.reuse_detected"``
without parsing prose.

One function, :func:`audit_event`, writes every event. Listeners registered with
:func:`add_listener` see each event before it is logged, whatever the log level:
``issuer.http.metrics`` derives its counters from them, so a counter and its audit line
cannot disagree and no grant carries metrics code.

What an event never holds: a password, a token, a client secret, an Authorization
header. Fields are names a reviewer can check (:data:`EVENTS` lists every event and its
fields), and a field whose name says "password", "secret" or "token" is refused outright.
A user who does not exist is named only by a keyed hash (``user_hash``): a password
typed into the username field must not reach a log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence

logger = logging.getLogger("issuer.audit")
log = logging.getLogger(__name__)

AuditValue = str | int | bool | Sequence[str] | None
Fields = Mapping[str, AuditValue]
Listener = Callable[[str, Fields], None]

# Every event and what it means; tests run each flow and check its fields.
EVENTS: Mapping[str, str] = {
    "login.succeeded": "a password login issued tokens and started a session",
    "login.failed": "a password login was refused (wrong password, unknown or disabled user)",
    "login.throttled": "a login was refused before bcrypt: a failure budget is spent",
    "token.refreshed": "a refresh token was spent for a new pair",
    "token.refresh_retried": "a refresh repeated within the retry window got its successor",
    "refresh.reuse_detected": "a spent refresh token came back: its family is revoked",
    "token.revoked": "a client revoked a token at /oauth/revoke (RFC 7009)",
    "session.ended": "sessions of a user ended (the cause names the event that ended them)",
    "password.rehashed": "a login upgraded a password hash to the configured bcrypt cost",
    "user.created": "an operator added a user",
    "user.enabled": "an operator enabled a user",
    "user.disabled": "an operator disabled a user",
    "user.password_changed": "an operator set a user's password",
    "user.role_changed": "an operator changed a user's role",
    "user.removed": "an operator removed a user",
    "user.logged_out": "an operator ended every session of a user",
    "client.created": "an operator registered a client",
    "client.introspection_changed": "an operator changed what a client may introspect",
    "client.removed": "an operator removed a client (its sessions end)",
    "password_reset.requested": "a password reset token was issued",
    "password_reset.used": "a password reset token set a new password",
    "password_reset.refused": "a password reset was refused (invalid token, or throttled)",
    "key.created": "a signing key was generated",
    "key.activated": "a key became the one that signs",
    "key.retired": "a key stopped signing (it still verifies until it is removed)",
    "key.removed": "a retired key passed its retirement time and was deleted",
    "key.revoked": "an operator revoked a key: tokens it signed are refused",
    "key.rewrapped": "the database key store's keys were re-sealed under a new key-encryption key",
}

# Events an operator should look at: logged at WARNING, the rest at INFO.
WARNING_EVENTS = frozenset(
    {"login.throttled", "refresh.reuse_detected", "password_reset.refused", "key.revoked"}
)

RESERVED = frozenset({"time", "level", "logger", "message", "exception", "event"})
_SECRET_WORDS = ("password", "secret", "token", "authorization")

_listeners: list[Listener] = []


def audit_event(event: str, /, **fields: AuditValue) -> None:
    """Record ``event`` with ``fields``: listeners first, then one ``issuer.audit`` line."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    bad = [name for name in fields if name in RESERVED or _names_a_secret(name)]
    if bad:
        raise ValueError(f"audit field {bad[0]!r} is reserved or names a secret")
    for listener in _listeners:
        try:
            listener(event, fields)
        except Exception:  # a broken listener must never fail a login
            log.exception("audit listener failed on %s", event)
    level = logging.WARNING if event in WARNING_EVENTS else logging.INFO
    if logger.isEnabledFor(level):
        # A finished record handed to the handlers (as issuer.http.access does): Logger.log
        # would also walk the stack for a caller no formatter prints, a third of this
        # function's time on the refresh path. No args: the line is never %-formatted.
        extra = {"audit_event": event, "audit_fields": dict(fields)}
        record = logger.makeRecord(
            logger.name, level, __file__, 0, render(event, fields), (), None, extra=extra
        )
        logger.handle(record)


def render(event: str, fields: Fields) -> str:
    """The text form: ``event key=value …``; a value with spaces or quotes is JSON-quoted."""
    parts = [event]
    for name, value in fields.items():
        parts.append(f"{name}={_text_value(value)}")
    return " ".join(parts)


def json_value(value: AuditValue) -> str | int | bool | list[str] | None:
    """A field as a JSON member: sequences become arrays, the rest stays as it is."""
    if isinstance(value, str | int | bool) or value is None:
        return value
    return list(value)


def add_listener(listener: Listener) -> None:
    """Call ``listener(event, fields)`` for every later event (idempotent)."""
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling ``listener`` (no error if it was not registered)."""
    if listener in _listeners:
        _listeners.remove(listener)


def _names_a_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _text_value(value: AuditValue) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = value if isinstance(value, str) else ",".join(value) or "-"
    if any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text
