"""Log lines cannot be forged (CWE-117): request data never starts a line of its own.

Why: ``GET /x%0d%0a2026-12-01 20:20:00,000 WARNING issuer.audit: FORGED login user_id=admin``
wrote a forged ``issuer.audit`` line in the default text format. Both formats are checked,
on the formatters and on a live server's own log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from urllib.parse import quote

import httpx
import pytest

from issuer.logs import JsonFormatter, TextFormatter, escape_controls

FORGED = "2026-12-01 20:20:00,000 WARNING issuer.audit: FORGED login user_id=admin"
FORGED_PATH = "/x\r\n" + FORGED
# A real text record starts with the asctime stamp; anything else must be indented.
RECORD_START = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ [\w.]+: ")


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("issuer.access", logging.INFO, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("tab\there", "tab\\there"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("sep\u2028\u2029", "sep\\u2028\\u2029"),
        ("zoë 渡辺 🔑 \\n", "zoë 渡辺 🔑 \\n"),
    ],
)
def test_controls_are_escaped_and_everything_else_kept(raw, escaped):
    assert escape_controls(raw) == escaped


def test_a_text_record_with_a_forged_line_stays_one_line():
    line = TextFormatter().format(record('%s "GET %s" %d', "192.0.2.1", FORGED_PATH, 404))
    assert "\n" not in line
    assert "\r" not in line
    assert line.endswith('"GET /x\\r\\n' + FORGED + '" 404')


def test_a_traceback_keeps_its_lines_but_none_of_them_can_pass_for_a_record():
    try:
        raise ValueError("bad input\n" + FORGED)
    except ValueError:
        exc_info = sys.exc_info()
    text = TextFormatter().format(record("unhandled %s", "ValueError", exc_info=exc_info))
    first, *rest = text.split("\n")
    assert RECORD_START.match(first)
    assert "Traceback (most recent call last):" in text
    assert rest
    assert all(line.startswith("    ") for line in rest), rest


def test_a_json_record_is_one_line_with_every_control_escaped():
    message = FORGED_PATH + "\x1b\x85\u2028"
    line = JsonFormatter().format(record("%s", message))
    assert "\n" not in line
    for char in "\r\x1b\x85\u2028":
        assert char not in line
    assert json.loads(line)["message"] == message


# -- a live server --------------------------------------------------------------------------


def assert_no_forged_record(log: str, record_start: re.Pattern[str] | None) -> None:
    for line in log.splitlines():
        assert not line.startswith(FORGED), line
        if record_start is not None and line and not line.startswith(" "):
            assert record_start.match(line), line


@pytest.mark.e2e
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_live_server_writes_no_forged_line(live_server_factory, log_format):
    server = live_server_factory(log_format=log_format).start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get(quote(FORGED_PATH)).status_code == 404
        # An audit line carries the (unknown) username only as a keyed hash, and the
        # access line the path: neither may break the line.
        login = http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": "x\r\n" + FORGED, "password": "x"},
        )
        assert login.status_code in (400, 401)
    server.stop()
    log = server.log()
    assert "FORGED" in log  # the path was logged, escaped
    if log_format == "text":
        assert "\\r\\n" + FORGED in log
        assert_no_forged_record(log, RECORD_START)
    else:
        for line in log.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                assert entry["logger"] != "issuer.audit" or "FORGED" not in entry["message"]
            else:
                assert not line.startswith(FORGED), line
