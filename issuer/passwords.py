"""Password hashing, checking and strength rules: the only module that imports bcrypt.

bcrypt reads at most 72 bytes; bcrypt 5 raises ``ValueError`` beyond that, and older
versions silently truncated. Here a longer password is refused when it is *set*
(a strength rule) and simply fails when it is *checked*, never truncated, never an error.

Checking never raises on user input and always spends one full bcrypt computation, so
an unknown user, a malformed stored hash, an empty or over-long password all cost the
same time as a wrong password (no user enumeration by timing).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import string
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

DEFAULT_ROUNDS = 12
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_LENGTH = 8
RESET_TOKEN_BYTES = 32
SPECIAL_CHARACTERS = frozenset(string.punctuation + " ")
# A whole modular-crypt bcrypt hash: version, cost 04-31, 22 salt + 31 digest characters.
# Anything else is refused before bcrypt sees it, so bcrypt never fails half-way and
# every failed check costs exactly one real computation.
_BCRYPT_HASH = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


_T = TypeVar("_T")

# How much lower than request work the bcrypt threads run (added to the nice value, Linux).
BCRYPT_NICENESS = 10


class _BcryptPool:
    """bcrypt's own threads: at most one check per core, at a lower OS priority than
    request work whenever checks have company.

    A bcrypt check is ~0.25 s of pure CPU (cost 12) with the GIL released. Run on the
    request's thread, 32 concurrent logins meant 32 runnable bcrypt threads sharing the
    cores with every refresh and JWKS request, which then waited behind them (measured:
    refresh p99 1.7 s, JWKS p99 1.2 s during a c = 32 storm). Here at most one check per
    core runs at a time, so a storm queues logins instead (they finish no later: the cores
    were the limit anyway), and on Linux those checks run on niced threads, so the
    scheduler runs request threads first and bcrypt takes the CPU they leave idle.

    A *lone* check (none other in flight, and more than one core) runs on the caller's
    own thread at the caller's priority: it leaves every other core to request work, so
    lowering it protects nothing, while a niced thread loses the CPU to any other process
    on the machine and a login alone waited for it (p50 a bcrypt check + 16 ms measured),
    besides two thread hops. The first check of a storm may run so; every later one has
    company and is niced. Raising a thread's priority back needs privilege, hence a
    separate path rather than re-nicing a pool thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._cores = os.cpu_count() or 1
        # Held while a check computes, on either path: the one-check-per-core bound.
        self._slots = threading.BoundedSemaphore(self._cores)
        self._in_flight = 0  # checks submitted and not yet returned, both paths

    def run(self, work: Callable[[], _T]) -> _T:
        """``work()`` under a per-core slot; the caller's thread waits for the result."""
        with self._lock:
            executor = self._pool()
            lone = self._in_flight == 0 and self._cores > 1
            self._in_flight += 1
        try:
            if lone:
                return self._in_slot(work)
            return executor.submit(self._in_slot, work).result()
        finally:
            with self._lock:
                self._in_flight -= 1

    def _in_slot(self, work: Callable[[], _T]) -> _T:
        with self._slots:
            return work()

    def _pool(self) -> ThreadPoolExecutor:
        """The niced threads (created on first use); the caller holds ``_lock``."""
        # A forked child inherits the executor object but not its threads, nor the
        # checks its parent had in flight.
        if self._executor is None or self._pid != os.getpid():
            self._executor = ThreadPoolExecutor(
                max_workers=self._cores,
                thread_name_prefix="bcrypt",
                initializer=_lower_priority,
            )
            self._pid = os.getpid()
            self._slots = threading.BoundedSemaphore(self._cores)
            self._in_flight = 0
        return self._executor


def _lower_priority() -> None:
    """Nice the calling thread by ``BCRYPT_NICENESS`` (Linux: setpriority on a thread id
    affects that thread only; raising one's own nice value needs no privilege)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            thread = threading.get_native_id()
            niceness = os.getpriority(os.PRIO_PROCESS, thread) + BCRYPT_NICENESS
            os.setpriority(os.PRIO_PROCESS, thread, min(niceness, 19))


_bcrypt_pool = _BcryptPool()


class PasswordHasher:
    """bcrypt with the work factor from settings, and a dummy hash for constant-time misses."""

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        if not 4 <= rounds <= 31:
            raise ValueError("bcrypt rounds must be between 4 and 31")
        self.rounds = rounds
        self._dummy: bytes | None = None
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        """bcrypt hash of ``password``; ValueError if empty, over 72 bytes or with a NUL."""
        if not isinstance(password, str):
            raise TypeError("password must be a str")
        raw = password.encode("utf-8")
        if not raw:
            raise ValueError("password must not be empty")
        if len(raw) > MAX_PASSWORD_BYTES:
            raise ValueError(f"password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
        if b"\0" in raw:
            # Some bcrypt builds stop at NUL; refusing it keeps every hash portable.
            raise ValueError("password must not contain a NUL character")
        salt = bcrypt.gensalt(self.rounds)
        return _bcrypt_pool.run(lambda: bcrypt.hashpw(raw, salt)).decode("ascii")

    def verify(self, password: str, hashed: str | None) -> bool:
        """True only if ``password`` matches ``hashed``; spends one bcrypt either way."""
        raw = password.encode("utf-8", "surrogatepass") if isinstance(password, str) else b""
        stored = _parse_hash(hashed)
        if stored is None or not raw or len(raw) > MAX_PASSWORD_BYTES or b"\0" in raw:
            self._burn()
            return False
        try:
            return _bcrypt_pool.run(lambda: bcrypt.checkpw(raw, stored))
        except ValueError:  # unreachable for a parsed hash; never let user input raise
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """True if ``hashed`` is a bcrypt hash of a lower cost than this hasher's."""
        stored = _parse_hash(hashed)
        return stored is not None and int(stored[4:6]) < self.rounds

    def _burn(self) -> None:
        """Spend the time of one real check, against a hash of this hasher's cost."""
        dummy = self._dummy_hash()
        with contextlib.suppress(ValueError):
            _bcrypt_pool.run(lambda: bcrypt.checkpw(b"not the password", dummy))

    def _dummy_hash(self) -> bytes:
        with self._lock:
            if self._dummy is None:
                self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(self.rounds))
            return self._dummy


def _parse_hash(hashed: str | None) -> bytes | None:
    """The stored hash as bytes if it is a well-formed bcrypt hash, else None."""
    if not isinstance(hashed, str) or not hashed.isascii():
        return None
    raw = hashed.encode("ascii")
    return raw if _BCRYPT_HASH.fullmatch(raw) else None


_default_hashers: dict[int, PasswordHasher] = {}
_default_lock = threading.Lock()


def _hasher(rounds: int) -> PasswordHasher:
    with _default_lock:
        hasher = _default_hashers.get(rounds)
        if hasher is None:
            hasher = _default_hashers[rounds] = PasswordHasher(rounds)
        return hasher


def hash_password(password: str, rounds: int = DEFAULT_ROUNDS) -> str:
    """bcrypt hash of ``password`` (cost 12 unless told); ValueError if empty, over 72 bytes
    or containing NUL."""
    return _hasher(rounds).hash(password)


def verify_password(password: str, hashed: str | None, rounds: int = DEFAULT_ROUNDS) -> bool:
    """True if ``password`` matches ``hashed``. Never raises; False for any bad input.

    A failed check costs one bcrypt at the stored hash's cost, or at ``rounds`` when there
    is no usable hash (an unknown user), so the two cannot be told apart by timing.
    """
    stored = _parse_hash(hashed)
    if stored is not None:
        rounds = int(stored[4:6])
    return _hasher(rounds).verify(password, hashed)


def password_strength_failures(password: str) -> list[str]:
    """The strength rules ``password`` breaks, in words; an empty list means it is strong."""
    failures: list[str] = []
    if len(password) < MIN_PASSWORD_LENGTH:
        failures.append(f"at least {MIN_PASSWORD_LENGTH} characters")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        failures.append(f"at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    if "\0" in password:
        failures.append("no NUL character")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from undecodable terminal input
        failures.append("only valid Unicode characters")
    if not any(c.isupper() for c in password):
        failures.append("an uppercase letter")
    if not any(c.islower() for c in password):
        failures.append("a lowercase letter")
    if not any(c.isdigit() for c in password):
        failures.append("a digit")
    if not any(c in SPECIAL_CHARACTERS or not c.isalnum() for c in password):
        failures.append("a special character")
    return failures


def validate_password_strength(password: str) -> bool:
    """True if ``password`` meets every rule: 8+ chars, upper, lower, digit, special, ≤72 bytes.

    Never raises: anything but a str is simply not a strong password.
    """
    if not isinstance(password, str):
        return False
    return not password_strength_failures(password)


def generate_password_reset_token() -> str:
    """A URL-safe reset token with 256 bits from the OS CSPRNG."""
    return secrets.token_urlsafe(RESET_TOKEN_BYTES)
