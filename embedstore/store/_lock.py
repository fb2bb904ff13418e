"""The store's write lock: one process writes a store at a time (a POSIX record lock on
``STORE/write.lock``, re-entrant within a process; it dies with its process)."""

from __future__ import annotations

import fcntl
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedstore.store._lance import StoreLockedError, now

LOCK_FILE = "write.lock"  # held (fcntl.lockf) by the one process writing the store
_HELD: dict[str, list] = {}  # resolved store path -> [lock file descriptor, depth], this process
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_GUARD = threading.Lock()


def writes(method):
    """Run a write method holding the store's write lock (its object's ``lock``)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock.hold():
            return method(self, *args, **kwargs)

    return locked


class WriteLock:
    """The write lock of the store in ``path`` (``Store.lock``; ``Store.writing`` holds it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def hold(self, what: str | None = None) -> Iterator[None]:
        """Hold the store's write lock: one process writes a store at a time.

        Every write method takes it; a long job (an ingest) holds it throughout, so a second
        writer is refused at once with :class:`StoreLockedError` naming the holder ("store is
        being written by PID ...") instead of racing it. Re-entrant within a process (threads
        wait for each other); the lock dies with its process, so a ``kill -9`` leaves none.
        """
        key = str(self.path.resolve())
        with _GUARD:
            tlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
        with tlock:
            held = _HELD.get(key)
            if held is not None:  # this thread holds it already
                held[1] += 1
                try:
                    yield
                finally:
                    held[1] -= 1
                return
            fd = take_lock(self.path, what or "embedstore")
            _HELD[key] = [fd, 1]
            try:
                yield
            finally:
                del _HELD[key]
                os.close(fd)  # releases the lock


def take_lock(store: Path, what: str) -> int:
    """Take ``store``'s write lock (a POSIX record lock: held by this process only, not by
    forked workers, released when it exits however it exits); StoreLockedError if taken."""
    fd = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise StoreLockedError(
            f"{store}: the store is being written by {holder}; wait for it to finish (or stop "
            "it) and run this again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} ({what}, since {now()})".encode(), 0)
    return fd
