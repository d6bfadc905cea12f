"""The database key store (``key_store = "database"``): the key set in two tables, so
replicas on several hosts share keys without a shared ``keys/`` volume.

One class plays both sides of :mod:`issuer.keystore.storage`:

* written by :class:`~issuer.keystore.KeyManager` (the same timeline as ``keys/``) in
  one transaction under a database lock: ``pg_advisory_xact_lock`` on PostgreSQL,
  ``BEGIN IMMEDIATE`` on SQLite; a crash rolls the whole change back;
* read by :class:`~issuer.keystore.ReloadingKeyStore` on every worker: the change
  marker is ``key_set.generation`` (one row, one indexed read per
  ``key_reload_interval``), incremented by every change; rows are read only when it
  moved, and only keys not seen before are decrypted and parsed.

Private material is sealed (:mod:`issuer.keystore.sealing`): AES-256-GCM under the
key-encryption key from the environment, bound to the row's kid and alg. The database
never holds a key in clear; a copy of it is useless without the KEK.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from joserfc.jwk import Key
from sqlalchemy import Connection, Engine, delete, select, text, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from issuer.audit import audit_event
from issuer.errors import KeyStoreError
from issuer.keystore.manifest import KeyRecord, KeyState, Manifest, checked_manifest
from issuer.keystore.material import check_key, deserialize_key
from issuer.keystore.sealing import Sealer, wrong_kek_message
from issuer.store.diagnose import describe_database_error
from issuer.store.schema import key_set, signing_keys
from issuer.store.sql import Writers

WHERE = "the database"
# The advisory lock key of key set writes (PostgreSQL): "issuerKS" as a 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(b"issuerKS", "big") & 0x7FFF_FFFF_FFFF_FFFF


class DatabaseKeyStorage:
    """Sealed keys in ``signing_keys``, the key set's algorithm and generation in ``key_set``."""

    where = WHERE

    def __init__(self, engine: Engine, sealer: Sealer) -> None:
        self.engine = engine
        self.sealer = sealer
        self._writers = Writers(engine)
        self._conn: Connection | None = None
        # The sealed material of the rows the last manifest() read, by kid: key() opens
        # it without another query (only for kids the reader has not parsed yet).
        self._sealed: dict[str, tuple[str, bytes]] = {}

    # -- read side -------------------------------------------------------------

    def marker(self) -> bytes | None:
        with self._reading() as conn:
            generation = conn.execute(
                select(key_set.c.generation).where(key_set.c.id == 1)
            ).scalar()
        if not generation:
            return None
        return str(generation).encode("ascii")

    def manifest(self, marker: bytes) -> Manifest:
        with self._reading() as conn:
            return self._load(conn)

    def key(self, record: KeyRecord) -> Key:
        sealed = self._sealed.get(record.kid)
        if sealed is None:
            with self._reading() as conn:
                row = conn.execute(
                    select(signing_keys.c.kek_id, signing_keys.c.sealed).where(
                        signing_keys.c.kid == record.kid
                    )
                ).first()
            if row is None:
                raise KeyStoreError(f"key {record.kid} is gone from {WHERE}")
            sealed = (row.kek_id, bytes(row.sealed))
        sealed_by, data = sealed
        material = self.sealer.open(data, kid=record.kid, alg=record.alg, sealed_by=sealed_by)
        key = deserialize_key(record.alg, material)
        check_key(key, alg=record.alg, kid=record.kid, where=f"key {record.kid} in {WHERE}")
        return key

    # -- write side ------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One transaction holding the key set's lock; committed when the block ends."""
        try:
            with self._writers.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                    )
                self._check_keks(conn)
                self._conn = conn
                try:
                    yield
                finally:
                    self._conn = None
        except SQLAlchemyError as exc:
            raise KeyStoreError(_database_problem(exc, self.engine)) from None

    def load(self) -> Manifest:
        if self._conn is not None:
            return self._load(self._conn)
        with self._reading() as conn:
            return self._load(conn)

    def commit(
        self,
        records: list[KeyRecord],
        new_material: Mapping[str, bytes],
        stale: Sequence[str],
        signing_alg: str,
    ) -> None:
        conn = self._conn
        if conn is None:
            raise KeyStoreError("a key set change must run inside locked()")
        kids = [r.kid for r in records]
        conn.execute(delete(signing_keys).where(signing_keys.c.kid.not_in(kids)))
        for record in records:
            times = _times(record)
            if record.file in new_material:
                sealed = self.sealer.seal(new_material[record.file], kid=record.kid, alg=record.alg)
                conn.execute(
                    signing_keys.insert().values(
                        kid=record.kid,
                        alg=record.alg,
                        name=record.file,
                        kek_id=self.sealer.kek_id,
                        sealed=sealed,
                        **times,
                    )
                )
            else:
                conn.execute(
                    update(signing_keys).where(signing_keys.c.kid == record.kid).values(**times)
                )
        conn.execute(
            update(key_set)
            .where(key_set.c.id == 1)
            .values(signing_alg=signing_alg, generation=key_set.c.generation + 1)
        )

    # -- the key-encryption key ------------------------------------------------

    def rewrap(self) -> int:
        """Re-seal every key not sealed under the current KEK (opening it with the old
        one), in one transaction under the lock; the number of keys re-sealed."""
        count = 0
        with self.locked():
            conn = self._conn
            assert conn is not None
            rows = conn.execute(
                select(
                    signing_keys.c.kid,
                    signing_keys.c.alg,
                    signing_keys.c.kek_id,
                    signing_keys.c.sealed,
                )
            ).all()
            for row in rows:
                if row.kek_id == self.sealer.kek_id:
                    continue
                material = self.sealer.open(
                    bytes(row.sealed), kid=row.kid, alg=row.alg, sealed_by=row.kek_id
                )
                conn.execute(
                    update(signing_keys)
                    .where(signing_keys.c.kid == row.kid)
                    .values(
                        kek_id=self.sealer.kek_id,
                        sealed=self.sealer.seal(material, kid=row.kid, alg=row.alg),
                    )
                )
                count += 1
        audit_event("key.rewrapped", keys=count, kek_id=self.sealer.kek_id)
        return count

    def _check_keks(self, conn: Connection) -> None:
        """Refuse to change a key set sealed under a KEK this process does not have:
        new keys would be sealed under another key than the rest."""
        sealed_by = conn.execute(select(signing_keys.c.kek_id).distinct()).scalars().all()
        unknown = [k for k in sealed_by if not self.sealer.knows(k)]
        if unknown:
            raise KeyStoreError(wrong_kek_message(unknown[0], self.sealer.kek_id))

    # -- helpers ---------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise KeyStoreError(_database_problem(exc, self.engine)) from None

    def _load(self, conn: Connection) -> Manifest:
        signing_alg = conn.execute(select(key_set.c.signing_alg).where(key_set.c.id == 1)).scalar()
        rows = conn.execute(select(signing_keys).order_by(signing_keys.c.created_at)).all()
        records: list[KeyRecord] = []
        sealed: dict[str, tuple[str, bytes]] = {}
        for row in rows:
            records.append(
                KeyRecord.from_json(
                    {
                        "kid": row.kid,
                        "alg": row.alg,
                        "state": row.state,
                        "file": row.name,
                        "created_at": row.created_at,
                        "published_at": row.published_at,
                        "activated_at": row.activated_at,
                        "retire_at": row.retire_at,
                    }
                )
            )
            sealed[row.kid] = (row.kek_id, bytes(row.sealed))
        self._sealed = sealed
        return checked_manifest(records, signing_alg, f"the key set in {WHERE}")


def _times(record: KeyRecord) -> dict[str, Any]:
    return {
        "state": KeyState(record.state).value,
        "created_at": record.created_at,
        "published_at": record.published_at,
        "activated_at": record.activated_at,
        "retire_at": record.retire_at,
    }


def _database_problem(exc: SQLAlchemyError, engine: Engine) -> str:
    """One line for a database failure of the key store (never the statement)."""
    if isinstance(exc, OperationalError):
        cause = describe_database_error(exc, engine.url.render_as_string(hide_password=True))
    else:
        cause = f"database error ({exc.__class__.__name__})"
    return f"cannot read the signing keys from {WHERE}: {cause}"
