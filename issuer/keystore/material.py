"""Key material: the algorithms we sign with, generating keys, their file form, the
RFC 7638 thumbprint that names them, and the members a public JWK may show.

Each key is bound to one algorithm (RFC 8725 §3.1); a key file is checked against the
algorithm and kid its manifest record names before it is ever used.
"""

from __future__ import annotations

import secrets
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from issuer.errors import KeyStoreError

HS_SECRET_BYTES = 64
MIN_HS_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
# The size of a new RSA key unless `rsa_key_size` says otherwise: RFC 7518 §3.3's minimum,
# what the major identity providers publish, and acceptable to NIST SP 800-57 through 2030.
# A 3072-bit key signs ~3x slower, and a refresh signs up to three tokens.
DEFAULT_RSA_BITS = 2048
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


def generate_key(alg: str, rsa_key_size: int = DEFAULT_RSA_BITS) -> Key:
    """A fresh private key for ``alg``: RSA-2048 (default), P-256, Ed25519 or a 512-bit secret."""
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


def serialize_key(key: Key) -> bytes:
    """A key file's bytes: an unencrypted PKCS#8 PEM, or the base64url secret for HS256."""
    if isinstance(key, OctKey):
        return str(key.as_dict(private=True)["k"]).encode("ascii") + b"\n"
    return key.as_pem(private=True)


def deserialize_key(alg: str, data: bytes) -> Key:
    """Parse a key file written for ``alg``; KeyStoreError (never the key bytes) if it fails."""
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


def check_key(key: Key, *, alg: str, kid: str, where: str) -> None:
    """Refuse a key that does not fit its record: wrong type, curve, size, or kid."""
    if isinstance(key, OctKey):
        if len(key.raw_value) < MIN_HS_SECRET_BYTES:
            raise KeyStoreError(f"{where}: an HS256 secret needs {MIN_HS_SECRET_BYTES} bytes")
        return
    if not key.is_private:
        raise KeyStoreError(f"{where}: holds a public key; a private key is needed to sign")
    if isinstance(key, RSAKey) and key.raw_value.key_size < MIN_RSA_BITS:
        raise KeyStoreError(f"{where}: RSA keys need at least {MIN_RSA_BITS} bits")
    if isinstance(key, ECKey | OKPKey) and key.curve_name != CURVES[alg]:
        raise KeyStoreError(f"{where}: {alg} needs curve {CURVES[alg]}")
    if key.thumbprint() != kid:
        raise KeyStoreError(f"{where}: the key's RFC 7638 thumbprint is not its kid")


def public_members(key: Key) -> dict[str, Any]:
    """The public members of an asymmetric key, from an allow-list; a secret has none."""
    if isinstance(key, OctKey):
        raise KeyStoreError("a symmetric key is never published")
    # An allow-list, not joserfc's idea of "public": nothing else can ever leak.
    full = key.as_dict(private=False)
    return {name: full[name] for name in PUBLIC_MEMBERS[str(full["kty"])]}
