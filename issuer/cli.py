"""The ``issuer`` command: thin calls into the package.

Bad input is one line on stderr and exit status 2, with nothing changed. Passwords
come from a no-echo prompt or ``--password-stdin``, never from argv (where ``ps`` and
shell history would show them). Secrets are printed once, on creation, and never logged.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from issuer.audit import audit_event
from issuer.errors import ConfigError, IssuerError, NotMigratedError, ReadOnlyStoreError
from issuer.logs import configure_logging, log_audit_to_stderr
from issuer.models import (
    CLIENT_ID_RE,
    CLIENT_NAME_MAX,
    GRANT_TYPES,
    USERNAME_RE,
    AuthMethod,
    Client,
    Role,
    hash_client_secret,
)
from issuer.passwords import PasswordHasher, password_strength_failures
from issuer.sensitive import redact_url
from issuer.sessions import Sessions, audit_ended, user_fields
from issuer.settings import SIGNING_ALGS, Settings, load_settings
from issuer.store.base import Store, UserAdmin

if TYPE_CHECKING:
    from issuer.keystore import KeyManager, RotationResult

# Start-up time: `issuer --help` imports none of SQLAlchemy, Alembic, Authlib, joserfc or
# Starlette. Commands import what they use, from the composition root (issuer.compose,
# issuer.store.configured): the database commands SQLAlchemy, `init` and `db upgrade`
# Alembic, the key commands joserfc, `serve` the web stack. bench/cli_startup.py measures
# it; tests/test_cli_startup.py keeps it so.


CLIENT_SECRET_BYTES = 32
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--password X` must not silently mean `--password-stdin X`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        _fail(_without_values(message) + " (see --help)")


def _without_values(message: str) -> str:
    """argparse echoes stray arguments; they may be a password typed in the wrong place."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    shown = [
        a.split("=", 1)[0] if a.startswith("-") else "…" for a in message[len(prefix) :].split()
    ]
    return prefix + " ".join(shown)


class _RefusePassword(argparse.Action):
    """``--password``: refused without echoing its value; argv is visible to ``ps``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "passwords are never taken from the command line (ps and shell history show it); "
            "use --password-stdin or the prompt"
        )


def _store(settings: Settings, args: argparse.Namespace) -> Store:
    """The issuer's store on a migrated database, closed when the command ends."""
    from issuer.store.configured import open_migrated_store  # noqa: PLC0415 - start-up time

    try:
        store = open_migrated_store(settings)
    except NotMigratedError as exc:
        raise UsageError(str(exc)) from None
    args.opened.callback(store.close)
    return store


def _key_manager(settings: Settings, args: argparse.Namespace) -> KeyManager:
    """The key set's writer: ``keys/``, or the database's (opened, closed at the end)."""
    from issuer.compose import build_key_manager  # noqa: PLC0415 - start-up time

    if settings.key_store != "database":
        return build_key_manager(settings)
    return build_key_manager(settings, store=_store(settings, args))


def _users(settings: Settings, args: argparse.Namespace) -> tuple[Store, UserAdmin]:
    """The issuer's store and the user store to manage (the same unless ``user_store`` is set)."""
    from issuer.store.configured import load_user_store  # noqa: PLC0415 - start-up time

    store = _store(settings, args)
    users = load_user_store(settings, store)
    if not isinstance(users, UserAdmin):
        raise ReadOnlyStoreError(
            f"the configured user store {settings.user_store!r} is read-only; manage users there"
        )
    return store, users


def _user_admin(settings: Settings, args: argparse.Namespace) -> UserAdmin:
    return _users(settings, args)[1]


def _sessions(settings: Settings, args: argparse.Namespace) -> Sessions:
    """Security events on users: they need the issuer's own user store, because the change
    and the end of the user's sessions are one transaction there."""
    store, users = _users(settings, args)
    if users is not store:
        raise ReadOnlyStoreError(
            f"users come from {settings.user_store!r}; change them there, then end their "
            "sessions with `issuer users logout NAME`"
        )
    return Sessions(store, time.time)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            raise UsageError("the password on stdin is not valid UTF-8") from None
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to prompt on: pass --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UsageError("the passwords do not match")
    if not password:
        # Most often a pipe that delivered nothing (`printf '' | …`, a missing file):
        # that is not a password to judge against the strength rules.
        raise UsageError("no password given" + (" on stdin" if from_stdin else ""))
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # stdin decodes with surrogateescape: stray bytes end up here
        raise UsageError("the password is not valid UTF-8") from None
    failures = password_strength_failures(password)
    if failures:
        raise UsageError("password must have " + ", ".join(failures))
    return password


def _check_username(name: str) -> str:
    if not USERNAME_RE.fullmatch(name):
        raise UsageError("username must be 1-150 of letters, digits and . _ @ + -")
    return name


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (argparse words the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _ts(value: int | None) -> str:
    if not value:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- commands ------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    # Only `serve` needs the web server; other commands start faster without it.
    from issuer.compose import build_key_store  # noqa: PLC0415
    from issuer.http.protocol import PROTOCOL, ServerConfig  # noqa: PLC0415
    from issuer.http.serving import serve  # noqa: PLC0415

    # Fail fast, with a message, before any worker starts: no signing key, or a database
    # that is not migrated (its connections closed again while the server runs).
    if settings.key_store == "database":
        build_key_store(settings, _store(settings, args))
    else:
        build_key_store(settings)
        _store(settings, args)
    args.opened.close()
    configure_logging(settings.log_level, settings.log_format)
    config = ServerConfig(
        "issuer.app:app_factory",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        http=PROTOCOL,
        ws="none",  # no WebSocket endpoints: refuse upgrades rather than switch protocols
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        timeout_keep_alive=settings.http_keep_alive_timeout,
        limit_concurrency=settings.http_limit_concurrency,
        request_timeout=settings.http_request_timeout,
        max_headers=settings.http_max_headers,
        **graceful_shutdown(settings),
    )
    with metrics_directory(config.workers > 1):
        return 0 if serve(config) else 3


@contextlib.contextmanager
def metrics_directory(several_workers: bool) -> Iterator[None]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for a run of several workers, removed at exit.

    Workers (spawned: they import prometheus_client afresh, with the variable set) write
    their counters there and ``/metrics`` adds them up; a directory left from an earlier
    run would add that run's counts. One worker runs in this process, which imported
    prometheus_client already, and keeps its counters in memory. An operator's own
    directory (the variable already set) is used as it is and kept.
    """
    from issuer.http.metrics import MULTIPROC_ENV  # noqa: PLC0415 - only `serve` needs it

    if not several_workers or os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="issuer-metrics-") as path:
        os.environ[MULTIPROC_ENV] = path
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]


def graceful_shutdown(settings: Settings) -> dict[str, Any]:
    """uvicorn's part of a graceful shutdown on SIGTERM: stop accepting, then give the
    requests in progress ``shutdown_timeout`` seconds (each is one transaction, so a
    refresh token rotation is committed with its answer or not at all); the app's
    lifespan then closes pools and Redis (issuer.compose.Components.close)."""
    return {"timeout_graceful_shutdown": settings.shutdown_timeout}


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    from issuer.compose import build_key_manager  # noqa: PLC0415 - start-up time
    from issuer.store import migrate  # noqa: PLC0415 - start-up time
    from issuer.store.configured import open_store  # noqa: PLC0415 - start-up time

    store = open_store(settings)
    try:
        migrate.upgrade(store.engine)
    finally:
        # Closed before the file modes are checked: SQLite removes -wal/-shm on last close.
        store.close()
    print(
        f"database ready at {redact_url(settings.database_url)} "
        f"(revision {migrate.head_revision()})"
    )
    if settings.signing_alg == "HS256" and settings.secret_key is not None:
        print("signing with the HS256 secret from the environment")
    elif settings.key_store == "database":
        _init_database_keys(settings, args)
    else:
        manager = build_key_manager(settings)
        result = manager.ensure()
        alg = manager.key_set_alg()
        if result is None:
            print(f"{alg} keys already present in {settings.keys_dir}/")
            _note_key_set_alg(settings, alg)
        elif alg == "HS256":
            print(
                "!! DEVELOPMENT: generated a new HS256 signing secret in "
                f"{settings.keys_dir}/ (mode 0600).\n"
                "!! In production set ISSUER_SECRET_KEY or ISSUER_SECRET_KEY_FILE, "
                "or manage keys/ with `issuer keys rotate`."
            )
        else:
            print(f"created {alg} keys in {settings.keys_dir}/: " + ", ".join(result.created))
    for path, mode in exposed_files(settings):
        fix = "700" if path.is_dir() else "600"
        print(
            f"warning: {path} is open to other users (mode {mode:04o}): chmod {fix} {path}",
            file=sys.stderr,
        )
    return 0


def _init_database_keys(settings: Settings, args: argparse.Namespace) -> None:
    """``issuer init`` with ``key_store = "database"``: the first keys, sealed, in the
    database (no keys/ directory is created)."""
    manager = _key_manager(settings, args)
    result = manager.ensure()
    alg = manager.key_set_alg()
    if result is None:
        print(f"{alg} keys already present in the database")
        _note_key_set_alg(settings, alg)
    else:
        print(f"created {alg} keys in the database (sealed): " + ", ".join(result.created))


def exposed_files(settings: Settings) -> list[tuple[Path, int]]:
    """The SQLite files (bcrypt hashes) and key material that users other than the owner
    may access, with their modes."""
    from issuer.store.configured import sqlite_path  # noqa: PLC0415 - start-up time

    paths: list[Path] = []
    database = sqlite_path(settings)
    if database is not None:
        paths += [Path(f"{database}{suffix}") for suffix in ("", "-wal", "-shm")]
    if settings.keys_dir.is_dir():
        paths += [settings.keys_dir, *sorted(settings.keys_dir.iterdir())]
    exposed = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            exposed.append((path, mode))
    return exposed


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from issuer.store import migrate  # noqa: PLC0415 - start-up time
    from issuer.store.configured import open_store  # noqa: PLC0415 - start-up time

    store = open_store(settings)
    args.opened.callback(store.close)
    before = migrate.current_revision(store.engine)
    migrate.upgrade(store.engine)
    after = migrate.current_revision(store.engine)
    print(f"database at revision {after}" + ("" if before == after else f" (was {before})"))
    return 0


def cmd_db_purge(settings: Settings, args: argparse.Namespace) -> int:
    from issuer.compose import purge_expired_state  # noqa: PLC0415 - start-up time

    store = _store(settings, args)
    denied, refresh = purge_expired_state(store, int(time.time()), settings.leeway)
    print(f"purged {denied} expired denied access tokens and {refresh} expired refresh records")
    return 0


def _role(text: str) -> Role:
    try:
        return Role.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> int:
    username = _check_username(args.username)
    role = _role(args.role)
    users = _user_admin(settings, args)
    if users.get_by_username(username) is not None:
        raise UsageError(f"user {username!r} already exists")
    password = _read_password(args.password_stdin)
    user = users.add_user(username, PasswordHasher(settings.bcrypt_rounds).hash(password), role)
    audit_event("user.created", **user_fields(user), role=user.role.value)
    print(f"added user {user.username} ({user.role.value}) id={user.id}")
    return 0


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    users = _user_admin(settings, args).list_users()
    print(f"{'USERNAME':<24} {'ROLE':<9} {'ACTIVE':<6} {'ID':<36} CREATED")
    for u in users:
        active = "yes" if u.is_active else "no"
        print(f"{u.username:<24} {u.role.value:<9} {active:<6} {u.id:<36} {_ts(u.created_at)}")
    return 0


def _ended(ended: Sequence[str]) -> str:
    return f"{len(ended)} session{'' if len(ended) == 1 else 's'} ended"


def cmd_users_enable(settings: Settings, args: argparse.Namespace) -> int:
    user = _user_admin(settings, args).set_active(_check_username(args.username), True)
    audit_event("user.enabled", **user_fields(user))
    print(f"enabled user {user.username}")
    return 0


def cmd_users_disable(settings: Settings, args: argparse.Namespace) -> int:
    user, ended = _sessions(settings, args).disable(_check_username(args.username))
    print(f"disabled user {user.username}; {_ended(ended)}")
    return 0


def cmd_users_set_password(settings: Settings, args: argparse.Namespace) -> int:
    username = _check_username(args.username)
    sessions = _sessions(settings, args)
    if sessions.store.get_by_username(username) is None:
        raise UsageError(f"no user {username!r}")
    password = _read_password(args.password_stdin)
    password_hash = PasswordHasher(settings.bcrypt_rounds).hash(password)
    user, ended = sessions.set_password_hash(username, password_hash)
    print(f"password of {user.username} changed; {_ended(ended)}")
    return 0


def cmd_users_set_role(settings: Settings, args: argparse.Namespace) -> int:
    username = _check_username(args.username)
    role = _role(args.role)
    user, ended = _sessions(settings, args).set_role(username, role)
    print(f"role of {user.username} set to {role.value}; {_ended(ended)}")
    return 0


def cmd_users_remove(settings: Settings, args: argparse.Namespace) -> int:
    user, ended = _sessions(settings, args).remove(_check_username(args.username))
    print(f"removed user {user.username}; {_ended(ended)}")
    return 0


def _session_reader(settings: Settings, args: argparse.Namespace) -> Sessions:
    """Sessions of users from whichever user store is configured (logout, listing)."""
    from issuer.store.configured import load_user_store  # noqa: PLC0415 - start-up time

    store = _store(settings, args)
    return Sessions(store, time.time, load_user_store(settings, store))


def cmd_users_logout(settings: Settings, args: argparse.Namespace) -> int:
    user, ended = _session_reader(settings, args).logout(_check_username(args.username))
    print(f"logged out {user.username}; {_ended(ended)}")
    return 0


def cmd_users_reset_token(settings: Settings, args: argparse.Namespace) -> int:
    from issuer.resets import PasswordResets  # noqa: PLC0415 - start-up time (limits)

    username = _check_username(args.username)
    resets = PasswordResets(
        _sessions(settings, args).store,
        PasswordHasher(settings.bcrypt_rounds),
        ttl=settings.password_reset_ttl,
    )
    print(f"reset_token: {resets.issue(username, args.ttl)}")
    return 0


def cmd_sessions_list(settings: Settings, args: argparse.Namespace) -> int:
    _, found = _session_reader(settings, args).sessions_of(_check_username(args.username))
    print(f"{'SESSION':<32} {'CLIENT':<24} {'CREATED':<21} {'LAST REFRESHED':<21} EXPIRES")
    for s in found:
        print(
            f"{s.family_id:<32} {s.client_id:<24} {_ts(s.started_at):<21} "
            f"{_ts(s.refreshed_at):<21} {_ts(s.expires_at)}"
        )
    return 0


def cmd_clients_add(settings: Settings, args: argparse.Namespace) -> int:
    if not CLIENT_ID_RE.fullmatch(args.client_id):
        raise UsageError("client id must be 1-100 of letters, digits and . _ ~ -")
    if args.name is not None and not 0 < len(args.name) <= CLIENT_NAME_MAX:
        raise UsageError(f"--name must be 1-{CLIENT_NAME_MAX} characters")
    if args.public and args.auth_method:
        raise UsageError("--public clients have no secret; drop --auth-method")
    method = (
        AuthMethod.NONE if args.public else AuthMethod(args.auth_method or "client_secret_basic")
    )
    if args.introspect and args.public:
        raise UsageError("--introspect needs a confidential client (introspection takes a secret)")
    # A resource server only introspects: unless --grant says otherwise, it gets no grant.
    default_grants: tuple[str, ...] = () if args.introspect else GRANT_TYPES
    grants = tuple(dict.fromkeys(args.grant or default_grants))
    unknown_grants = [g for g in grants if g not in GRANT_TYPES]
    if unknown_grants:
        raise UsageError(
            f"unknown grant type {unknown_grants[0]!r}; expected password or refresh_token"
        )
    scopes = tuple(dict.fromkeys((args.scope or "").split()))
    unknown_scopes = [s for s in scopes if s not in settings.scopes]
    if unknown_scopes:
        raise UsageError(
            f"unknown scope {unknown_scopes[0]!r}; configured: {' '.join(settings.scopes)}"
        )
    secret = None if args.public else secrets.token_urlsafe(CLIENT_SECRET_BYTES)
    client = Client(
        client_id=args.client_id,
        auth_method=method,
        grant_types=grants,
        scopes=scopes,
        secret_hash=hash_client_secret(secret) if secret else None,
        name=args.name or "",
        created_at=int(time.time()),
        may_introspect=args.introspect,
    )
    _store(settings, args).add_client(client)
    audit_event(
        "client.created",
        client_id=client.client_id,
        auth_method=method.value,
        grants=list(grants),
        scopes=list(scopes),
        may_introspect=client.may_introspect,
    )
    shown = " ".join(grants) or "(none)"
    extra = "; may introspect every token" if client.may_introspect else ""
    print(f"added client {client.client_id} ({method.value}; grants: {shown}{extra})")
    if secret:
        print(f"client_secret: {secret}")
        print("This secret is shown once and stored only as a hash. Keep it safe.")
    return 0


def cmd_clients_list(settings: Settings, args: argparse.Namespace) -> int:
    found = _store(settings, args).list_clients()  # before the header: an error prints nothing
    print(f"{'CLIENT_ID':<24} {'AUTH':<20} {'GRANTS':<24} {'SCOPES':<24} INTROSPECT CREATED")
    for c in found:
        scopes = " ".join(c.scopes) or "(all)"
        grants = " ".join(c.grant_types) or "(none)"
        introspect = "all" if c.may_introspect else "own"
        print(
            f"{c.client_id:<24} {c.auth_method.value:<20} {grants:<24} "
            f"{scopes:<24} {introspect:<10} {_ts(c.created_at)}"
        )
    return 0


def _set_introspection(allowed: bool) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        store = _store(settings, args)
        client = store.get_client(args.client_id)
        if client is None:
            raise UsageError(f"no client {args.client_id!r}")
        if allowed and client.is_public:
            raise UsageError("a public client cannot introspect (introspection takes a secret)")
        store.set_client_introspection(args.client_id, allowed)
        audit_event(
            "client.introspection_changed", client_id=args.client_id, may_introspect=allowed
        )
        if allowed:
            print(f"client {args.client_id} may now introspect every token")
        else:
            print(f"client {args.client_id} may now introspect only its own tokens")
        return 0

    return command


def cmd_clients_remove(settings: Settings, args: argparse.Namespace) -> int:
    ended = _store(settings, args).remove_client(args.client_id)
    audit_event("client.removed", client_id=args.client_id, sessions_ended=len(ended))
    audit_ended("client.removed", None, ended, client_id=args.client_id)
    print(f"removed client {args.client_id}; {_ended(ended)}")
    return 0


def _report(result: RotationResult, manager: KeyManager) -> None:
    for kid in result.created:
        print(f"created  {kid}")
    if result.activated:
        print(f"active   {result.activated}")
    for kid in result.retired:
        print(f"removed  {kid}")
    print(f"signing  {result.signing_alg}")
    staged = result.staged
    if staged is not None:
        print(
            f"staged   {staged.alg} key {staged.kid}: published, not signing; the first "
            f"`issuer keys rotate` after {manager.lead_time(staged.alg)}s makes it active"
        )


def _note_key_set_alg(settings: Settings, key_set_alg: str) -> None:
    from issuer.compose import key_set_alg_note  # noqa: PLC0415 - start-up time

    note = key_set_alg_note(settings, key_set_alg)
    if note:
        print(f"note: {note}", file=sys.stderr)


def _require_managed_keys(settings: Settings) -> None:
    if settings.signing_alg == "HS256" and settings.secret_key is not None:
        raise UsageError(
            "the HS256 secret comes from ISSUER_SECRET_KEY(_FILE) and is not managed in keys/; "
            "rotate it by changing the environment"
        )


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    _require_managed_keys(settings)
    manager = _key_manager(settings, args)
    result = manager.rotate(force=args.force, alg=args.alg)
    _report(result, manager)
    if args.alg is None and result.staged is None:
        _note_key_set_alg(settings, result.signing_alg)
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    records = _key_manager(settings, args).records()
    print(f"{'KID':<46} {'ALG':<6} {'STATE':<9} {'CREATED':<21} RETIRES")
    for r in records:
        print(
            f"{r.kid:<46} {r.alg:<6} {r.state.value:<9} {_ts(r.created_at):<21} {_ts(r.retire_at)}"
        )
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    kid = args.kid
    result = _key_manager(settings, args).revoke(kid)
    print(f"revoked  {kid}: tokens it signed are refused from now on")
    if result.activated:
        print(f"active   {result.activated}")
    return 0


def cmd_keys_rewrap(settings: Settings, args: argparse.Namespace) -> int:
    """Re-seal the database's keys under ISSUER_KEY_ENCRYPTION_KEY, opening them with
    ISSUER_KEY_ENCRYPTION_KEY_OLD: one transaction, under the key set's lock."""
    from issuer.compose import build_key_storage  # noqa: PLC0415 - start-up time

    if settings.key_store != "database":
        raise UsageError("`issuer keys rewrap` is for key_store = database (keys/ is not sealed)")
    storage = build_key_storage(settings, _store(settings, args))
    count = storage.rewrap()
    print(
        f"rewrapped {count} key(s): every key is sealed under key-encryption key "
        f"{storage.sealer.kek_id}; ISSUER_KEY_ENCRYPTION_KEY_OLD may now be removed"
    )
    return 0


# -- parser --------------------------------------------------------------------


def _add_clients_commands(sub: Any) -> None:
    """``issuer clients …``: its own function, to keep build_parser readable."""
    clients = sub.add_parser("clients", help="manage OAuth clients").add_subparsers(
        dest="clients", required=True
    )
    cadd = clients.add_parser("add", help="register a client (prints its secret once)")
    cadd.add_argument("client_id")
    cadd.add_argument("--public", action="store_true", help="no secret (auth method 'none')")
    cadd.add_argument(
        "--auth-method", choices=["client_secret_basic", "client_secret_post"], default=None
    )
    cadd.add_argument(
        "--grant", action="append", help="password, refresh_token (repeatable; default both)"
    )
    cadd.add_argument("--scope", help="allowed scopes, space-separated (default: all)")
    cadd.add_argument("--name", help="a human-readable name")
    cadd.add_argument(
        "--introspect",
        action="store_true",
        help="may introspect every token (for resource servers; no grants unless --grant)",
    )
    cadd.set_defaults(func=cmd_clients_add, audited=True)
    clients.add_parser("list").set_defaults(func=cmd_clients_list)
    for name, allowed, what in (
        ("allow-introspection", True, "let a resource server introspect every token"),
        ("deny-introspection", False, "limit a client to introspecting its own tokens"),
    ):
        toggle = clients.add_parser(name, help=what)
        toggle.add_argument("client_id")
        toggle.set_defaults(func=_set_introspection(allowed), audited=True)
    crm = clients.add_parser("remove")
    crm.add_argument("client_id")
    crm.set_defaults(func=cmd_clients_remove, audited=True)


def _add_users_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="manage users").add_subparsers(dest="users", required=True)
    add = users.add_parser("add", help="add a user (password prompted or from stdin)")
    add.add_argument("username")
    add.add_argument("--role", required=True, help="admin | engineer | viewer")
    add.add_argument("--password-stdin", action="store_true")
    add.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    add.set_defaults(func=cmd_users_add, audited=True)
    users.add_parser("list").set_defaults(func=cmd_users_list)
    for name, func, text in (
        ("disable", cmd_users_disable, "disable a user and end all their sessions"),
        ("enable", cmd_users_enable, "enable a disabled user"),
        ("remove", cmd_users_remove, "delete a user and end all their sessions"),
        ("logout", cmd_users_logout, "end all sessions of a user"),
    ):
        p = users.add_parser(name, help=text)
        p.add_argument("username")
        p.set_defaults(func=func, audited=True)
    role = users.add_parser("set-role", help="change a user's role and end all their sessions")
    role.add_argument("username")
    role.add_argument("role", help="admin | engineer | viewer")
    role.set_defaults(func=cmd_users_set_role, audited=True)
    reset = users.add_parser(
        "reset-token", help="print a single-use password reset token (for POST /password/reset)"
    )
    reset.add_argument("username")
    reset.add_argument(
        "--ttl",
        type=_bounded(60, 7 * 86400),
        help="seconds the token is valid (default: the password_reset_ttl setting)",
    )
    reset.set_defaults(func=cmd_users_reset_token, audited=True)
    setpw = users.add_parser("set-password")
    setpw.add_argument("username")
    setpw.add_argument("--password-stdin", action="store_true")
    setpw.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    setpw.set_defaults(func=cmd_users_set_password, audited=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="issuer", description="A self-hosted OAuth 2.0 token issuer.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="serve HTTP with uvicorn")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_bounded(1, 65535), help="default: the port setting")
    serve.add_argument("--workers", type=_bounded(1, 64), help="default: the workers setting")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("init", help="create/migrate the database and key material").set_defaults(
        func=cmd_init
    )

    db = sub.add_parser("db", help="database").add_subparsers(dest="db", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db.add_parser(
        "purge", help="forget revocation state of expired tokens (servers do it hourly)"
    ).set_defaults(func=cmd_db_purge)

    _add_users_parser(sub)

    sessions = sub.add_parser("sessions", help="login sessions").add_subparsers(
        dest="sessions", required=True
    )
    slist = sessions.add_parser("list", help="a user's live sessions (no token material)")
    slist.add_argument("username")
    slist.set_defaults(func=cmd_sessions_list)

    _add_clients_commands(sub)

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys", required=True)
    rotate = keys.add_parser("rotate", help="advance every key one state (first run creates)")
    rotate.add_argument(
        "--force", action="store_true", help="promote the next key even if published recently"
    )
    rotate.add_argument(
        "--alg",
        choices=SIGNING_ALGS,
        help="switch the key set to this algorithm, staged: publish a next key of it now; "
        "the next rotation after the lead time activates it (default: keep the key set's)",
    )
    rotate.set_defaults(func=cmd_keys_rotate, audited=True)
    keys.add_parser("list").set_defaults(func=cmd_keys_list)
    krv = keys.add_parser("revoke", help="remove a key at once (after a leak)")
    krv.add_argument("kid", help="the key id (see `issuer keys list`)")
    krv.set_defaults(func=cmd_keys_revoke, audited=True)
    keys.add_parser(
        "rewrap",
        help="database key store: re-seal every key under ISSUER_KEY_ENCRYPTION_KEY "
        "(the old KEK in ISSUER_KEY_ENCRYPTION_KEY_OLD)",
    ).set_defaults(func=cmd_keys_rewrap, audited=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_kid_is_not_an_option(argv))
    database_url = ""
    try:
        settings = load_settings()
        database_url = settings.database_url
        if getattr(args, "audited", False):
            log_audit_to_stderr(settings.log_format)
        # What a command opens (stores: their engines) is closed when it ends.
        with contextlib.ExitStack() as args.opened:
            return int(args.func(settings, args))
    except ConfigError as exc:
        _fail("invalid configuration: " + "; ".join(exc.problems))
    except (UsageError, IssuerError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as exc:
        message = _database_error(exc, database_url)
        if message is None:
            raise
        _fail(message)


def _database_error(exc: Exception, database_url: str) -> str | None:
    """One safe line if ``exc`` is a database failure (only possible once a store was
    opened: SQLAlchemy is then imported), else None."""
    if "issuer.store.configured" not in sys.modules:
        return None
    from issuer.store.configured import database_error  # noqa: PLC0415 - start-up time

    return database_error(exc, database_url)


def _kid_is_not_an_option(argv: Sequence[str] | None) -> list[str]:
    """One kid in 64 starts with '-' (base64url thumbprints): argparse must not read an option."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["keys", "revoke"] and len(args) == 3 and args[2] not in ("-h", "--help"):
        args.insert(2, "--")
    return args


def _fail(message: str) -> NoReturn:
    print(f"issuer: error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
