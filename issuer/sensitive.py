"""Handling sensitive values: a :class:`Secret` that hides itself, URLs with their password
redacted, and the check that refuses a signing secret too weak to trust.

Kept apart from :mod:`issuer.settings` so the key store and the rate limiter use these
helpers without depending on how settings are loaded. (Not ``secrets.py``: that name is
the standard library's CSPRNG module.)
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from collections import Counter
from urllib.parse import urlsplit

__all__ = [
    "KEK_GENERATE_HINT",
    "MIN_SECRET_BYTES",
    "MIN_SECRET_ENTROPY_BITS",
    "Secret",
    "estimated_entropy_bits",
    "parse_kek",
    "redact_url",
    "secret_problem",
]

MIN_SECRET_BYTES = 32
# A secret's estimated entropy (see estimated_entropy_bits) must reach this many bits: it
# catches "aaaa…", repeated words and runs like "abcd…", while a random 32-byte secret in
# hex or base64 scores ~190 bits or more.
MIN_SECRET_ENTROPY_BITS = 128
# Repeats at least this long count as one symbol in the estimate. Random hex has the odd
# 3-character repeat by chance; it costs such a secret a few bits, far from the threshold.
_MIN_REPEAT = 3
_REPEAT_CANDIDATES = 64
_GENERATE_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
KEK_BYTES = 32
KEK_GENERATE_HINT = "openssl rand -base64 32"
_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Secret:
    """A string that never shows itself in ``repr``/``str`` (tracebacks, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for a log line or a ``repr``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def secret_problem(secret: str) -> str | None:
    """Say why ``secret`` is too weak to sign HS256 tokens, or None when it is fine."""
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return (
            f"is {size} bytes; at least {MIN_SECRET_BYTES} random bytes are required "
            f"(generate one: {_GENERATE_HINT})"
        )
    if estimated_entropy_bits(secret) < MIN_SECRET_ENTROPY_BITS:
        return f"looks guessable (too little variety); use a random value ({_GENERATE_HINT})"
    return None


def parse_kek(text: str) -> bytes:
    """The 32 bytes of a key-encryption key written as hex or base64 (standard or URL-safe,
    padded or not); ValueError naming the expected form (never the value) otherwise.

    No passphrases: a KEK is random bytes, so nothing is left to stretch with a KDF.
    """
    text = text.strip()
    if _HEX.fullmatch(text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEK_BYTES:
        raise ValueError(
            f"must be {KEK_BYTES} random bytes in base64 or hex (generate one: {KEK_GENERATE_HINT})"
        )
    return raw


def estimated_entropy_bits(secret: str) -> float:
    """A pessimistic estimate of a string's entropy in bits, to refuse guessable secrets.

    Shannon entropy per symbol times the number of symbols a greedy LZ77 parse needs
    (a repeat of 3+ symbols counts as one), taken on the characters and on the steps
    between neighbours; the lower wins. "aaaa…", "abcabc…" and "abcdef…" score near zero.
    """
    if not secret:
        return 0.0
    chars = [ord(c) for c in secret]
    steps = [b - a for a, b in itertools.pairwise(chars)]
    return min(_repeat_aware_bits(chars), _repeat_aware_bits(steps))


def _repeat_aware_bits(symbols: list[int]) -> float:
    n = len(symbols)
    if n == 0:
        return 0.0
    counts = Counter(symbols)
    per_symbol = -sum(c / n * math.log2(c / n) for c in counts.values())
    return per_symbol * _lz_phrases(symbols)


def _lz_phrases(symbols: list[int]) -> int:
    """Number of phrases (literals and back-references) in a greedy LZ77 parse."""
    n = len(symbols)
    seen: dict[tuple[int, ...], list[int]] = {}
    phrases = 0
    i = 0
    while i < n:
        best = 0
        gram = tuple(symbols[i : i + _MIN_REPEAT])
        if len(gram) == _MIN_REPEAT:
            for start in seen.get(gram, [])[-_REPEAT_CANDIDATES:]:
                length = _MIN_REPEAT
                while i + length < n and symbols[start + length] == symbols[i + length]:
                    length += 1
                best = max(best, length)
        step = best if best >= _MIN_REPEAT else 1
        for j in range(i, i + step):
            seen.setdefault(tuple(symbols[j : j + _MIN_REPEAT]), []).append(j)
        phrases += 1
        i += step
    return phrases
