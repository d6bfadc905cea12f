"""One fetch in progress that threads and coroutines (on any event loop) can wait for.

Concurrent cache misses must share one request to the issuer, whether they come from
worker threads (sync ``verify``) or coroutines (``averify``). A :class:`Flight` is that
request's completion: threads block on a :class:`threading.Event`; coroutines are woken by
a callback scheduled on their own loop, so no thread is spent waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class Flight:
    """Completion of one shared fetch; :meth:`finish` wakes every waiter exactly once."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []

    def finish(self) -> None:
        with self._lock:
            self._done.set()
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()

    def wait(self, timeout: float) -> bool:
        """Block this thread until finished or ``timeout``; True if finished."""
        return self._done.wait(timeout)

    async def await_done(self, timeout: float) -> bool:
        """Wait without blocking the event loop; True if finished within ``timeout``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the waiter's loop may be closed by now
                loop.call_soon_threadsafe(_resolve, future)

        with self._lock:
            if self._done.is_set():
                return True
            self._wakers.append(wake)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, timeout)
        return self._done.is_set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
