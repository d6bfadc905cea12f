"""The manifest: ``keys/manifest.json``, the key set's signing algorithm and one record
per key with its algorithm, state and timestamps. Only :mod:`issuer.keystore.rotation`
writes it; anyone may read it.

The key set owns its algorithm: ``signing_alg`` in the manifest, not the setting of the
same name, says which active key signs (the setting only chooses the algorithm of a new
key set). A manifest written before it was recorded gets it from its active keys.

A manifest that breaks an invariant every writer keeps (one active and one next key per
algorithm, unique kids and files, plain file names) is refused as a whole.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from issuer.errors import KeyStoreError
from issuer.keystore.material import KNOWN_ALGS

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

# Seconds since the epoch; the manifest's timestamps are whole seconds of one.
Clock = Callable[[], float]


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    PREVIOUS = "previous"


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
class Manifest:
    """The whole manifest: its records and the algorithm the key set signs with."""

    records: list[KeyRecord]
    signing_alg: str | None

    def alg_or(self, default: str) -> str:
        """The key set's algorithm; ``default`` (the setting) for a key set not created yet."""
        return self.signing_alg or default


def read_manifest(keys_dir: Path) -> list[KeyRecord]:
    """The manifest's records; an empty list when there is no manifest yet."""
    return load_manifest(keys_dir).records


def load_manifest(keys_dir: Path) -> Manifest:
    """The manifest; no records and no algorithm when there is none yet."""
    raw = read_manifest_bytes(keys_dir)
    return (
        Manifest([], None)
        if raw is None
        else parse_manifest_document(raw, keys_dir / MANIFEST_NAME)
    )


def read_manifest_bytes(keys_dir: Path) -> bytes | None:
    """The manifest file's bytes; None when there is no manifest yet."""
    path = keys_dir / MANIFEST_NAME
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None


def parse_manifest(raw: bytes, path: Path) -> list[KeyRecord]:
    """Records from manifest bytes, checked for the invariants every writer keeps."""
    return parse_manifest_document(raw, path).records


def parse_manifest_document(raw: bytes, path: Path) -> Manifest:
    """The manifest from its bytes, checked for the invariants every writer keeps."""
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
    return checked_manifest(records, data.get("signing_alg"), str(path))


def checked_manifest(records: list[KeyRecord], recorded: Any, where: str) -> Manifest:
    """The manifest of ``records``, refused as a whole if it breaks an invariant every
    writer keeps (the directory's file and the database's rows are checked alike)."""
    path = where
    for what, values in (("kid", [r.kid for r in records]), ("file", [r.file for r in records])):
        repeated = [v for v, n in Counter(values).items() if n > 1]
        if repeated:
            raise KeyStoreError(f"{path}: {what} {repeated[0]!r} appears twice")
    for state in (KeyState.ACTIVE, KeyState.NEXT):
        per_alg = Counter(r.alg for r in records if r.state is state)
        crowded = [alg for alg, n in per_alg.items() if n > 1]
        if crowded:
            raise KeyStoreError(f"{path}: more than one {state.value} {crowded[0]} key")
    if recorded is not None and recorded not in KNOWN_ALGS:
        raise KeyStoreError(f"{path}: unsupported signing_alg {recorded!r}")
    return Manifest(records, recorded if recorded is not None else _derived_alg(records))


def _derived_alg(records: list[KeyRecord]) -> str | None:
    """For a manifest that predates ``signing_alg``: the alg of the latest active key."""
    active = [r for r in records if r.state is KeyState.ACTIVE]
    if not active:
        return None
    return max(active, key=lambda r: (r.activated_at or 0, r.created_at)).alg


def manifest_bytes(records: list[KeyRecord], signing_alg: str) -> bytes:
    """The file form of the manifest, as the writer stores it."""
    manifest = {
        "version": MANIFEST_VERSION,
        "signing_alg": signing_alg,
        "keys": [r.to_json() for r in records],
    }
    return json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
