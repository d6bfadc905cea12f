"""Where a key set is kept, behind two small protocols, so that one
:class:`~issuer.keystore.rotation.KeyManager` (the timeline) and one reloading reader
(:class:`~issuer.keystore.reader.ReloadingKeyStore`) serve every storage:

* :class:`KeyBackend`, the write side: an exclusive section (``locked``), the manifest
  as it is, and ``commit`` of the next one with the material of new keys.
* :class:`KeySource`, the read side: a cheap change ``marker``, the manifest for it, and
  one key's parsed material.

:class:`DirectoryStorage` is ``keys/``: the manifest file, one file per key, a file lock.
The database storage (sealed rows, a database lock) is ``issuer.store.keys``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from joserfc.jwk import Key

from issuer.errors import KeyStoreError
from issuer.keystore.manifest import (
    MANIFEST_NAME,
    KeyRecord,
    Manifest,
    load_manifest,
    manifest_bytes,
    parse_manifest_document,
    read_manifest_bytes,
)
from issuer.keystore.material import check_key, deserialize_key

LOCK_NAME = ".lock"
# Names that only KeyManager writes: orphans with these names are safe to delete.
KEY_FILE_RE = re.compile(r"(?:hs256|rs256|es256|eddsa)-[0-9a-f]{16}\.(?:key|pem)")
TMP_FILE_RE = re.compile(r"\.[^/]+\.[0-9a-f]{8}\.tmp")


class KeyBackend(Protocol):
    """The write side of a key storage, for :class:`KeyManager`."""

    #: Where the keys are, for messages ("keys", "the database").
    where: str

    def locked(self) -> AbstractContextManager[None]:
        """The one writer's section: ``load`` and ``commit`` inside it see and change one
        consistent state; nobody else writes meanwhile."""
        ...

    def load(self) -> Manifest:
        """The key set's manifest (no records and no algorithm when there is none yet)."""
        ...

    def commit(
        self,
        records: list[KeyRecord],
        new_material: Mapping[str, bytes],
        stale: Sequence[str],
        signing_alg: str,
    ) -> None:
        """Make ``records`` the key set (inside ``locked``): ``new_material`` holds the
        serialized keys created by this change by record ``file``; ``stale`` names the
        ``file`` of each key removed."""
        ...


class KeySource(Protocol):
    """The read side of a key storage, for the reader every request asks."""

    where: str

    def marker(self) -> bytes | None:
        """Cheap to read, different whenever the key set changed; None when there is none."""
        ...

    def manifest(self, marker: bytes) -> Manifest:
        """The manifest ``marker`` was read for (or a newer one)."""
        ...

    def key(self, record: KeyRecord) -> Key:
        """The parsed private key ``record`` names, checked against the record."""
        ...


class DirectoryStorage:
    """``keys/``: ``manifest.json`` plus one file per key, written under a file lock.

    Writes are crash-safe: key files are written and fsynced first, then the manifest is
    replaced by an atomic rename, then files of retired keys are deleted. A crash at any
    point leaves the previous or the next valid manifest; the orphaned files it may leave
    are removed by the next write. Readers take no lock.
    """

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.where = str(keys_dir)

    # -- read side -------------------------------------------------------------

    def marker(self) -> bytes | None:
        # The manifest itself (a few hundred bytes), compared by content: an mtime or
        # inode can repeat within a clock tick, content cannot.
        return read_manifest_bytes(self.keys_dir)

    def manifest(self, marker: bytes) -> Manifest:
        return parse_manifest_document(marker, self.keys_dir / MANIFEST_NAME)

    def key(self, record: KeyRecord) -> Key:
        return load_key(self.keys_dir, record)

    # -- write side ------------------------------------------------------------

    def load(self) -> Manifest:
        return load_manifest(self.keys_dir)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        ensure_keys_dir(self.keys_dir)
        fd = os.open(self.keys_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def commit(
        self,
        records: list[KeyRecord],
        new_material: Mapping[str, bytes],
        stale: Sequence[str],
        signing_alg: str,
    ) -> None:
        for name, data in new_material.items():
            atomic_write(self.keys_dir / name, data)
        atomic_write(self.keys_dir / MANIFEST_NAME, manifest_bytes(records, signing_alg))
        in_use = {r.file for r in records}
        # Besides this change's stale files: whatever an earlier crash left behind.
        # Only names KeyManager writes; we hold the lock, so no write is in flight.
        orphans = [
            p.name
            for p in self.keys_dir.iterdir()
            if KEY_FILE_RE.fullmatch(p.name) or TMP_FILE_RE.fullmatch(p.name)
        ]
        for name in dict.fromkeys([*stale, *orphans]):
            if name and name not in in_use:
                with contextlib.suppress(FileNotFoundError):
                    (self.keys_dir / name).unlink()


def load_key(keys_dir: Path, record: KeyRecord) -> Key:
    """Read and parse the key file ``record`` names, checked against the record."""
    path = keys_dir / record.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
    key = deserialize_key(record.alg, data)
    check_key(key, alg=record.alg, kid=record.kid, where=f"key file {record.file} ({record.kid})")
    return key


def ensure_keys_dir(keys_dir: Path) -> None:
    """Create ``keys_dir`` (0700) if needed; tighten one that others can read."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = keys_dir.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            keys_dir.chmod(0o700)
        except OSError as exc:
            raise KeyStoreError(f"{keys_dir} is readable by others and cannot be fixed") from exc


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:  # pragma: no cover - platform without directory fds
        if exc.errno in (errno.EACCES, errno.EISDIR):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
