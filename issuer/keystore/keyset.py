"""What a request sees: an immutable :class:`KeySet` (the signing key, the keys that
verify, the public JWKS as precomputed bytes) and the :class:`KeyStore` protocol that
hands out the one in force.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from joserfc.jwk import Key

from issuer.errors import KeyStoreError
from issuer.keystore.manifest import KeyRecord, KeyState
from issuer.keystore.material import ASYMMETRIC_ALGS, public_members


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
    signing_alg: str = ""

    def require_signing(self) -> LoadedKey:
        """The signing key; KeyStoreError naming the fix (with the algorithm) if none."""
        if self.signing is None:
            alg = self.signing_alg
            raise KeyStoreError(
                f"no active {alg} signing key: run `issuer keys rotate` "
                f"(with nothing signing, a {alg} key signs at once)"
            )
        return self.signing

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
        signing_alg=signing_alg,
    )


def public_jwk(loaded: LoadedKey) -> dict[str, Any]:
    """The public JWK of an asymmetric key: public members plus kid, use and alg only."""
    if loaded.alg not in ASYMMETRIC_ALGS:
        raise KeyStoreError("a symmetric key is never published")
    jwk = public_members(loaded.key)
    jwk.update({"kid": loaded.kid, "use": "sig", "alg": loaded.alg})
    return jwk
