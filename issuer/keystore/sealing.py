"""Sealing key material for the database key store: AES-256-GCM under a key-encryption
key (KEK) that lives only in the environment (``ISSUER_KEY_ENCRYPTION_KEY`` or ``_FILE``).

* The KEK is 32 random bytes, given as base64 (standard or URL-safe) or hex; a
  passphrase is refused rather than stretched: a KDF would only slow an attacker down
  by a constant factor, 32 random bytes leave nothing to guess (see
  :func:`issuer.sensitive.parse_kek`, which validates it when settings load).
* Each sealed value binds its row: the associated data is the key's ``kid`` and ``alg``,
  so a ciphertext copied onto another row does not open.
* Each row records a KEK id (a domain-separated hash prefix of the KEK, which reveals
  nothing of it): a wrong KEK is named in one line before any decryption is tried, and
  a :class:`Sealer` may hold the previous KEK too while a KEK rotation rolls out.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from issuer.errors import KeyStoreError

NONCE_BYTES = 12
KEK_BYTES = 32
_KEK_ID_LABEL = b"issuer key-encryption key id\x00"
_AAD_LABEL = b"issuer signing key\x00"


def kek_id(kek: bytes) -> str:
    """A public name for a KEK: 16 hex digits of a domain-separated SHA-256."""
    return hashlib.sha256(_KEK_ID_LABEL + kek).hexdigest()[:16]


def associated_data(kid: str, alg: str) -> bytes:
    """What a sealed key is bound to: its kid and algorithm (a swapped row fails to open)."""
    return _AAD_LABEL + kid.encode("utf-8") + b"\x00" + alg.encode("ascii")


class Sealer:
    """Seals under the current KEK; opens what the current or an older KEK sealed."""

    def __init__(self, kek: bytes, older: Iterable[bytes] = ()) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        self._keks: dict[str, AESGCM] = {}
        for key in (kek, *older):
            if len(key) != KEK_BYTES:
                raise KeyStoreError(f"a key-encryption key must be {KEK_BYTES} bytes")
            self._keks.setdefault(kek_id(key), AESGCM(key))
        self.kek_id = kek_id(kek)

    def knows(self, sealed_by: str) -> bool:
        return sealed_by in self._keks

    def seal(self, plaintext: bytes, *, kid: str, alg: str) -> bytes:
        """``nonce || ciphertext+tag`` under the current KEK, bound to ``kid`` and ``alg``."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._keks[self.kek_id].encrypt(nonce, plaintext, associated_data(kid, alg))

    def open(self, sealed: bytes, *, kid: str, alg: str, sealed_by: str) -> bytes:
        """The plaintext; KeyStoreError (one line, nothing secret) if it cannot be opened."""
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415

        aead = self._keks.get(sealed_by)
        if aead is None:
            raise KeyStoreError(wrong_kek_message(sealed_by, self.kek_id))
        try:
            return aead.decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data(kid, alg)
            )
        except (InvalidTag, ValueError):
            raise KeyStoreError(
                f"key {kid} does not decrypt under key-encryption key {sealed_by}: the row "
                "was altered or copied from another key"
            ) from None


def wrong_kek_message(sealed_by: str, configured: str) -> str:
    return (
        f"the signing keys in the database are sealed with key-encryption key {sealed_by}, "
        f"but ISSUER_KEY_ENCRYPTION_KEY is {configured}: set the right key, or after a KEK "
        "change run `issuer keys rewrap` with the old one in ISSUER_KEY_ENCRYPTION_KEY_OLD"
    )
