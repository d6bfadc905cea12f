"""``issuer serve`` and ``make run`` as processes: a port in use is one line and exit 2;
SIGINT and SIGTERM stop them with exit status 0 and nothing alarming on stderr."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import server_env
from tests.readme import readme_section

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_is_one_line_suggesting_port_and_exit_2(
    live_server_factory, occupied_port, workers
):
    server = live_server_factory()
    result = server.cli("serve", "--port", str(occupied_port), "--workers", workers, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"issuer: error: 127.0.0.1:{occupied_port} is already in use (another server?); "
        "stop it or choose a free --port\n"
    )
    documented = result.stderr.strip().replace(str(occupied_port), "8000")
    assert documented in readme_section("Troubleshooting")


def test_serve_on_an_address_of_another_machine_suggests_host(live_server_factory):
    result = live_server_factory().cli("serve", "--host", "192.0.2.1", check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "issuer: error: cannot listen on 192.0.2.1: not an address of this machine; "
        "choose another --host\n"
    )


LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ")


def assert_clean_log(log: str) -> None:
    """Only informational log records: no error, traceback, KeyboardInterrupt or make complaint."""
    for line in log.splitlines():
        assert LOG_RECORD.match(line), log


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_serve_with_exit_status_0(live_server_factory, workers, stop):
    server = live_server_factory(workers=workers).start()
    server.process.send_signal(stop)
    assert server.process.wait(timeout=30) == 0, server.log()
    assert "Application shutdown complete" in server.log()
    assert_clean_log(server.log())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_make_run_prints_no_make_error(tmp_path, stop):
    """Ctrl-C signals make's whole process group; `kill` of a group does the same."""
    env = server_env(tmp_path)
    env["ISSUER_PORT"] = env["ISSUER_URL"].rsplit(":", 1)[1]
    # -o: the venv of this checkout is installed; never reinstall it from a test.
    command = ["make", "-f", str(ROOT / "Makefile"), "-o", str(VENV / ".installed")]
    make = subprocess.Popen(
        [*command, f"VENV={VENV}", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until_healthy(env["ISSUER_URL"], make)
        os.killpg(make.pid, stop)
        out, err = make.communicate(timeout=30)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    assert "make: ***" not in err, err
    assert_clean_log(err)
    assert "issuer is starting on" in out


def wait_until_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("make run did not start serving")
