"""`make test-fast` leaves out `e2e` and `postgres` tests: the fixtures make sure a test that
starts a server or uses PostgreSQL says so, so none slips into the quick run unmarked."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
from tests.conftest import live_server_factory, postgres_url  # noqa: F401
"""

UNMARKED = """
def test_starts_a_server(live_server_factory):
    live_server_factory().start()


def test_uses_postgresql(postgres_url):
    pass
"""


def test_unmarked_tests_that_start_a_server_or_use_postgresql_fail_naming_the_marker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # for `tests.conftest`
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_unmarked=UNMARKED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1)  # the PostgreSQL fixture fails at set-up
    output = result.stdout.str()
    assert "test_starts_a_server starts a live server: mark it @pytest.mark.e2e" in output
    assert "test_uses_postgresql uses PostgreSQL: mark it @pytest.mark.postgres" in output
