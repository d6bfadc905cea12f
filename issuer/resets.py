"""Password reset: single-use, expiring tokens that set a new password and end every session.

The flow: the operator runs ``issuer users reset-token NAME`` (or an app calls
:meth:`PasswordResets.issue`), delivers the token to the user by a channel of their
choosing (e-mail, a support desk: the issuer sends nothing), and the user redeems it at
``POST /password/reset`` or the app calls :meth:`PasswordResets.redeem` itself.

- A token is ``generate_password_reset_token()`` (256 bits from the OS CSPRNG). The issuer
  keeps only its SHA-256 (a fast hash is right for a random 256-bit value), an expiry,
  and at most one pending token per user: issuing a new one replaces the older one.
- Redemption looks the hash up first. A bad, used or expired token is refused before
  any bcrypt work and counts against the address's failure budget; once that is spent,
  further attempts are refused before even the lookup. A weak new password is refused
  naming the rules it breaks, and leaves the token usable.
- Spending the token, setting the password and ending every session of the user are
  one transaction (:meth:`issuer.store.base.PasswordResetStore.redeem_reset`), so of two
  concurrent redemptions exactly one wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NoReturn

import limits
from limits.errors import StorageError

from issuer.audit import audit_event
from issuer.errors import IssuerError, NotFoundError, PasswordPolicyError
from issuer.models import User, sha256_hex
from issuer.passwords import (
    PasswordHasher,
    generate_password_reset_token,
    password_strength_failures,
)
from issuer.ratelimit import FailOpenWarning, address_key
from issuer.sessions import audit_ended, user_fields
from issuer.store.base import Store

# Far longer than any token generate_password_reset_token makes; longer input is not hashed.
MAX_TOKEN_LENGTH = 512


class ResetTokenError(IssuerError):
    """The reset token is unknown, already used or expired (answered as ``invalid_grant``)."""

    code = "invalid_grant"

    def __init__(self) -> None:
        super().__init__("The reset token is invalid, expired or already used.")


class ResetThrottledError(IssuerError):
    """Too many failed redemptions from this address; ``retry_after`` seconds to wait."""

    code = "too_many_requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed password reset attempts; retry later.")
        self.retry_after = retry_after


class AddressBudget:
    """Failed reset attempts per client address, counted in the login limiter's storage.

    It takes the ``limits`` storage and moving-window strategy the login limiter
    already built (``LoginLimiter.storage`` / ``.strategy``), so its counts are shared by
    every worker and replica exactly when the login counts are, under its own namespace
    (``<prefix>:reset:address``). Like the login limits it fails open, with a warning at
    most once a minute, when the storage is unreachable.
    """

    def __init__(
        self,
        storage: Any,
        strategy: Any,
        rate: str,
        namespace: str,
        *,
        storage_url: str = "memory://",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = limits.parse(rate)
        self.item = type(parsed)(parsed.amount, parsed.multiples, namespace=namespace)
        self.storage = storage
        self.strategy = strategy
        self.storage_url = storage_url
        self._outage = FailOpenWarning("password reset limits", clock)

    def retry_after(self, address: str) -> int | None:
        """Seconds to wait if the address spent its budget, else None."""
        if not address:
            return None
        try:
            stats = self.strategy.get_window_stats(self.item, address_key(address))
        except StorageError as exc:
            self._storage_down(exc)
            return None
        if stats.remaining > 0:
            return None
        return max(1, math.ceil(float(stats.reset_time) - time.time()))

    def record_failure(self, address: str) -> None:
        """Count one failed redemption against the address."""
        if not address:
            return
        try:
            self.strategy.hit(self.item, address_key(address))
        except StorageError as exc:
            self._storage_down(exc)

    def _storage_down(self, exc: StorageError) -> None:
        self._outage.storage_down(exc, self.storage_url)


class PasswordResets:
    """Issue and redeem password reset tokens (the Python API; HTTP calls :meth:`redeem`)."""

    def __init__(
        self,
        store: Store,
        hasher: PasswordHasher,
        *,
        ttl: int = 1800,
        clock: Callable[[], float] = time.time,
        budget: AddressBudget | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.ttl = ttl
        self.clock = clock
        self.budget = budget

    def issue(self, username: str, ttl: int | None = None) -> str:
        """A new reset token for ``username``, valid ``ttl`` seconds (default: the setting);
        any older token of the user stops working. NotFoundError if there is no such user."""
        user = self.store.get_by_username(username)
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        token = generate_password_reset_token()
        now = int(self.clock())
        lifetime = self.ttl if ttl is None else ttl
        self.store.save_reset(user.id, sha256_hex(token), now + lifetime, now)
        audit_event("password_reset.requested", **user_fields(user), expires_in=lifetime)
        return token

    def redeem(self, token: str, new_password: str, *, address: str = "") -> User:
        """Set the password of the token's user to ``new_password`` and end every session.

        Raises ResetThrottledError (no work done), ResetTokenError (no bcrypt spent) or
        PasswordPolicyError (naming the failed rules; the token stays usable).
        """
        if self.budget is not None:
            wait = self.budget.retry_after(address)
            if wait is not None:
                audit_event("password_reset.refused", reason="throttled", address=address)
                raise ResetThrottledError(wait)
        token_hash = self._hash(token)
        now = int(self.clock())
        if token_hash is None or self.store.reset_owner(token_hash, now) is None:
            self._failed(address)
        failures = (
            password_strength_failures(new_password)
            if isinstance(new_password, str)
            else ["a password"]
        )
        if failures:
            raise PasswordPolicyError(failures)
        try:
            password_hash = self.hasher.hash(new_password)
        except ValueError:  # a NUL character: no strength rule names it
            raise PasswordPolicyError(["no NUL character"]) from None
        redeemed = self.store.redeem_reset(token_hash, password_hash, int(self.clock()))
        if redeemed is None:  # spent or expired meanwhile (a concurrent redemption won)
            self._failed(address)
        user, ended = redeemed
        audit_event(
            "password_reset.used", **user_fields(user), address=address, sessions_ended=len(ended)
        )
        audit_ended("password_reset.used", user, ended, address=address)
        return user

    def _hash(self, token: object) -> str | None:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return sha256_hex(token)

    def _failed(self, address: str) -> NoReturn:
        if self.budget is not None:
            self.budget.record_failure(address)
        audit_event("password_reset.refused", reason="invalid_token", address=address)
        raise ResetTokenError
