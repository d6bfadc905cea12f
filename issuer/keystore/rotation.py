"""The write side of a key set: create, rotate and revoke keys, under one lock.

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

Writes are serialized and crash-safe; how is the storage's business
(:mod:`issuer.keystore.storage`): ``keys/`` takes a file lock and renames its manifest
into place; the database (``issuer.store.keys``) takes a database lock and writes one
transaction. The timeline above is the same for both.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from issuer.audit import audit_event
from issuer.errors import KeyStoreError
from issuer.keystore.manifest import Clock, KeyRecord, KeyState, Manifest
from issuer.keystore.material import (
    ASYMMETRIC_ALGS,
    DEFAULT_RSA_BITS,
    KNOWN_ALGS,
    generate_key,
    key_id,
    serialize_key,
)
from issuer.keystore.storage import (
    KEY_FILE_RE,
    LOCK_NAME,
    TMP_FILE_RE,
    DirectoryStorage,
    KeyBackend,
    atomic_write,
    ensure_keys_dir,
)

__all__ = [
    "KEY_FILE_RE",
    "LOCK_NAME",
    "TMP_FILE_RE",
    "KeyManager",
    "RotationResult",
    "RotationTooSoonError",
    "UnknownKeyError",
    "atomic_write",
    "ensure_keys_dir",
]


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
    """The write side of a key set: create, rotate, revoke, all under the storage's lock.

    ``storage`` is ``keys/`` (a path) or any :class:`KeyBackend` (the database's).
    ``signing_alg`` is the algorithm of a new key set only; an existing one keeps its own.
    """

    def __init__(
        self,
        storage: Path | KeyBackend,
        signing_alg: str,
        *,
        jwks_max_age: int,
        retire_after: int,
        rsa_key_size: int = DEFAULT_RSA_BITS,
        reload_interval: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        if signing_alg not in KNOWN_ALGS:
            raise KeyStoreError(f"unsupported signing algorithm {signing_alg!r}")
        self.storage: KeyBackend = (
            DirectoryStorage(storage) if isinstance(storage, Path) else storage
        )
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
        return self.storage.load().records

    def key_set_alg(self) -> str:
        """The algorithm the key set signs with (the configured one for a new key set)."""
        return self.storage.load().alg_or(self.signing_alg)

    def has_signing_key(self) -> bool:
        manifest = self.storage.load()
        return _signs(manifest.records, manifest.alg_or(self.signing_alg))

    # -- writing -------------------------------------------------------------

    def ensure(self) -> RotationResult | None:
        """Create the first active (and next) key when nothing signs; None if nothing to do."""
        with self.storage.locked():
            manifest = self.storage.load()
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
        with self.storage.locked():
            result = self._rotate(self.storage.load(), force=force, alg=alg)
        result.audit()
        return result

    def revoke(self, kid: str) -> RotationResult:
        """Remove ``kid`` at once; if it was signing, the next key (or a new one) takes over."""
        with self.storage.locked():
            manifest = self.storage.load()
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
        new_files: Mapping[str, bytes],
        stale_files: list[str],
        signing_alg: str,
    ) -> None:
        self.storage.commit(records, new_files, stale_files, signing_alg)


def _signs(records: list[KeyRecord], alg: str) -> bool:
    """Whether an active key of ``alg`` is there to sign."""
    return any(r.state is KeyState.ACTIVE and r.alg == alg for r in records)
