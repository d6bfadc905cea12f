"""Login throttling that holds under concurrency and that an attacker cannot aim at a victim.

Three failure budgets (moving windows in a ``limits`` storage; OWASP Authentication Cheat
Sheet, "Account Lockout": throttle, never lock an account an attacker can name):

- per (canonical username, client address), small (``5/minute``): a guesser throttles
  only himself, never the account's owner at another address;
- per client address, any usernames (``30/minute``): password spraying from one address;
- per username across all addresses, a high ceiling (``100/hour``) against a distributed
  attack on one account. It does not apply from an address where that user logged in
  successfully within ``known_address_days``, so the owner keeps logging in at their
  usual place while strangers are slowed.

Atomicity: :meth:`LoginLimiter.admit` takes a place in every applicable budget *before*
bcrypt runs, each with the storage's atomic test-and-take (``MovingWindowRateLimiter.hit``:
a lock in memory, one Lua script in Redis), so N concurrent attempts are never checked
more often than N sequential ones. A refused attempt gives back the places it took (it
cost no bcrypt and proves nothing); a success gives back its per-address and per-user
places (budgets count failures), clears its (user, address) budget and remembers the
address as known. A failure keeps its places.

Keys are keyed hashes (HMAC-SHA256) of the canonical username and the address (IPv6 per
/64), so the storage holds neither, and Redis contents alone cannot be brute-forced back
to IPv4 addresses. The hash key must be shared by every replica sharing the storage and
kept out of it: see :func:`hash_key_for`. When the storage is unreachable the limiter
fails open: logins work unlimited and a warning is logged at most once a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import limits
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from issuer.models import canonical_username
from issuer.sensitive import redact_url

log = logging.getLogger("issuer.ratelimit")

WARNING_INTERVAL = 60.0
# Bounds a blackholed Redis: a login waits at most this long per storage call, then
# proceeds unlimited.
REDIS_TIMEOUT_SECONDS = 0.5
# One IPv6 user usually holds a whole /64; counting per /128 would let them rotate freely.
IPV6_PREFIX = 64
_DIGEST_HEX = 32
HASH_KEY_BYTES = 32
HASH_KEY_FILE = "ratelimit.key"
_SECRET_LABEL = b"issuer rate-limit key hashing v1"
DAY = 86400
Budget = tuple[limits.RateLimitItem, str]


@dataclass(frozen=True)
class LoginPolicy:
    """The three failure budgets (``"5/minute"``-style strings) and the known-address memory."""

    per_user_address: str = "5/minute"
    per_address: str = "30/minute"
    per_user: str = "100/hour"
    known_address_days: int = 30


@dataclass
class Admission:
    """The outcome of :meth:`LoginLimiter.admit`: admitted, or refused with a wait.

    ``taken`` lists the budget places this attempt holds; a success hands it back.
    ``budget`` names the spent budget of a refusal (``user-address``, ``address``, ``user``).
    """

    retry_after: int | None = None
    taken: list[Budget] = field(default_factory=list)
    username: str = ""
    address: str = ""
    budget: str = ""

    @property
    def admitted(self) -> bool:
        return self.retry_after is None


class FailOpenWarning:
    """Says that limits are not enforced while their storage is down: at most once per
    :data:`WARNING_INTERVAL`, however many requests meet the outage. Limits fail open (a
    Redis outage must not lock every user out), so this line is how an operator learns."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self._clock = clock
        self._lock = threading.Lock()
        self._last_warning: float | None = None

    def storage_down(self, exc: StorageError, storage_url: str) -> None:
        now = self._clock()
        with self._lock:
            if self._last_warning is not None and now - self._last_warning < WARNING_INTERVAL:
                return
            self._last_warning = now
        cause = exc.storage_error
        log.warning(
            "rate limit storage %s unreachable (%s: %s); %s are NOT enforced until it is back",
            redact_url(storage_url),
            cause.__class__.__name__,
            cause,
            self.what,
        )


class LoginLimiter:
    """Failed-login budgets (see the module docstring) over a ``limits`` storage.

    ``storage`` and ``strategy`` are public: other budgets (password resets) share them
    under their own namespaces.
    """

    def __init__(
        self,
        policy: LoginPolicy,
        storage_url: str = "memory://",
        *,
        namespace: str = "issuer",
        hash_key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage_url = storage_url
        self.policy = policy
        shared = not storage_url.startswith("memory://")
        if hash_key is None:
            if shared:
                raise ValueError("a shared rate limit storage needs a shared hash key")
            hash_key = secrets.token_bytes(HASH_KEY_BYTES)  # memory: this process only
        self._hash_key = hash_key
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if shared:
            options.update(
                key_prefix=namespace,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
        storage = (
            SweptMemoryStorage(storage_url, wrap_exceptions=True)
            if not shared
            else storage_from_string(storage_url, **options)
        )
        if not isinstance(storage, Storage):  # only async:// URLs give async storages
            raise TypeError(f"not a synchronous storage: {redact_url(storage_url)}")
        self.storage: Storage = storage
        self.strategy = MovingWindowRateLimiter(self.storage)
        # In Redis the storage adds "<namespace>:"; in memory the item namespace is the key.
        self._prefix = "login" if shared else f"{namespace}:login"
        self.per_user_address = _item(policy.per_user_address, f"{self._prefix}:user-address")
        self.per_address = _item(policy.per_address, f"{self._prefix}:address")
        self.per_user = _item(policy.per_user, f"{self._prefix}:user")
        self._known_ttl = policy.known_address_days * DAY
        self._outage = FailOpenWarning("login limits", clock)

    # -- the three steps of a login ---------------------------------------------------

    def close(self) -> None:
        """Close the storage's connections (Redis); a memory storage holds none."""
        if isinstance(self.storage, RedisStorage):
            # redis (~7 MB per worker) is imported only when a Redis storage exists,
            # which limits has done already: the default memory storage never loads it.
            import redis  # noqa: PLC0415

            client = self.storage.get_connection()
            if isinstance(client, redis.Redis):
                client.close()

    def admit(self, username: str, address: str) -> Admission:
        """Take a place in every budget that applies, atomically each, before any bcrypt.

        Refused (``retry_after`` set, nothing held) when one budget is spent. After a wrong
        password the places simply stay taken until they leave their windows.
        """
        name = canonical_username(username)
        admission = Admission(username=name, address=address)
        try:
            for item, key in self._budgets(name, address):
                if not self.strategy.hit(item, key):
                    wait = self._wait(item, key)
                    self._give_back(admission.taken)
                    budget = item.namespace.rpartition(":")[2]
                    return Admission(
                        retry_after=wait, username=name, address=address, budget=budget
                    )
                admission.taken.append((item, key))
        except StorageError as exc:
            self._storage_down(exc)
            # Fail open; give back what was taken if the storage still answers.
            with contextlib.suppress(StorageError):
                self._give_back(admission.taken)
            return Admission(username=name, address=address)
        return admission

    def succeeded(self, admission: Admission) -> None:
        """A right password: give back the per-address and per-user places (only failures
        count there), clear the (user, address) budget, remember the address as known."""
        try:
            self._give_back([b for b in admission.taken if b[0] is not self.per_user_address])
            if admission.address:
                self.strategy.clear(
                    self.per_user_address, self._pair_key(admission.username, admission.address)
                )
                known = self._known_key(admission.username, admission.address)
                # clear + incr restarts the expiry: "known" counts from the latest success.
                self.storage.clear(known)
                self.storage.incr(known, self._known_ttl)
        except StorageError as exc:
            self._storage_down(exc)

    # -- inspection (tests, operators) -------------------------------------------------

    def is_known_address(self, username: str, address: str) -> bool:
        """True if ``username`` logged in from ``address`` within ``known_address_days``."""
        if not address:
            return False
        return self.storage.get(self._known_key(canonical_username(username), address)) > 0

    def pseudonym(self, username: str) -> str:
        """A keyed hash of the canonical username: how audit lines name unknown users."""
        return self._digest("user", canonical_username(username))

    # -- internals ---------------------------------------------------------------------

    def _budgets(self, name: str, address: str) -> list[Budget]:
        # Cheapest refusal first and the victim's shared ceiling last: an attempt refused by
        # its own (user, address) or address budget never touches the per-user ceiling.
        budgets = [(self.per_user_address, self._pair_key(name, address))]
        if address:  # no peer address (a Unix socket): no per-address budget, never known
            budgets.append((self.per_address, self._digest("address", network_of(address))))
        if not (address and self.storage.get(self._known_key(name, address)) > 0):
            budgets.append((self.per_user, self._digest("user", name)))
        return budgets

    def _pair_key(self, name: str, address: str) -> str:
        return self._digest("user-address", name, network_of(address) if address else "")

    def _known_key(self, name: str, address: str) -> str:
        return f"{self._prefix}:known/" + self._digest("known", name, network_of(address))

    def _digest(self, *parts: str) -> str:
        message = "\x00".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._hash_key, message, hashlib.sha256).hexdigest()[:_DIGEST_HEX]

    def _wait(self, item: limits.RateLimitItem, key: str) -> int:
        stats = self.strategy.get_window_stats(item, key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def _give_back(self, taken: list[Budget]) -> None:
        for item, key in taken:
            release_entry(self.storage, item.key_for(key))

    def _storage_down(self, exc: StorageError) -> None:
        self._outage.storage_down(exc, self.storage_url)


class SweptMemoryStorage(MemoryStorage):
    """``limits``' memory storage, expired entries swept inline at most once a second.

    The stock storage starts a new ``threading.Timer`` (a thread, 10 ms) on the first hit
    after the previous one ended: at login rates, a thread created and started per
    login, most of the CPU a login spends in the failure budgets (py-spy). Expiry never
    depended on the sweep (every read compares timestamps); the sweep only frees memory,
    which a once-a-second pass on the caller's thread does as well. One sweeper at a time,
    so no thread ever waits for a second key's lock while holding one.
    """

    SWEEP_INTERVAL = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False) -> None:
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides limits' private hook
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + self.SWEEP_INTERVAL
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]  # limits private
        finally:
            self._sweep_lock.release()


def release_entry(storage: object, key: str) -> None:
    """Remove the newest entry of a moving window (the inverse of one ``hit``).

    ``limits`` has no such call. Both storages keep a window newest-first (a list under a
    lock in memory, a Redis list): one pop, atomic on its own. The popped entry may be a
    concurrent attempt's rather than ours; the count is the same and the remaining,
    older entry leaves the window no later, so the budget is never looser than exact.
    """
    if isinstance(storage, MemoryStorage):
        with storage.locks[key]:
            events = storage.events.get(key)
            if events:
                events.pop(0)
    elif isinstance(storage, RedisStorage):
        try:
            storage.storage.lpop(storage.prefixed_key(key))
        except storage.base_exceptions as exc:
            raise StorageError(exc) from exc
    else:  # pragma: no cover - settings allow only memory:// and Redis
        raise TypeError(f"cannot release an entry in {storage.__class__.__name__}")


def _item(text: str, namespace: str) -> limits.RateLimitItem:
    parsed = limits.parse(text)
    return type(parsed)(parsed.amount, parsed.multiples, namespace=namespace)


def network_of(address: str) -> str:
    """What an address is counted as: the IPv4 address, or the IPv6 /64 (mapped IPv4 as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


def address_key(address: str) -> str:
    """An unkeyed digest of an address's network, for budgets with no secret at hand."""
    return hashlib.sha256(network_of(address).encode("utf-8", "surrogatepass")).hexdigest()[
        :_DIGEST_HEX
    ]


def hash_key_for(storage_url: str, secret: str | None, keys_dir: Path) -> bytes | None:
    """The key of the limiter's keyed hashes: shared by every replica, never in the storage.

    - ``memory://``: None (the limiter draws a random key; its counts are per process).
    - with an HS256 secret (``ISSUER_SECRET_KEY``), which every replica already shares:
      HMAC-SHA256 of a fixed label under that secret.
    - otherwise ``<keys_dir>/ratelimit.key``: 32 random bytes, created 0600 by the first
      process that needs it, shared like the signing keys in ``keys/``.
    """
    if storage_url.startswith("memory://"):
        return None
    if secret is not None:
        return hmac.new(secret.encode("utf-8"), _SECRET_LABEL, hashlib.sha256).digest()
    return load_or_create_key_file(keys_dir / HASH_KEY_FILE)


def load_or_create_key_file(path: Path) -> bytes:
    """Read a random key file, creating it (0600, directory 0700) if it does not exist.

    Created in a temporary file and published with ``link``, which fails if another
    process got there first: every process ends up with the same, complete key.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(HASH_KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) < HASH_KEY_BYTES:
        raise ValueError(f"{path} holds {len(data)} bytes; expected {HASH_KEY_BYTES}")
    return data
