"""Signing keys: where they live, which one signs, which ones verify, and the public JWKS.

One job per module, lowest first:

* :mod:`~issuer.keystore.material`: algorithms, key generation, the key file format,
  the RFC 7638 thumbprint (``kid``) and the members a public JWK may show.
* :mod:`~issuer.keystore.manifest`: ``keys/manifest.json``, each key's state and times.
* :mod:`~issuer.keystore.keyset`: the immutable :class:`KeySet` a request uses and the
  :class:`KeyStore` protocol that provides it.
* :mod:`~issuer.keystore.sealing`: AES-GCM sealing of key material under a
  key-encryption key, for the database key store.
* :mod:`~issuer.keystore.storage`: where a key set is kept (:class:`KeyBackend` to
  write, :class:`KeySource` to read) and :class:`DirectoryStorage`, ``keys/``.
* :mod:`~issuer.keystore.reader`: the key stores servers read on every request
  (:class:`StaticKeyStore` for an operator's HS256 secret, :class:`ReloadingKeyStore`
  over any source, :class:`DirectoryKeyStore` for ``keys/``), reloaded after a rotation
  without a restart.
* :mod:`~issuer.keystore.rotation`: :class:`KeyManager`, the only writer of key sets
  (rotate, revoke; locked, crash-safe); its docstring draws the life of a key.

Everything is re-exported here: import from ``issuer.keystore``.
"""

from issuer.keystore.keyset import KeySet, KeyStore, LoadedKey, build_key_set, public_jwk
from issuer.keystore.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    Clock,
    KeyRecord,
    KeyState,
    Manifest,
    checked_manifest,
    load_manifest,
    parse_manifest,
    read_manifest,
)
from issuer.keystore.material import (
    ASYMMETRIC_ALGS,
    CURVES,
    HS_SECRET_BYTES,
    KNOWN_ALGS,
    MIN_HS_SECRET_BYTES,
    MIN_RSA_BITS,
    PUBLIC_MEMBERS,
    generate_key,
    key_id,
)
from issuer.keystore.reader import (
    LOAD_ATTEMPTS,
    DirectoryKeyStore,
    ReloadingKeyStore,
    StaticKeyStore,
)
from issuer.keystore.rotation import (
    KeyManager,
    RotationResult,
    RotationTooSoonError,
    UnknownKeyError,
)
from issuer.keystore.sealing import Sealer, kek_id
from issuer.keystore.storage import (
    KEY_FILE_RE,
    LOCK_NAME,
    TMP_FILE_RE,
    DirectoryStorage,
    KeyBackend,
    KeySource,
    ensure_keys_dir,
)

__all__ = [
    "ASYMMETRIC_ALGS",
    "CURVES",
    "HS_SECRET_BYTES",
    "KEY_FILE_RE",
    "KNOWN_ALGS",
    "LOAD_ATTEMPTS",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MIN_HS_SECRET_BYTES",
    "MIN_RSA_BITS",
    "PUBLIC_MEMBERS",
    "TMP_FILE_RE",
    "Clock",
    "DirectoryKeyStore",
    "DirectoryStorage",
    "KeyBackend",
    "KeyManager",
    "KeyRecord",
    "KeySet",
    "KeySource",
    "KeyState",
    "KeyStore",
    "LoadedKey",
    "Manifest",
    "ReloadingKeyStore",
    "RotationResult",
    "RotationTooSoonError",
    "Sealer",
    "StaticKeyStore",
    "UnknownKeyError",
    "build_key_set",
    "checked_manifest",
    "ensure_keys_dir",
    "generate_key",
    "kek_id",
    "key_id",
    "load_manifest",
    "parse_manifest",
    "public_jwk",
    "read_manifest",
]
