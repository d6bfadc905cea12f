"""Login rate limits: failed logins counted per user and per client address.

Counts live in a ``limits`` storage with the moving-window strategy: ``memory://`` keeps
them in one process, ``redis://`` shares them between workers and replicas. Keys are
namespaced (``issuer:login:user/…``) and hold SHA-256 digests, never a username or an
address. When the storage is unreachable the limiter fails open: logins keep working
unlimited and a warning is logged at most once a minute. An outage of the limiter's
storage must not become an outage of logins; bcrypt still slows every guess.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import limits
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from issuer.sensitive import redact_url

log = logging.getLogger("issuer.ratelimit")

WARNING_INTERVAL = 60.0
# Bounds a blackholed Redis: a login waits at most this long per storage call, then
# proceeds unlimited.
REDIS_TIMEOUT_SECONDS = 0.5
# One IPv6 user usually holds a whole /64; counting per /128 would let them rotate freely.
IPV6_PREFIX = 64
_DIGEST_HEX = 32


class LoginLimiter:
    """Failed-login budgets per username and per address, from strings like ``"5/minute"``."""

    def __init__(
        self,
        per_user: str,
        per_address: str,
        storage_url: str = "memory://",
        *,
        namespace: str = "issuer",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage_url = storage_url
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if not storage_url.startswith("memory://"):
            options.update(
                key_prefix=namespace,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
        self.storage = storage_from_string(storage_url, **options)
        self.strategy = MovingWindowRateLimiter(self.storage)
        # In Redis the storage adds "<namespace>:"; in memory the item namespace is the key.
        prefix = "login" if "key_prefix" in options else f"{namespace}:login"
        self.per_user = _item(per_user, f"{prefix}:user")
        self.per_address = _item(per_address, f"{prefix}:address")
        self._clock = clock
        self._lock = threading.Lock()
        self._last_warning: float | None = None

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait if the user's or the address's budget is spent, else None."""
        try:
            waits = [self._wait(item, key) for item, key in self._buckets(username, address)]
        except StorageError as exc:
            self._storage_down(exc)
            return None
        blocked = [w for w in waits if w is not None]
        return max(blocked) if blocked else None

    def record_failure(self, username: str, address: str) -> None:
        """Count one failed login against the user and the address."""
        try:
            for item, key in self._buckets(username, address):
                self.strategy.hit(item, key)
        except StorageError as exc:
            self._storage_down(exc)

    def record_success(self, username: str) -> None:
        """A right password clears the user's count (the address keeps its count)."""
        try:
            self.strategy.clear(self.per_user, user_key(username))
        except StorageError as exc:
            self._storage_down(exc)

    def _buckets(self, username: str, address: str) -> Iterator[tuple[limits.RateLimitItem, str]]:
        yield self.per_user, user_key(username)
        if address:  # no peer address (a Unix socket): only the per-user limit applies
            yield self.per_address, address_key(address)

    def _wait(self, item: limits.RateLimitItem, key: str) -> int | None:
        stats = self.strategy.get_window_stats(item, key)
        if stats.remaining > 0:
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    def _storage_down(self, exc: StorageError) -> None:
        now = self._clock()
        with self._lock:
            if self._last_warning is not None and now - self._last_warning < WARNING_INTERVAL:
                return
            self._last_warning = now
        cause = exc.storage_error
        log.warning(
            "rate limit storage %s unreachable (%s: %s); login limits are NOT enforced "
            "until it is back",
            redact_url(self.storage_url),
            cause.__class__.__name__,
            cause,
        )


def _item(text: str, namespace: str) -> limits.RateLimitItem:
    parsed = limits.parse(text)
    return type(parsed)(parsed.amount, parsed.multiples, namespace=namespace)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]


def user_key(username: str) -> str:
    """The bucket identifier of a username: a digest, so no username sits in Redis."""
    return _digest(username)


def address_key(address: str) -> str:
    """The bucket identifier of an address: IPv4, or the IPv6 /64, as a digest."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return _digest(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _digest(str(ip.ipv4_mapped))
        return _digest(str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False)))
    return _digest(str(ip))
