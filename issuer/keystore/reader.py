"""The read side, on every request: where the :class:`~issuer.keystore.keyset.KeySet`
in force comes from.

* :class:`StaticKeyStore`: one HS256 secret given by the operator (``ISSUER_SECRET_KEY``
  or ``ISSUER_SECRET_KEY_FILE``). It never rotates.
* :class:`ReloadingKeyStore`: the keys a :class:`~issuer.keystore.storage.KeySource`
  lists (``keys/``: :class:`DirectoryKeyStore`; the database: ``issuer.store.keys``),
  re-read within ``key_reload_interval`` seconds of a rotation, without a restart.

Readers take no lock: a key set that does not load (a manifest half-edited by hand, a
missing file, a database that is down) is logged and the last good key set stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from joserfc.jwk import Key, OctKey

from issuer.errors import KeyStoreError
from issuer.keystore.keyset import KeySet, LoadedKey, build_key_set
from issuer.keystore.manifest import Clock, KeyRecord, KeyState
from issuer.keystore.storage import DirectoryStorage, KeySource
from issuer.sensitive import secret_problem

log = logging.getLogger("issuer.keystore")

# A rotation may replace the manifest between reading it and reading the key files it
# names: read again, this many times in all, before keeping the last good set.
LOAD_ATTEMPTS = 3


class StaticKeyStore:
    """One HS256 secret from the environment: never rotates, never published."""

    def __init__(self, secret: str) -> None:
        problem = secret_problem(secret)
        if problem:
            raise KeyStoreError(f"ISSUER_SECRET_KEY {problem}")
        raw = secret.encode("utf-8")
        # A kid must not reveal the secret: derive it with a domain-separated hash.
        kid = "hs-" + hashlib.sha256(b"issuer kid\x00" + raw).hexdigest()[:16]
        record = KeyRecord(kid=kid, alg="HS256", state=KeyState.ACTIVE, file="", created_at=0)
        self._key_set = build_key_set([LoadedKey(record, OctKey.import_key(raw))], "HS256")

    def current(self) -> KeySet:
        return self._key_set


class ReloadingKeyStore:
    """Keys from a :class:`KeySource`, re-read when its change marker changes.

    The marker (the manifest's bytes; the database's generation counter) is re-read at
    most every ``reload_interval`` seconds and compared by content. Parsed keys are
    cached by kid, so a reload after rotation parses only new keys (an RSA PEM costs
    ~26 ms to load; never do that per request).
    """

    def __init__(
        self,
        source: KeySource,
        signing_alg: str,
        reload_interval: float = 1.0,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.source = source
        # Only for a manifest that names no algorithm and has no active key to say it.
        self.signing_alg = signing_alg
        self.reload_interval = reload_interval
        # Wall time only for what the manifest stores (retire_at); the reload interval
        # runs on a monotonic clock, so a clock stepped back never postpones a reload
        # (a revoked key would otherwise stay in force until the wall clock caught up).
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], Key] = {}
        self._manifest: bytes | None = None
        self._rejected: bytes | None = None
        self._checked_at = float("-inf")
        self._key_set: KeySet | None = None
        # Told "reloaded" or "failed" at each reload of a changed manifest (metrics).
        self.on_reload: Callable[[str], None] | None = None

    def current(self) -> KeySet:
        now, tick = self._clock(), self._monotonic()
        key_set = self._key_set
        if key_set is not None and self._fresh(key_set, now, tick):
            return key_set
        with self._lock:
            return self._refresh(now, tick)

    def _fresh(self, key_set: KeySet, now: float, tick: float) -> bool:
        return tick - self._checked_at < self.reload_interval and now < key_set.valid_until

    def _refresh(self, now: float, tick: float) -> KeySet:
        last_good = self._key_set
        if last_good is not None and self._fresh(last_good, now, tick):
            return last_good  # another thread refreshed while this one waited
        self._checked_at = tick
        attempt = 0
        while True:
            attempt += 1
            raw: bytes | None = None
            try:
                raw = self.source.marker()
                if last_good is not None:
                    if raw == self._manifest and now < last_good.valid_until:
                        return last_good
                    if raw is None:
                        raise KeyStoreError(f"the key set in {self.source.where} has disappeared")
                key_set = self._build(raw, now)
            except KeyStoreError as exc:
                # A rotation may have replaced the manifest and deleted a file this read
                # still named: read again. Otherwise keep the last good set in force.
                if attempt < LOAD_ATTEMPTS and self._manifest_differs(raw):
                    continue
                if last_good is None:
                    raise
                self._reject(exc, raw)
                self._reloaded("failed")
                return last_good
            if last_good is not None:
                self._reloaded("reloaded")
            self._manifest = raw
            self._rejected = None
            self._key_set = key_set
            return key_set

    def _reloaded(self, outcome: str) -> None:
        if self.on_reload is not None:
            self.on_reload(outcome)

    def _manifest_differs(self, raw: bytes | None) -> bool:
        try:
            return self.source.marker() != raw
        except KeyStoreError:
            return False

    def _reject(self, exc: KeyStoreError, raw: bytes | None) -> None:
        """Say once per bad manifest that it was refused, not at every reload."""
        marker = raw or b""
        if marker != self._rejected:
            log.warning("key set not reloaded, keeping the last good one: %s", exc)
        self._rejected = marker

    def _build(self, raw: bytes | None, now: float) -> KeySet:
        if raw is None:
            records, signing_alg = [], self.signing_alg
        else:
            manifest = self.source.manifest(raw)
            records, signing_alg = manifest.records, manifest.alg_or(self.signing_alg)
        loaded: list[LoadedKey] = []
        cache: dict[tuple[str, str, str], Key] = {}
        for record in records:
            if record.retire_at is not None and record.retire_at <= now:
                continue
            cache_key = (record.kid, record.alg, record.file)
            key = self._cache.get(cache_key)
            if key is None:
                key = self.source.key(record)
            cache[cache_key] = key
            loaded.append(LoadedKey(record, key))
        self._cache = cache
        return build_key_set(loaded, signing_alg)


class DirectoryKeyStore(ReloadingKeyStore):
    """Keys from ``keys/manifest.json``, re-read when the manifest changes on disk."""

    def __init__(
        self,
        keys_dir: Path,
        signing_alg: str,
        reload_interval: float = 1.0,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        super().__init__(DirectoryStorage(keys_dir), signing_alg, reload_interval, clock, monotonic)
        self.keys_dir = keys_dir
