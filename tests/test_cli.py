"""The ``issuer`` command, run for real: as ``python -m issuer`` subprocesses and as
``issuer.cli.main([...])`` in-process (the same code, faster), over a tmp SQLite file and
a tmp keys dir. Results are checked in the database and on disk, not in the CLI's words.
"""

from __future__ import annotations

import hashlib
import io
import os
import select
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.cli import main
from issuer.models import AuthMethod, Role
from issuer.passwords import verify_password
from issuer.store import migrate
from issuer.store.sql import SqlStore, make_engine
from tests.conftest import PASSWORD, free_port
from tests.readme import readme_section

EMPTY_TOML = Path(__file__).parent / "empty.toml"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    """Runs the CLI with ISSUER_* settings pointing at a tmp dir."""

    def __init__(self, tmp_path: Path, database_url: str, monkeypatch, capsys) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.db_path = Path(database_url.removeprefix("sqlite:///"))
        self.keys_dir = tmp_path / "keys"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")}
        self.env.update(
            {
                "ISSUER_DATABASE_URL": database_url,
                "ISSUER_KEYS_DIR": str(self.keys_dir),
                "ISSUER_BCRYPT_ROUNDS": "4",
                "ISSUER_CONFIG": str(EMPTY_TOML),
            }
        )
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def run(self, *args: str, stdin: str | None = None, **settings: str) -> Result:
        """``python -m issuer ARGS`` in a subprocess; ``settings`` become ISSUER_* variables."""
        env = dict(self.env)
        env.update({"ISSUER_" + k.upper(): v for k, v in settings.items()})
        proc = subprocess.run(
            [sys.executable, "-m", "issuer", *args],
            cwd=self.tmp_path,
            env=env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def __call__(self, *args: str, stdin: str = "", **settings: str) -> Result:
        """``issuer.cli.main(ARGS)`` in this process, with stdin a non-terminal stream."""
        env = dict(self.env)
        env.update({"ISSUER_" + k.upper(): v for k, v in settings.items()})
        self._capsys.readouterr()
        with self._monkeypatch.context() as m:
            for name in [k for k in os.environ if k.startswith("ISSUER_")]:
                m.delenv(name)
            for name, value in env.items():
                if name.startswith("ISSUER_"):
                    m.setenv(name, value)
            m.chdir(self.tmp_path)
            m.setattr(sys, "stdin", io.StringIO(stdin))
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def store(self) -> SqlStore:
        return SqlStore(make_engine(self.database_url))

    def snapshot(self) -> tuple[dict | None, dict]:
        """Every row of every table, and every file under keys/: to prove nothing changed."""
        files = (
            {p.name: p.read_bytes() for p in sorted(self.keys_dir.glob("*")) if p.is_file()}
            if self.keys_dir.exists()
            else {}
        )
        if not self.db_path.exists():
            return None, files
        engine = create_engine(self.database_url)
        with engine.connect() as conn:
            tables = {
                name: sorted(
                    tuple(str(v) for v in row)
                    for row in conn.execute(text(f'SELECT * FROM "{name}"'))  # noqa: S608 - names from inspect()
                )
                for name in inspect(conn).get_table_names()
            }
        engine.dispose()
        return tables, files


@pytest.fixture
def cli(tmp_path, sqlite_url, monkeypatch, capsys) -> Cli:
    return Cli(tmp_path, sqlite_url, monkeypatch, capsys)


@pytest.fixture
def ready(cli) -> Cli:
    """An initialized issuer with alice (engineer) and a confidential client ``webapp``."""
    assert cli("init").code == 0
    assert (
        cli(
            "users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD + "\n"
        ).code
        == 0
    )
    assert cli("clients", "add", "webapp").code == 0
    return cli


def assert_refused(result: Result, *fragments: str) -> None:
    """Exactly one line on stderr, exit status 2, nothing on stdout."""
    assert result.code == 2, result
    assert result.out == "", result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("issuer: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def secret_from(result: Result) -> str:
    lines = [line for line in result.out.splitlines() if line.startswith("client_secret: ")]
    assert len(lines) == 1, result.out
    return lines[0].removeprefix("client_secret: ")


# -- the command itself --------------------------------------------------------


def test_python_dash_m_issuer_help_lists_every_command(cli):
    result = cli.run("--help")
    assert result.code == 0, result.err
    for command in ("serve", "init", "db", "users", "clients", "keys"):
        assert command in result.out


def test_issuer_console_script_is_installed_in_the_venv(cli):
    script = VENV_BIN / "issuer"
    assert script.is_file()
    assert os.access(script, os.X_OK)
    proc = subprocess.run(
        [str(script), "users", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "set-password" in proc.stdout


# -- init and db upgrade -------------------------------------------------------


def test_init_creates_the_database_and_a_private_dev_key_and_says_so_loudly(cli):
    result = cli.run("init")
    assert result.code == 0, result.err
    assert "DEVELOPMENT" in result.out
    engine = make_engine(cli.database_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
    assert stat.S_IMODE(cli.keys_dir.stat().st_mode) == 0o700
    files = [p for p in cli.keys_dir.iterdir() if p.is_file()]
    assert any(p.name.endswith(".key") for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    listing = cli("keys", "list").out
    assert "HS256" in listing
    assert "active" in listing


def test_second_init_changes_nothing(cli):
    assert cli.run("init").code == 0
    before = cli.snapshot()
    again = cli.run("init")
    assert again.code == 0, again.err
    assert "DEVELOPMENT" not in again.out
    assert cli.snapshot() == before


def test_init_with_a_secret_in_the_environment_creates_no_key_files(cli, secret_key):
    result = cli("init", secret_key=secret_key)
    assert result.code == 0, result.err
    assert "DEVELOPMENT" not in result.out
    assert not list(cli.keys_dir.glob("*.key"))


def test_db_upgrade_migrates_a_fresh_database_and_is_idempotent(cli):
    assert cli("db", "upgrade").code == 0
    engine = make_engine(cli.database_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
    before = cli.snapshot()
    assert cli("db", "upgrade").code == 0
    assert cli.snapshot() == before


@pytest.mark.parametrize(
    "args",
    [
        ("users", "list"),
        ("users", "add", "bob", "--role", "viewer", "--password-stdin"),
        ("users", "disable", "bob"),
        ("clients", "add", "api"),
        ("clients", "list"),
    ],
)
def test_commands_refuse_an_uninitialized_database_without_creating_it(cli, args):
    assert_refused(cli(*args, stdin=PASSWORD + "\n"), "issuer init")
    assert not cli.db_path.exists()


def test_commands_refuse_an_empty_database_file(cli):
    cli.db_path.touch()
    assert_refused(cli("users", "list"), "not initialized", "issuer init")
    assert cli.snapshot()[0] == {}


# -- users ---------------------------------------------------------------------


def test_users_add_reads_the_password_from_stdin_and_stores_a_bcrypt_hash(cli):
    assert cli.run("init").code == 0
    result = cli.run(
        "users", "add", "alice", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert result.code == 0, result.err
    assert PASSWORD not in result.out + result.err
    user = cli.store().get_by_username("alice")
    assert user.role is Role.ADMIN
    assert user.is_active
    assert user.password_hash.startswith("$2b$04$")
    assert verify_password(PASSWORD, user.password_hash)


def test_users_add_refuses_a_weak_password_naming_each_failed_rule(cli):
    assert cli.run("init").code == 0
    before = cli.snapshot()
    result = cli.run("users", "add", "bob", "--role", "viewer", "--password-stdin", stdin="weak\n")
    assert_refused(
        result, "at least 8 characters", "an uppercase letter", "a digit", "a special character"
    )
    assert "lowercase" not in result.err
    assert cli.snapshot() == before


@pytest.mark.parametrize("argv", [["--password", "S3cret-Pass!"], ["--password=S3cret-Pass!"]])
def test_there_is_no_password_option_and_its_value_is_never_echoed(ready, argv):
    before = ready.snapshot()
    for command in (
        ["users", "add", "bob", "--role", "viewer"],
        ["users", "set-password", "alice"],
    ):
        result = ready(*command, *argv)
        assert_refused(result, "--password-stdin")
        assert "S3cret-Pass!" not in result.err
    assert ready.snapshot() == before


def test_stray_arguments_are_not_echoed_in_the_error(ready):
    result = ready("users", "add", "bob", "--role", "viewer", "S3cret-Pass!", "--bogus=x")
    assert_refused(result, "unrecognized arguments", "--bogus")
    assert "S3cret-Pass!" not in result.err
    assert "=x" not in result.err


def test_users_add_without_a_terminal_or_password_stdin_fails_in_one_line(ready):
    before = ready.snapshot()
    assert_refused(ready.run("users", "add", "bob", "--role", "viewer"), "--password-stdin")
    assert ready.snapshot() == before


def _run_on_terminal(cli: Cli, args: list[str], answers: list[str]) -> tuple[int, bytes]:
    """Run the CLI on a pseudo-terminal, typing each answer after its prompt."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "issuer", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cli.tmp_path,
        env=cli.env,
        start_new_session=True,  # no controlling terminal: getpass uses the pty on stdin
    )
    os.close(slave)
    seen = b""
    try:
        for prompt, answer in zip(["Password: ", "Repeat password: "], answers, strict=False):
            deadline = time.monotonic() + 30
            while prompt.encode() not in seen.split(b"\n")[-1]:
                assert time.monotonic() < deadline, seen
                if select.select([master], [], [], 0.2)[0]:
                    seen += os.read(master, 4096)
            os.write(master, answer.encode() + b"\n")
        proc.wait(timeout=30)
        while select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode, seen


def test_users_add_prompts_twice_on_a_terminal_without_echo(ready):
    code, screen = _run_on_terminal(
        ready, ["users", "add", "bob", "--role", "viewer"], [PASSWORD, PASSWORD]
    )
    assert code == 0, screen
    assert PASSWORD.encode() not in screen
    assert verify_password(PASSWORD, ready.store().get_by_username("bob").password_hash)


def test_users_add_on_a_terminal_refuses_mismatched_passwords(ready):
    before = ready.snapshot()
    code, screen = _run_on_terminal(
        ready, ["users", "add", "bob", "--role", "viewer"], [PASSWORD, PASSWORD + "x"]
    )
    assert code == 2
    assert b"do not match" in screen
    assert ready.snapshot() == before


def test_users_list_disable_and_enable(ready):
    assert (
        ready(
            "users", "add", "vic", "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n"
        ).code
        == 0
    )
    rows = {line.split()[0]: line.split() for line in ready("users", "list").out.splitlines()[1:]}
    assert set(rows) == {"alice", "vic"}
    assert rows["alice"][1:3] == ["engineer", "yes"]
    assert rows["vic"][1:3] == ["viewer", "yes"]

    assert ready("users", "disable", "alice").code == 0
    assert not ready.store().get_by_username("alice").is_active
    assert ready("users", "list").out.splitlines()[1].split()[:3] == ["alice", "engineer", "no"]

    assert ready("users", "enable", "alice").code == 0
    assert ready.store().get_by_username("alice").is_active


def test_users_set_password_replaces_the_hash(ready):
    new_password = "An0ther-Passw0rd!"
    result = ready("users", "set-password", "alice", "--password-stdin", stdin=new_password + "\n")
    assert result.code == 0, result.err
    stored = ready.store().get_by_username("alice").password_hash
    assert verify_password(new_password, stored)
    assert not verify_password(PASSWORD, stored)


def test_a_password_that_is_not_utf8_is_refused(ready):
    before = ready.snapshot()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "issuer",
            "users",
            "add",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        input=b"Corr3ct-Horse!\xff\n",
        cwd=ready.tmp_path,
        env=ready.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert_refused(Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), "UTF-8")
    assert ready.snapshot() == before


# -- clients -------------------------------------------------------------------


def test_clients_add_prints_a_secret_once_and_stores_only_its_sha256(cli, make_settings):
    assert cli("init").code == 0
    assert (
        cli(
            "users", "add", "alice", "--role", "engineer", "--password-stdin", stdin=PASSWORD + "\n"
        ).code
        == 0
    )
    result = cli.run("clients", "add", "webapp")
    assert result.code == 0, result.err
    secret = secret_from(result)
    assert len(secret) >= 43  # 32 random bytes, base64url

    client = cli.store().get_client("webapp")
    assert client.auth_method is AuthMethod.CLIENT_SECRET_BASIC
    assert client.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored_bytes = b"".join(p.read_bytes() for p in cli.db_path.parent.glob(cli.db_path.name + "*"))
    assert secret.encode() not in stored_bytes
    assert secret not in cli("clients", "list").out

    # The printed secret is the one that works at the token endpoint.
    with TestClient(create_app(make_settings()), base_url="http://127.0.0.1:8000") as issuer:
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        assert issuer.post("/oauth/token", data=form, auth=("webapp", secret)).status_code == 200
        assert (
            issuer.post("/oauth/token", data=form, auth=("webapp", "x" + secret)).status_code == 401
        )


def test_clients_add_public_prints_no_secret(ready):
    result = ready("clients", "add", "spa", "--public")
    assert result.code == 0, result.err
    assert "client_secret" not in result.out
    client = ready.store().get_client("spa")
    assert client.auth_method is AuthMethod.NONE
    assert client.secret_hash is None


def test_clients_add_records_method_grants_and_scopes(ready):
    result = ready(
        "clients",
        "add",
        "api",
        "--auth-method",
        "client_secret_post",
        "--grant",
        "password",
        "--scope",
        "read write",
        "--name",
        "The API",
    )
    assert result.code == 0, result.err
    secret_from(result)
    client = ready.store().get_client("api")
    assert client.auth_method is AuthMethod.CLIENT_SECRET_POST
    assert client.grant_types == ("password",)
    assert client.scopes == ("read", "write")
    assert client.name == "The API"
    row = next(line for line in ready("clients", "list").out.splitlines() if line.startswith("api"))
    assert row.split()[1:5] == ["client_secret_post", "password", "read", "write"]


def test_clients_add_introspect_registers_a_resource_server_without_grants(ready):
    result = ready("clients", "add", "api", "--introspect")
    assert result.code == 0, result.err
    assert "grants: (none); may introspect every token" in result.out
    secret_from(result)
    client = ready.store().get_client("api")
    assert client.may_introspect is True
    assert client.grant_types == ()
    assert ready.store().get_client("webapp").may_introspect is False
    rows = {line.split()[0]: line.split() for line in ready("clients", "list").out.splitlines()}
    assert rows["api"][2] == "(none)"
    assert rows["api"][4] == "all"
    assert rows["webapp"][5] == "own"

    both = ready("clients", "add", "bff", "--introspect", "--grant", "password")
    assert both.code == 0, both.err
    assert ready.store().get_client("bff").grant_types == ("password",)


def test_clients_add_introspect_refuses_a_public_client(ready):
    before = ready.snapshot()
    assert_refused(ready("clients", "add", "spa", "--public", "--introspect"), "confidential")
    assert ready.snapshot() == before


def test_an_existing_client_is_allowed_and_denied_introspection(ready):
    """After upgrading, a resource server keeps its secret and gets the permission back."""
    allowed = ready("clients", "allow-introspection", "webapp")
    assert allowed.code == 0, allowed.err
    assert "every token" in allowed.out
    assert ready.store().get_client("webapp").may_introspect is True
    assert ready("clients", "deny-introspection", "webapp").code == 0
    assert ready.store().get_client("webapp").may_introspect is False


def test_introspection_cannot_be_allowed_to_a_missing_or_public_client(ready):
    assert ready("clients", "add", "spa", "--public").code == 0
    before = ready.snapshot()
    assert_refused(ready("clients", "allow-introspection", "nobody"), "no client")
    assert_refused(ready("clients", "allow-introspection", "spa"), "public")
    assert ready.snapshot() == before


def test_clients_remove_deletes_the_client(ready):
    assert ready("clients", "remove", "webapp").code == 0
    assert ready.store().get_client("webapp") is None
    assert "webapp" not in ready("clients", "list").out


# -- keys ----------------------------------------------------------------------


def _keys(cli: Cli) -> dict[str, str]:
    result = cli("keys", "list")
    assert result.code == 0, result.err
    return {line.split()[0]: line.split()[2] for line in result.out.splitlines()[1:]}


def test_keys_list_rotate_and_revoke(ready):
    keys = _keys(ready)
    assert sorted(keys.values()) == ["active", "next"]
    upcoming = next(kid for kid, state in keys.items() if state == "next")
    first = next(kid for kid, state in keys.items() if state == "active")

    result = ready("keys", "rotate", "--force")
    assert result.code == 0, result.err
    keys = _keys(ready)
    assert keys[upcoming] == "active"
    assert keys[first] == "previous"

    result = ready("keys", "revoke", first)
    assert result.code == 0, result.err
    assert first not in _keys(ready)


def test_keys_rotate_refuses_when_the_secret_comes_from_the_environment(ready, secret_key):
    before = ready.snapshot()
    assert_refused(ready("keys", "rotate", secret_key=secret_key), "ISSUER_SECRET_KEY")
    assert ready.snapshot() == before


# -- bad input: one line, exit 2, nothing changed --------------------------------

BAD_INPUT = {
    "unknown role": (
        ["users", "add", "bob", "--role", "superuser", "--password-stdin"],
        ["unknown role"],
    ),
    "duplicate user": (
        ["users", "add", "alice", "--role", "viewer", "--password-stdin"],
        ["already exists"],
    ),
    "bad username": (["users", "add", "bob smith", "--role", "viewer"], ["username"]),
    "overlong username": (["users", "add", "b" * 151, "--role", "viewer"], ["username"]),
    "no terminal": (["users", "add", "bob", "--role", "viewer"], ["--password-stdin"]),
    "disable unknown user": (["users", "disable", "nobody"], ["no user 'nobody'"]),
    "enable unknown user": (["users", "enable", "nobody"], ["no user 'nobody'"]),
    "set-password unknown user": (
        ["users", "set-password", "nobody", "--password-stdin"],
        ["no user 'nobody'"],
    ),
    "remove unknown client": (["clients", "remove", "nope"], ["no client 'nope'"]),
    "bad client id": (["clients", "add", "web app!"], ["client id"]),
    "duplicate client": (["clients", "add", "webapp"], ["already exists"]),
    "unknown scope": (
        ["clients", "add", "api", "--scope", "read admin"],
        ["unknown scope 'admin'"],
    ),
    "unknown grant": (
        ["clients", "add", "api", "--grant", "client_credentials"],
        ["unknown grant type"],
    ),
    "public with a secret method": (
        ["clients", "add", "api", "--public", "--auth-method", "client_secret_post"],
        ["--public"],
    ),
    "unknown auth method": (
        ["clients", "add", "api", "--auth-method", "private_key_jwt"],
        ["invalid choice"],
    ),
    "overlong client name": (["clients", "add", "api", "--name", "n" * 201], ["--name"]),
    "revoke unknown key": (["keys", "revoke", "no-such-kid"], ["no-such-kid"]),
    "unknown command": (["frobnicate"], ["invalid choice"]),
    "unknown subcommand": (["users", "frobnicate"], ["invalid choice"]),
    "no command": ([], ["required"]),
    "no subcommand": (["clients"], ["required"]),
    "missing username": (["users", "add"], ["required"]),
    "missing role": (["users", "add", "bob", "--password-stdin"], ["--role"]),
    "missing kid": (["keys", "revoke"], ["required"]),
    "serve on a bad port": (["serve", "--port", "70000"], ["--port", "between 1 and 65535"]),
    "serve with no workers": (["serve", "--workers", "0"], ["--workers"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ready, case):
    args, fragments = BAD_INPUT[case]
    before = ready.snapshot()
    assert_refused(ready(*args, stdin=PASSWORD + "\n"), *fragments)
    assert ready.snapshot() == before


@pytest.mark.parametrize(
    ("password", "rules"),
    [
        ("weak", ["at least 8 characters", "an uppercase letter", "a digit", "a special"]),
        ("alllowercase1!", ["an uppercase letter"]),
        ("NoDigits-Here", ["a digit"]),
        ("N0Special1", ["a special character"]),
        ("Ä1!" + "ä" * 40, ["at most 72 bytes"]),
    ],
)
def test_weak_passwords_change_nothing_and_name_the_failed_rules(ready, password, rules):
    before = ready.snapshot()
    for command in (
        ["users", "add", "bob", "--role", "viewer", "--password-stdin"],
        ["users", "set-password", "alice", "--password-stdin"],
    ):
        assert_refused(ready(*command, stdin=password + "\n"), "password must have", *rules)
    assert ready.snapshot() == before


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"signing_alg": "XX"}, "signing_alg"),
        ({"secret_key": "too-short"}, "secret_key"),
        ({"secret_key": "a" * 64}, "secret_key"),
        ({"bcrypt_rounds": "lots"}, "bcrypt_rounds"),
        ({"url": "ftp://example.com"}, "url"),
    ],
)
def test_invalid_configuration_is_one_line_naming_the_setting(ready, settings, named):
    before = ready.snapshot()
    result = ready(
        "users",
        "add",
        "bob",
        "--role",
        "viewer",
        "--password-stdin",
        stdin=PASSWORD + "\n",
        **settings,
    )
    assert_refused(result, "invalid configuration", named)
    assert ready.snapshot() == before


def test_invalid_configuration_in_a_subprocess_too(cli):
    assert_refused(cli.run("init", signing_alg="XX"), "signing_alg")
    assert not cli.db_path.exists()
    assert not cli.keys_dir.exists()


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_an_empty_password_on_stdin_is_no_password_given(ready, stdin):
    before = ready.snapshot()
    for command in (
        ["users", "add", "bob", "--role", "viewer", "--password-stdin"],
        ["users", "set-password", "alice", "--password-stdin"],
    ):
        result = ready.run(*command, stdin=stdin)
        assert (result.code, result.out) == (2, "")
        assert result.err == "issuer: error: no password given on stdin\n"
        assert result.err.strip() in readme_section("Troubleshooting")
    assert ready.snapshot() == before


def test_an_invalid_setting_echoes_its_value_and_names_its_variable(cli):
    result = cli.run("init", signing_alg="RS257")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "issuer: error: invalid configuration: signing_alg: must be one of "
        "HS256, RS256, ES256, EdDSA, got 'RS257' (from ISSUER_SIGNING_ALG)\n"
    )
    assert not cli.db_path.exists()
    assert result.err.strip() in readme_section("Troubleshooting")


def test_an_invalid_setting_from_the_config_file_names_the_file(cli):
    toml = cli.tmp_path / "issuer.toml"
    toml.write_text('[issuer]\nsigning_alg = "RS257"\n', encoding="utf-8")
    result = cli.run("init", config=str(toml))
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "issuer: error: invalid configuration: signing_alg: must be one of "
        f"HS256, RS256, ES256, EdDSA, got 'RS257' (from {toml})\n"
    )


def test_a_lowercase_signing_algorithm_is_accepted(cli):
    result = cli.run("init", signing_alg="rs256", rsa_key_size="2048")
    assert result.code == 0, result.err
    assert "created RS256 keys" in result.out


# -- serve refuses to start ----------------------------------------------------


def test_serve_without_keys_refuses_in_one_line(cli):
    assert cli("db", "upgrade").code == 0
    assert_refused(cli.run("serve", port=str(free_port())), "no active HS256 key", "issuer init")


def test_serve_refuses_an_unmigrated_database(cli, secret_key):
    assert_refused(cli.run("serve", port=str(free_port()), secret_key=secret_key), "issuer init")
    assert not cli.db_path.exists()
    cli.db_path.touch()
    assert_refused(
        cli.run("serve", port=str(free_port()), secret_key=secret_key), "not initialized"
    )
    assert cli.snapshot()[0] == {}


# -- quickstart ----------------------------------------------------------------


def run_quickstart(cli, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "issuer.quickstart"],
        env={**cli.env, "ISSUER_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_quickstart_prints_commands_for_the_configured_url(cli):
    proc = run_quickstart(cli, "http://127.0.0.1:8123")
    assert proc.returncode == 0, proc.stderr
    assert "http://127.0.0.1:8123/oauth/token" in proc.stdout
    assert "--password-stdin" in proc.stdout


def test_quickstart_with_an_invalid_configuration_says_so_in_one_line(cli):
    proc = run_quickstart(cli, "ftp://example.com")
    assert_refused(Result(proc.returncode, proc.stdout, proc.stderr), "url")


@pytest.mark.postgres
def test_init_never_prints_the_database_password(cli, postgres_url):
    # PostgreSQL here trusts local connections, so any password is accepted and unused.
    with_password = postgres_url.replace("postgres@", "postgres:n0t-for-eyes@", 1)
    result = cli("init", database_url=with_password)
    assert result.code == 0, result
    assert "n0t-for-eyes" not in result.out + result.err
    assert "postgres:***@" in result.out
