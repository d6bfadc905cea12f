"""The write side of ``keys/``: create, rotate and revoke keys, under one file lock.

Life of a key (each ``rotate`` moves every key one step)::

    next ──────────────► active ──────────────► previous ───────────► retired
    published,           the one key            published and         deleted
    not yet signing      that signs             accepted until every
                                                token it signed expired

The key that signs is the active key of the key set's algorithm, recorded in the
manifest (``signing_alg``); the setting of that name only chooses the algorithm of a new
key set, so a scheduled rotation can never switch algorithms by accident.

Timing. A server sees a manifest change up to ``key_reload_interval`` later, and the
manifest keeps whole seconds: together that is the *propagation* delay (rounded up, plus
one second). A next key may sign only once it has been published for ``jwks_max_age``
plus propagation, so a verifier whose JWKS cache is fresh always knows the signing key
(HS256 keys are never published, but every server must know one before another signs
with it: they wait the propagation delay only). A demoted key stays accepted for the
longest token lifetime plus leeway plus propagation, so every token it signed, refresh
tokens included, expires before it goes. Rotating sooner is refused unless forced.
Switching algorithms is staged like any rotation: ``rotate(alg="ES256")`` replaces the
next key (which never signed) with one of the new algorithm, published and not signing;
the first rotation after its lead time makes it active and records the new algorithm,
and the old algorithm's keys stay accepted as previous keys until their tokens expire.
``force`` skips the lead time, for emergencies. When nothing signs at all (a new key set,
or every active key removed by hand), the first key takes over at once.

Writes are serialized by a file lock and crash-safe: key files are written and fsynced
first, then the manifest is replaced by an atomic rename, then files of retired keys are
deleted. A crash at any point leaves the previous or the next valid manifest; the
orphaned files it may leave are removed by the next write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from issuer.audit import audit_event
from issuer.errors import KeyStoreError
from issuer.keystore.manifest import (
    MANIFEST_NAME,
    Clock,
    KeyRecord,
    KeyState,
    Manifest,
    load_manifest,
    manifest_bytes,
    read_manifest,
)
from issuer.keystore.material import (
    ASYMMETRIC_ALGS,
    KNOWN_ALGS,
    generate_key,
    key_id,
    serialize_key,
)

LOCK_NAME = ".lock"
# Names that only KeyManager writes: orphans with these names are safe to delete.
KEY_FILE_RE = re.compile(r"(?:hs256|rs256|es256|eddsa)-[0-9a-f]{16}\.(?:key|pem)")
TMP_FILE_RE = re.compile(r"\.[^/]+\.[0-9a-f]{8}\.tmp")


class UnknownKeyError(KeyStoreError):
    """No key in the manifest has this kid."""

    code = "unknown_key"


class RotationTooSoonError(KeyStoreError):
    """The next key has not been published long enough to sign yet."""

    code = "rotation_too_soon"


@dataclass(frozen=True)
class RotationResult:
    """What one ``rotate`` or ``revoke`` did, for the CLI to report."""

    created: list[str]
    activated: str | None
    retired: list[str]
    records: list[KeyRecord]
    signing_alg: str = ""
    demoted: list[str] = field(default_factory=list)  # stopped signing, still verify

    @property
    def staged(self) -> KeyRecord | None:
        """A published next key of another algorithm than the one signing: a switch."""
        return next(
            (r for r in self.records if r.state is KeyState.NEXT and r.alg != self.signing_alg),
            None,
        )

    def audit(self, *, revoked: str | None = None) -> None:
        """The audit events of this change (``revoked``: the kid an operator revoked)."""
        algs = {r.kid: r.alg for r in self.records}
        for kid in self.created:
            audit_event("key.created", kid=kid, alg=algs.get(kid))
        for kid in self.demoted:
            audit_event("key.retired", kid=kid, alg=algs.get(kid))
        if self.activated:
            audit_event("key.activated", kid=self.activated, alg=algs.get(self.activated))
        for kid in self.retired:
            audit_event("key.revoked" if kid == revoked else "key.removed", kid=kid)


class KeyManager:
    """The write side of ``keys/``: create, rotate, revoke, all under one file lock.

    ``signing_alg`` is the algorithm of a new key set only; an existing one keeps its own.
    """

    def __init__(
        self,
        keys_dir: Path,
        signing_alg: str,
        *,
        jwks_max_age: int,
        retire_after: int,
        rsa_key_size: int = 3072,
        reload_interval: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        if signing_alg not in KNOWN_ALGS:
            raise KeyStoreError(f"unsupported signing algorithm {signing_alg!r}")
        self.keys_dir = keys_dir
        self.signing_alg = signing_alg
        self.jwks_max_age = jwks_max_age
        self.retire_after = retire_after
        self.rsa_key_size = rsa_key_size
        # Whole seconds until every server has seen a manifest change: the reload
        # interval rounded up, plus one for the manifest's one-second timestamps.
        self.propagation = math.ceil(reload_interval) + 1
        self._clock = clock

    def lead_time(self, alg: str) -> int:
        """Seconds a next key must have been known before it may sign."""
        published = self.jwks_max_age if alg in ASYMMETRIC_ALGS else 0
        return published + self.propagation

    # -- reading -------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        return read_manifest(self.keys_dir)

    def key_set_alg(self) -> str:
        """The algorithm the key set signs with (the configured one for a new key set)."""
        return load_manifest(self.keys_dir).alg_or(self.signing_alg)

    def has_signing_key(self) -> bool:
        manifest = load_manifest(self.keys_dir)
        return _signs(manifest.records, manifest.alg_or(self.signing_alg))

    # -- writing -------------------------------------------------------------

    def ensure(self) -> RotationResult | None:
        """Create the first active (and next) key when nothing signs; None if nothing to do."""
        with self._locked():
            manifest = load_manifest(self.keys_dir)
            if _signs(manifest.records, manifest.alg_or(self.signing_alg)):
                return None
            result = self._rotate(manifest, force=True, alg=None)
        result.audit()
        return result

    def rotate(self, *, force: bool = False, alg: str | None = None) -> RotationResult:
        """Advance every key one state, or with ``alg``, stage a switch to that algorithm;
        see the module docstring for the timeline."""
        if alg is not None and alg not in KNOWN_ALGS:
            raise KeyStoreError(f"unsupported signing algorithm {alg!r}")
        with self._locked():
            result = self._rotate(load_manifest(self.keys_dir), force=force, alg=alg)
        result.audit()
        return result

    def revoke(self, kid: str) -> RotationResult:
        """Remove ``kid`` at once; if it was signing, the next key (or a new one) takes over."""
        with self._locked():
            manifest = load_manifest(self.keys_dir)
            records = manifest.records
            signing_alg = manifest.alg_or(self.signing_alg)
            target = next((r for r in records if r.kid == kid), None)
            if target is None:
                raise UnknownKeyError(f"no key with kid {kid!r}")
            now = int(self._clock())
            kept = [r for r in records if r.kid != kid]
            created: list[str] = []
            activated: str | None = None
            new_files: dict[str, bytes] = {}
            if target.state is KeyState.ACTIVE:
                # A leak is an emergency: the successor signs at once, lead time or not.
                successor = next(
                    (r for r in kept if r.state is KeyState.NEXT and r.alg == target.alg), None
                )
                if successor is None:
                    successor, data = self._new_record(target.alg, KeyState.NEXT, now)
                    new_files[successor.file] = data
                    created.append(successor.kid)
                    kept.append(successor)
                activated = successor.kid
                kept = [
                    replace(r, state=KeyState.ACTIVE, activated_at=now)
                    if r.kid == successor.kid
                    else r
                    for r in kept
                ]
            # Keep a published successor in line, so the next rotation has its lead
            # (unless a switch to another algorithm is staged: its key is the successor).
            staged = any(r.state is KeyState.NEXT and r.alg != signing_alg for r in kept)
            if target.state is not KeyState.PREVIOUS and target.alg == signing_alg and not staged:
                created += self._add_next_key(kept, new_files, now, signing_alg)
            self._commit(kept, new_files, [target.file], signing_alg)
        result = RotationResult(created, activated, [kid], kept, signing_alg)
        result.audit(revoked=kid)
        return result

    def _rotate(self, manifest: Manifest, *, force: bool, alg: str | None) -> RotationResult:
        now = int(self._clock())
        records = manifest.records
        current = manifest.alg_or(self.signing_alg)
        pending = next((r for r in records if r.state is KeyState.NEXT and r.alg != current), None)
        # The algorithm the next key belongs to: the one asked for, else a staged switch's.
        target = alg or (pending.alg if pending is not None else current)
        new_files: dict[str, bytes] = {}
        # Expired previous keys go; so does a next key of another algorithm than the
        # target (a switch staged or called off), which never signed anything.
        gone = [
            r
            for r in records
            if (r.retire_at is not None and r.retire_at <= now)
            or (r.state is KeyState.NEXT and r.alg != target)
        ]
        kept = [r for r in records if r not in gone]
        active = [r for r in kept if r.state is KeyState.ACTIVE]
        upcoming = next((r for r in kept if r.state is KeyState.NEXT and r.alg == target), None)
        created = self._add_next_key(kept, new_files, now, target) if upcoming is None else []
        activated: str | None = None
        demoted: set[str] = set()
        signing_alg = current

        if not _signs(kept, current):
            # Nothing signs (a new key set, or its active key removed by hand): the next
            # key takes over at once, with another one behind it.
            force = True
        if upcoming is None and force:
            # An emergency (or nothing signs): even a key created just now takes over.
            upcoming = next(r for r in kept if r.state is KeyState.NEXT and r.alg == target)

        if upcoming is not None:
            published_for = now - (upcoming.published_at or upcoming.created_at)
            lead = self.lead_time(target)
            if not force and published_for < lead:
                raise RotationTooSoonError(
                    f"next key {upcoming.kid} has been known for {published_for}s; it may "
                    f"sign after {lead}s (jwks_max_age={self.jwks_max_age}s, the JWKS cache "
                    "lifetime, plus the key reload delay). Run again later, or pass --force"
                )
            demoted = {r.kid for r in active}
            retire_at = now + self.retire_after + self.propagation
            kept = [
                replace(r, state=KeyState.PREVIOUS, retire_at=retire_at)
                if r.kid in demoted
                else replace(r, state=KeyState.ACTIVE, activated_at=now)
                if r.kid == upcoming.kid
                else r
                for r in kept
            ]
            activated = upcoming.kid
            signing_alg = target
            created += self._add_next_key(kept, new_files, now, target)

        self._commit(kept, new_files, [r.file for r in gone], signing_alg)
        return RotationResult(
            created, activated, [r.kid for r in gone], kept, signing_alg, sorted(demoted)
        )

    def _add_next_key(
        self, records: list[KeyRecord], new_files: dict[str, bytes], now: int, alg: str
    ) -> list[str]:
        """Append a next key for ``alg`` unless one is there; the kids created."""
        if any(r.state is KeyState.NEXT and r.alg == alg for r in records):
            return []
        record, data = self._new_record(alg, KeyState.NEXT, now)
        new_files[record.file] = data
        records.append(record)
        return [record.kid]

    def _new_record(self, alg: str, state: KeyState, now: int) -> tuple[KeyRecord, bytes]:
        key = generate_key(alg, self.rsa_key_size)
        kid = key_id(key)
        suffix = ".key" if alg == "HS256" else ".pem"
        record = KeyRecord(
            kid=kid,
            alg=alg,
            state=state,
            file=f"{alg.lower()}-{hashlib.sha256(kid.encode()).hexdigest()[:16]}{suffix}",
            created_at=now,
            published_at=now if alg in ASYMMETRIC_ALGS else None,
        )
        return record, serialize_key(key)

    def _commit(
        self,
        records: list[KeyRecord],
        new_files: dict[str, bytes],
        stale_files: list[str],
        signing_alg: str,
    ) -> None:
        for name, data in new_files.items():
            atomic_write(self.keys_dir / name, data)
        atomic_write(self.keys_dir / MANIFEST_NAME, manifest_bytes(records, signing_alg))
        in_use = {r.file for r in records}
        # Besides this change's stale files: whatever an earlier crash left behind.
        # Only names this class writes; we hold the lock, so no write is in flight.
        orphans = [
            p.name
            for p in self.keys_dir.iterdir()
            if KEY_FILE_RE.fullmatch(p.name) or TMP_FILE_RE.fullmatch(p.name)
        ]
        for name in dict.fromkeys([*stale_files, *orphans]):
            if name and name not in in_use:
                with contextlib.suppress(FileNotFoundError):
                    (self.keys_dir / name).unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_keys_dir(self.keys_dir)
        fd = os.open(self.keys_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _signs(records: list[KeyRecord], alg: str) -> bool:
    """Whether an active key of ``alg`` is there to sign."""
    return any(r.state is KeyState.ACTIVE and r.alg == alg for r in records)


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
