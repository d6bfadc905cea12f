"""Signing keys: where they live, which one signs, which ones verify, and the public JWKS.

Two sources:

* :class:`StaticKeyStore`: one HS256 secret given by the operator (``ISSUER_SECRET_KEY``
  or ``ISSUER_SECRET_KEY_FILE``). It never rotates.
* :class:`DirectoryKeyStore`: keys under ``keys/`` with a ``manifest.json`` that records
  each key's state. :class:`KeyManager` writes it (``issuer keys rotate|revoke``); running
  servers re-read it within ``key_reload_interval`` seconds, without a restart.

Life of a key (each ``rotate`` moves every key one step)::

    next ──────────────► active ──────────────► previous ───────────► retired
    published,           the one key            published and         deleted
    not yet signing      that signs             accepted until every
                                                token it signed expired

Each key is bound to one algorithm (RFC 8725 §3.1): its record names it, the file holds
a key of that type, and verification uses that algorithm only. The key that signs is the
active key of the configured ``signing_alg``.

Timing. A server sees a manifest change up to ``key_reload_interval`` later, and the
manifest keeps whole seconds: together that is the *propagation* delay (rounded up, plus
one second). A next key may sign only once it has been published for ``jwks_max_age``
plus propagation, so a verifier whose JWKS cache is fresh always knows the signing key
(HS256 keys are never published, but every server must know one before another signs
with it: they wait the propagation delay only). A demoted key stays accepted for the
longest token lifetime plus leeway plus propagation, so every token it signed, refresh
tokens included, expires before it goes. Rotating sooner is refused unless forced.
Switching ``signing_alg`` activates a key of the new algorithm at once (nothing signed
with it before, and servers restart to read the new setting); keys of the old one stay
accepted as previous keys, and an old-algorithm next key, which never signed, is dropped.

Writes are serialized by a file lock and crash-safe: key files are written and fsynced
first, then the manifest is replaced by an atomic rename, then files of retired keys are
deleted. A crash at any point leaves the previous or the next valid manifest; the
orphaned files it may leave are removed by the next write. Readers take no lock: a
manifest that does not load (half-edited by hand, a missing file) is logged and the last
good key set stays in force.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from issuer.errors import KeyStoreError
from issuer.settings import secret_problem

log = logging.getLogger("issuer.keystore")

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
MANIFEST_VERSION = 1
HS_SECRET_BYTES = 64
MIN_HS_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
ASYMMETRIC_ALGS = ("RS256", "ES256", "EdDSA")
KNOWN_ALGS = ("HS256", *ASYMMETRIC_ALGS)
CURVES = {"ES256": "P-256", "EdDSA": "Ed25519"}
# The members a public JWK may carry for each key type (RFC 7518 §6, RFC 8037 §2), plus
# the ones we add. Anything else (d p q dp dq qi k oth…) is never published.
PUBLIC_MEMBERS = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}
# Names that only KeyManager writes: orphans with these names are safe to delete.
KEY_FILE_RE = re.compile(r"(?:hs256|rs256|es256|eddsa)-[0-9a-f]{16}\.(?:key|pem)")
TMP_FILE_RE = re.compile(r"\.[^/]+\.[0-9a-f]{8}\.tmp")
LOAD_ATTEMPTS = 3

Clock = Callable[[], float]


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    PREVIOUS = "previous"


class UnknownKeyError(KeyStoreError):
    """No key in the manifest has this kid."""

    code = "unknown_key"


class RotationTooSoonError(KeyStoreError):
    """The next key has not been published long enough to sign yet."""

    code = "rotation_too_soon"


@dataclass(frozen=True)
class KeyRecord:
    """One manifest entry: a key's identity, algorithm, state and timestamps."""

    kid: str
    alg: str
    state: KeyState
    file: str
    created_at: int
    published_at: int | None = None
    activated_at: int | None = None
    retire_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state.value,
            "file": self.file,
            "created_at": self.created_at,
            "published_at": self.published_at,
            "activated_at": self.activated_at,
            "retire_at": self.retire_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyRecord:
        try:
            record = cls(
                kid=_text(data["kid"]),
                alg=_text(data["alg"]),
                state=KeyState(data["state"]),
                file=_text(data["file"]),
                created_at=_int(data["created_at"]),
                published_at=_opt_int(data.get("published_at")),
                activated_at=_opt_int(data.get("activated_at")),
                retire_at=_opt_int(data.get("retire_at")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"manifest entry is malformed: {exc!r}") from None
        if record.alg not in KNOWN_ALGS:
            raise KeyStoreError(f"manifest entry {record.kid}: unsupported alg {record.alg!r}")
        if "/" in record.file or "\\" in record.file or record.file.startswith("."):
            raise KeyStoreError(f"manifest entry {record.kid}: key file must be a plain name")
        return record


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


@dataclass(frozen=True)
class LoadedKey:
    """A key ready for use: its record plus the parsed joserfc key."""

    record: KeyRecord
    key: Key

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg


@dataclass(frozen=True)
class KeySet:
    """An immutable snapshot: the signing key, the keys that verify, and the public JWKS."""

    signing: LoadedKey | None
    verifying: Mapping[str, LoadedKey]
    jwks_bytes: bytes
    etag: str
    valid_until: float = float("inf")
    algorithms: frozenset[str] = field(default_factory=frozenset)

    def verification_key(self, kid: str, now: float) -> LoadedKey | None:
        """The key that may verify a token with this ``kid`` at ``now``, if any."""
        loaded = self.verifying.get(kid)
        if loaded is None:
            return None
        retire_at = loaded.record.retire_at
        if retire_at is not None and now >= retire_at:
            return None
        return loaded


class KeyStore(Protocol):
    """Where tokens get their keys. ``current()`` is cheap and safe from any thread."""

    def current(self) -> KeySet:
        """The key set in force now; raises KeyStoreError when none can be loaded."""
        ...


def build_key_set(keys: list[LoadedKey], signing_alg: str) -> KeySet:
    """Assemble a :class:`KeySet`, deriving the JWKS from the keys (never hand-written)."""
    signing = next(
        (k for k in keys if k.record.state is KeyState.ACTIVE and k.alg == signing_alg), None
    )
    public = [public_jwk(k) for k in keys if k.alg in ASYMMETRIC_ALGS]
    public.sort(key=lambda jwk: jwk["kid"])
    jwks_bytes = json.dumps({"keys": public}, separators=(",", ":"), sort_keys=True).encode()
    retire_times = [k.record.retire_at for k in keys if k.record.retire_at is not None]
    return KeySet(
        signing=signing,
        verifying={k.kid: k for k in keys},
        jwks_bytes=jwks_bytes,
        etag='"' + hashlib.sha256(jwks_bytes).hexdigest()[:32] + '"',
        valid_until=min(retire_times, default=float("inf")),
        algorithms=frozenset(k.alg for k in keys),
    )


def public_jwk(loaded: LoadedKey) -> dict[str, Any]:
    """The public JWK of an asymmetric key: public members plus kid, use and alg only."""
    if isinstance(loaded.key, OctKey) or loaded.alg not in ASYMMETRIC_ALGS:
        raise KeyStoreError("a symmetric key is never published")
    # An allow-list, not joserfc's idea of "public": nothing else can ever leak.
    full = loaded.key.as_dict(private=False)
    jwk: dict[str, Any] = {name: full[name] for name in PUBLIC_MEMBERS[str(full["kty"])]}
    jwk.update({"kid": loaded.kid, "use": "sig", "alg": loaded.alg})
    return jwk


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


def generate_key(alg: str, rsa_key_size: int = 3072) -> Key:
    """A fresh private key for ``alg``: RSA-3072 (default), P-256, Ed25519 or a 512-bit secret."""
    if alg == "RS256":
        if rsa_key_size < MIN_RSA_BITS:
            raise KeyStoreError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        return RSAKey.generate_key(rsa_key_size, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True)
    if alg == "HS256":
        return OctKey.import_key(secrets.token_bytes(HS_SECRET_BYTES))
    raise KeyStoreError(f"unsupported signing algorithm {alg!r}")


def key_id(key: Key) -> str:
    """RFC 7638 thumbprint for public keys; a random id for secrets (a hash would leak)."""
    if isinstance(key, OctKey):
        return "hs-" + secrets.token_hex(8)
    return key.thumbprint()


def _serialize(key: Key) -> bytes:
    if isinstance(key, OctKey):
        return str(key.as_dict(private=True)["k"]).encode("ascii") + b"\n"
    return key.as_pem(private=True)


def _deserialize(alg: str, data: bytes) -> Key:
    try:
        if alg == "HS256":
            return OctKey.import_key({"kty": "oct", "k": data.decode("ascii").strip()})
        if alg == "RS256":
            return RSAKey.import_key(data)
        if alg == "ES256":
            return ECKey.import_key(data)
        if alg == "EdDSA":
            return OKPKey.import_key(data)
    except (JoseError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot parse a {alg} key: {exc.__class__.__name__}") from None
    raise KeyStoreError(f"unsupported algorithm {alg!r} in the manifest")


def _check_key(record: KeyRecord, key: Key) -> None:
    """Refuse a key file that does not fit its record: wrong type, curve, size, or kid."""
    where = f"key file {record.file} ({record.kid})"
    if isinstance(key, OctKey):
        if len(key.raw_value) < MIN_HS_SECRET_BYTES:
            raise KeyStoreError(f"{where}: an HS256 secret needs {MIN_HS_SECRET_BYTES} bytes")
        return
    if not key.is_private:
        raise KeyStoreError(f"{where}: holds a public key; a private key is needed to sign")
    if isinstance(key, RSAKey) and key.raw_value.key_size < MIN_RSA_BITS:
        raise KeyStoreError(f"{where}: RSA keys need at least {MIN_RSA_BITS} bits")
    if isinstance(key, ECKey | OKPKey) and key.curve_name != CURVES[record.alg]:
        raise KeyStoreError(f"{where}: {record.alg} needs curve {CURVES[record.alg]}")
    if key.thumbprint() != record.kid:
        raise KeyStoreError(f"{where}: the key's RFC 7638 thumbprint is not its kid")


def read_manifest(keys_dir: Path) -> list[KeyRecord]:
    """The manifest's records; an empty list when there is no manifest yet."""
    path = keys_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None
    return parse_manifest(raw, path)


def parse_manifest(raw: bytes, path: Path) -> list[KeyRecord]:
    """Records from manifest bytes, checked for the invariants every writer keeps."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise KeyStoreError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise KeyStoreError(f"{path}: unknown manifest version")
    entries = data.get("keys")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KeyStoreError(f"{path}: 'keys' must be a list of objects")
    records = [KeyRecord.from_json(e) for e in entries]
    for what, values in (("kid", [r.kid for r in records]), ("file", [r.file for r in records])):
        repeated = [v for v, n in Counter(values).items() if n > 1]
        if repeated:
            raise KeyStoreError(f"{path}: {what} {repeated[0]!r} appears twice")
    for state in (KeyState.ACTIVE, KeyState.NEXT):
        per_alg = Counter(r.alg for r in records if r.state is state)
        crowded = [alg for alg, n in per_alg.items() if n > 1]
        if crowded:
            raise KeyStoreError(f"{path}: more than one {state.value} {crowded[0]} key")
    return records


def _load_key(keys_dir: Path, record: KeyRecord) -> LoadedKey:
    path = keys_dir / record.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
    key = _deserialize(record.alg, data)
    _check_key(record, key)
    return LoadedKey(record, key)


class DirectoryKeyStore:
    """Keys from ``keys/manifest.json``, re-read when the manifest changes on disk.

    The manifest (a few hundred bytes) is re-read at most every ``reload_interval``
    seconds and compared by content: an mtime or inode can repeat within a clock tick,
    content cannot. Parsed keys are cached by kid, so a reload after rotation parses only
    new key files (an RSA PEM costs ~26 ms to load; never do that per request).
    """

    def __init__(
        self,
        keys_dir: Path,
        signing_alg: str,
        reload_interval: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        self.keys_dir = keys_dir
        self.signing_alg = signing_alg
        self.reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], Key] = {}
        self._manifest: bytes | None = None
        self._rejected: bytes | None = None
        self._checked_at = float("-inf")
        self._key_set: KeySet | None = None

    def current(self) -> KeySet:
        now = self._clock()
        key_set = self._key_set
        if key_set is not None and self._fresh(key_set, now):
            return key_set
        with self._lock:
            return self._refresh(now)

    def _fresh(self, key_set: KeySet, now: float) -> bool:
        return now - self._checked_at < self.reload_interval and now < key_set.valid_until

    def _refresh(self, now: float) -> KeySet:
        last_good = self._key_set
        if last_good is not None and self._fresh(last_good, now):
            return last_good  # another thread refreshed while this one waited
        self._checked_at = now
        attempt = 0
        while True:
            attempt += 1
            raw: bytes | None = None
            try:
                raw = self._read_manifest_bytes()
                if last_good is not None:
                    if raw == self._manifest and now < last_good.valid_until:
                        return last_good
                    if raw is None:
                        raise KeyStoreError(f"{self.keys_dir / MANIFEST_NAME} has disappeared")
                key_set = self._build(raw, now)
            except KeyStoreError as exc:
                # A rotation may have replaced the manifest and deleted a file this read
                # still named: read again. Otherwise keep the last good set in force.
                if attempt < LOAD_ATTEMPTS and self._manifest_differs(raw):
                    continue
                if last_good is None:
                    raise
                self._reject(exc, raw)
                return last_good
            self._manifest = raw
            self._rejected = None
            self._key_set = key_set
            return key_set

    def _read_manifest_bytes(self) -> bytes | None:
        path = self.keys_dir / MANIFEST_NAME
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None

    def _manifest_differs(self, raw: bytes | None) -> bool:
        try:
            return self._read_manifest_bytes() != raw
        except KeyStoreError:
            return False

    def _reject(self, exc: KeyStoreError, raw: bytes | None) -> None:
        """Say once per bad manifest that it was refused, not at every reload."""
        marker = raw or b""
        if marker != self._rejected:
            log.warning("key set not reloaded, keeping the last good one: %s", exc)
        self._rejected = marker

    def _build(self, raw: bytes | None, now: float) -> KeySet:
        records = [] if raw is None else parse_manifest(raw, self.keys_dir / MANIFEST_NAME)
        loaded: list[LoadedKey] = []
        cache: dict[tuple[str, str, str], Key] = {}
        for record in records:
            if record.retire_at is not None and record.retire_at <= now:
                continue
            cache_key = (record.kid, record.alg, record.file)
            key = self._cache.get(cache_key)
            if key is None:
                key = _load_key(self.keys_dir, record).key
            cache[cache_key] = key
            loaded.append(LoadedKey(record, key))
        self._cache = cache
        return build_key_set(loaded, self.signing_alg)


@dataclass(frozen=True)
class RotationResult:
    """What one ``rotate`` or ``revoke`` did, for the CLI to report."""

    created: list[str]
    activated: str | None
    retired: list[str]
    records: list[KeyRecord]


class KeyManager:
    """The write side of ``keys/``: create, rotate, revoke, all under one file lock."""

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

    def has_signing_key(self) -> bool:
        return any(r.state is KeyState.ACTIVE and r.alg == self.signing_alg for r in self.records())

    # -- writing -------------------------------------------------------------

    def ensure(self) -> RotationResult | None:
        """Create the first active (and next) key when there is none; None if nothing to do."""
        with self._locked():
            records = read_manifest(self.keys_dir)
            if any(r.state is KeyState.ACTIVE and r.alg == self.signing_alg for r in records):
                return None
            return self._rotate(records, force=True)

    def rotate(self, *, force: bool = False) -> RotationResult:
        """Advance every key one state; see the module docstring for the timeline."""
        with self._locked():
            return self._rotate(read_manifest(self.keys_dir), force=force)

    def revoke(self, kid: str) -> RotationResult:
        """Remove ``kid`` at once; if it was signing, the next key (or a new one) takes over."""
        with self._locked():
            records = read_manifest(self.keys_dir)
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
            if target.state is not KeyState.PREVIOUS and target.alg == self.signing_alg:
                # Keep a published successor in line, so the next rotation has its lead.
                created += self._add_next_key(kept, new_files, now)
            self._commit(kept, new_files, [target.file])
            return RotationResult(created, activated, [kid], kept)

    def _rotate(self, records: list[KeyRecord], *, force: bool) -> RotationResult:
        now = int(self._clock())
        alg = self.signing_alg
        new_files: dict[str, bytes] = {}
        # Expired previous keys go; so does a next key of another algorithm (after a
        # switch of signing_alg), which never signed anything.
        gone = [
            r
            for r in records
            if (r.retire_at is not None and r.retire_at <= now)
            or (r.state is KeyState.NEXT and r.alg != alg)
        ]
        kept = [r for r in records if r not in gone]
        active = [r for r in kept if r.state is KeyState.ACTIVE]
        upcoming = next((r for r in kept if r.state is KeyState.NEXT and r.alg == alg), None)
        created = self._add_next_key(kept, new_files, now) if upcoming is None else []
        activated: str | None = None

        if not any(r.alg == alg for r in active):
            # Nothing signs with this algorithm yet (first run, or a switch of
            # signing_alg): its first key takes over at once, with a new one behind it.
            upcoming = next(r for r in kept if r.state is KeyState.NEXT and r.alg == alg)
            force = True

        if upcoming is not None:
            published_for = now - (upcoming.published_at or upcoming.created_at)
            lead = self.lead_time(alg)
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
            created += self._add_next_key(kept, new_files, now)

        self._commit(kept, new_files, [r.file for r in gone])
        return RotationResult(created, activated, [r.kid for r in gone], kept)

    def _add_next_key(
        self, records: list[KeyRecord], new_files: dict[str, bytes], now: int
    ) -> list[str]:
        """Append a next key for ``signing_alg`` unless one is there; the kids created."""
        alg = self.signing_alg
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
        return record, _serialize(key)

    def _commit(
        self, records: list[KeyRecord], new_files: dict[str, bytes], stale_files: list[str]
    ) -> None:
        for name, data in new_files.items():
            _atomic_write(self.keys_dir / name, data)
        manifest = {"version": MANIFEST_VERSION, "keys": [r.to_json() for r in records]}
        _atomic_write(
            self.keys_dir / MANIFEST_NAME,
            json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n",
        )
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


def ensure_keys_dir(keys_dir: Path) -> None:
    """Create ``keys_dir`` (0700) if needed; tighten one that others can read."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = keys_dir.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            keys_dir.chmod(0o700)
        except OSError as exc:
            raise KeyStoreError(f"{keys_dir} is readable by others and cannot be fixed") from exc


def _atomic_write(path: Path, data: bytes) -> None:
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
