"""One SQLite writer at a time, across threads and processes, without busy-wait back-off.

SQLite has one write lock per database, and a connection that finds it taken waits in
SQLite's busy handler, which polls with back-off sleeps (1, 2, 5 … up to 100 ms).
Measured with ``make bench`` (refresh grant): with one worker, 43 % of the request
threads' time went there (p99 ~400 ms for 20 ms of work); with two workers, p99 was
823 ms. So writers queue here first, on locks that wake a waiter the moment the holder
lets go (a waiter polls every 50 µs for the first 2 ms, the length of a few
transactions, then blocks in the kernel), and only the one at the front asks SQLite
(``BEGIN IMMEDIATE``), which then finds the lock free:

- the threads of one process on a re-entrant :class:`threading.RLock`;
- the processes (uvicorn workers, replicas on one host, the CLI) on an exclusive
  ``flock`` of a sidecar file next to the database (``<database>-writer.lock``, mode
  0600), taken by the thread at the front of its process's queue. The kernel releases it
  when its holder exits, however it ends.

Neither lock is needed for correctness: SQLite's own lock still decides, and a writer
that cannot take them (a read-only directory, a wait longer than the busy timeout) goes
on to ask SQLite as before. So nothing waits longer, or fails otherwise, than without
them. A wait for the file lock is bounded too: a process stopped while holding it (a
debugger, SIGSTOP) delays the others by at most the busy timeout, like SQLite would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

LOCK_SUFFIX = "-writer.lock"
# How long an uncontended-looking wait spins on the kernel before blocking in a helper
# thread (most waits are one short transaction of the other process: ~0.1 ms).
_SPIN_S = 0.002
_SPIN_SLEEP_S = 0.00005


class FileLock:
    """An exclusive ``flock`` on one file, opened by this process (never inherited: a
    forked child sharing the open file would share the lock instead of competing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0
        self._guard = threading.Lock()

    def _descriptor(self) -> int | None:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None  # a read-only directory, say: SQLite alone arbitrates
        self._fd, self._pid = fd, os.getpid()
        return fd

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False if it could not be taken.

        Called by one thread of the process at a time (the holder of the process's
        :class:`WriterLock` thread lock).
        """
        fd = self._descriptor()
        if fd is None:
            return False
        began = time.monotonic()
        deadline = began + timeout
        spin_until = began + min(_SPIN_S, timeout)
        # Most waits are one short transaction of another process: poll briefly first.
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError:
                return False
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= spin_until:
                return self._blocking_acquire(fd, deadline)
            time.sleep(_SPIN_SLEEP_S)

    def _blocking_acquire(self, fd: int, deadline: float) -> bool:
        """Block in the kernel until the lock is free (woken at once on release), in a
        helper thread so the wait stays bounded: if ``deadline`` passes first, the helper
        gives the lock back as soon as it gets it."""
        taken = threading.Event()
        state = {"abandoned": False}

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                return
            with self._guard:
                if state["abandoned"]:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    return
                taken.set()

        threading.Thread(target=wait, name="sqlite-writer-lock", daemon=True).start()
        if taken.wait(max(0.0, deadline - time.monotonic())):
            return True
        with self._guard:
            if taken.is_set():
                return True
            state["abandoned"] = True
        return False

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)


class WriterLock:
    """The writer queue of one SQLite database file: threads, then processes."""

    def __init__(self, database_path: str) -> None:
        self.threads = threading.RLock()
        self.processes = FileLock(database_path + LOCK_SUFFIX)
        self._depth = 0  # the holding thread's nesting (the thread lock is re-entrant)
        self._file_held = False

    @contextlib.contextmanager
    def held(self, timeout: float) -> Iterator[None]:
        """Hold both locks for the block, each waited for at most ``timeout`` seconds."""
        locked = self.threads.acquire(timeout=timeout)
        try:
            if locked:
                self._depth += 1
                if self._depth == 1:
                    self._file_held = self.processes.acquire(timeout)
            yield
        finally:
            if locked:
                self._depth -= 1
                if self._depth == 0 and self._file_held:
                    self._file_held = False
                    self.processes.release()
                self.threads.release()


_LOCKS: dict[str, WriterLock] = {}
_LOCKS_GUARD = threading.Lock()


def writer_lock(database_path: str) -> WriterLock:
    """The process's one :class:`WriterLock` for the database file at ``database_path``."""
    path = os.path.realpath(database_path)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(path)
        if lock is None:
            lock = _LOCKS[path] = WriterLock(path)
        return lock
