"""What went wrong with the database, in one line an operator can act on.

The driver's own message names the cause (a missing database, a refused connection,
failed authentication) but may also quote a statement, so it is never printed: it is
only matched against known causes, in order, and the answer is ours.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

# (words the driver's message all contains, our message). Fields: {where} host:port,
# {database}, {user}. First match wins: "role … does not exist" before "database …".
POSTGRES_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("role", "does not exist"), "PostgreSQL at {where} has no user {user!r}: check database_url"),
    (
        ("database", "does not exist"),
        "database {database!r} does not exist on the PostgreSQL server at {where}: "
        "create it (e.g. `createdb {database}`), then run `issuer init`",
    ),
    (
        ("authentication failed",),
        "PostgreSQL at {where} refused the credentials of user {user!r}: "
        "check the user and password in database_url",
    ),
    (
        ("no password supplied",),
        "PostgreSQL at {where} wants a password for user {user!r}: add it to database_url",
    ),
    (
        ("connection refused",),
        "cannot connect to PostgreSQL at {where}: connection refused "
        "(is it running and listening there?)",
    ),
    (
        ("timeout",),
        "PostgreSQL at {where} did not answer within db_connect_timeout (is the host reachable?)",
    ),
    (("relation", "does not exist"), "database not initialized: run `issuer init`"),
)
SQLITE_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("unable to open database file",),
        "cannot open the SQLite database {database}: does its directory exist and may "
        "this user write there?",
    ),
    (("no such table",), "database not initialized: run `issuer init`"),
)


def describe_database_error(exc: OperationalError, database_url: str) -> str:
    """The cause of ``exc`` and its fix, naming the database but never a password."""
    kind = exc.orig.__class__.__name__
    try:
        url: URL = make_url(database_url)
    except ArgumentError:
        return f"database error ({kind}): check database_url"
    detail = str(exc.orig if exc.orig is not None else exc).lower()
    sqlite = url.drivername.startswith("sqlite")
    fields = {
        "where": f"{url.host or 'localhost'}:{url.port or 5432}",
        "database": url.database,
        "user": url.username,
    }
    for words, message in SQLITE_CAUSES if sqlite else POSTGRES_CAUSES:
        if all(word in detail for word in words):
            return message.format(**fields)
    place = url.database if sqlite else fields["where"]
    return f"database error ({kind}) at {place}; is it reachable and initialized? run `issuer init`"
