"""The store's inter-process lock: an OS file lock on ``<root>/.lock`` that dies with its holder.

POSIX uses ``flock``; Windows (RTX PCs) uses ``msvcrt.locking``. Both are released by the OS when the
holding process dies (kill -9 included), so a lock file left behind is stale by construction and the
next locker simply takes it: no PID-liveness guess and no PID-reuse race. ``fcntl`` and ``msvcrt`` are
imported here, lazily, because each exists on one family of systems only.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from edgeq._fs import read_at, write_at
from edgeq.errors import StoreError, StoreLockedError

_FLOCK_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
#: what the CRT's _locking sets when another handle holds the range (EDEADLOCK after its own retries)
_MSVCRT_BUSY = (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK))
#: Windows byte-range locks are mandatory: locking byte 0 would stop a waiter from reading the holder's
#: PID, so the msvcrt backend locks one byte past any PID text (Windows lets a lock lie beyond EOF).
_MSVCRT_LOCK_OFFSET = 1 << 12


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _Flock:
    name = "flock"

    def __init__(self, fcntl: Any) -> None:
        self._fcntl = fcntl

    def try_lock(self, fd: int) -> bool:
        try:
            self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _FLOCK_BUSY:
                return False
            raise
        return True

    def unlock(self, fd: int) -> None:
        self._fcntl.flock(fd, self._fcntl.LOCK_UN)


class _Msvcrt:
    name = "msvcrt"

    def __init__(self, msvcrt: Any) -> None:
        self._msvcrt = msvcrt

    def try_lock(self, fd: int) -> bool:
        os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
        try:
            self._msvcrt.locking(fd, self._msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in _MSVCRT_BUSY:
                return False
            raise
        return True

    def unlock(self, fd: int) -> None:
        os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
        self._msvcrt.locking(fd, self._msvcrt.LK_UNLCK, 1)


def lock_backend() -> _Flock | _Msvcrt | None:
    """The file-locking primitive of this OS (None when it has neither flock nor msvcrt.locking)."""
    if (fcntl := _optional("fcntl")) is not None:
        return _Flock(fcntl)
    if (msvcrt := _optional("msvcrt")) is not None:
        return _Msvcrt(msvcrt)
    return None


class StoreLock:
    """Exclusive lock on the store, held by one process (and within it one thread) at a time.

    Reentrant in the holding thread. The holder writes its PID into the lock file so that a waiter
    that times out can say who holds it.
    """

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._backend = lock_backend()
        self._fd: int | None = None
        self._depth = 0
        # The OS lock excludes other processes; threads sharing this object are excluded by this reentrant
        # lock (nesting is per thread: a second thread waits instead of joining the first one's depth).
        self._thread_lock = threading.RLock()

    @property
    def backend(self) -> str:
        """``flock``, ``msvcrt`` or ``none`` (then every store change is refused)."""
        return self._backend.name if self._backend is not None else "none"

    def __enter__(self) -> StoreLock:
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise StoreLockedError(f"store {self.path.parent} is locked by another thread of this process",
                                   hint="wait for the other install/rollback to finish")
        if self._depth:
            self._depth += 1
            return self
        try:
            self._lock()
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth = 1
        return self

    def _lock(self) -> None:
        backend = self._backend
        if backend is None:
            raise StoreError("this platform offers no file locking (neither fcntl nor msvcrt); "
                             "refusing to change the store unlocked")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        deadline = time.monotonic() + self.timeout
        try:
            while not backend.try_lock(fd):
                if time.monotonic() >= deadline:
                    holder = read_at(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise StoreLockedError(
                        f"store {self.path.parent} is locked by another process (pid {holder})",
                        hint="wait for the other install/rollback to finish",
                    )
                time.sleep(0.02)
            os.ftruncate(fd, 0)
            write_at(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops a lock taken just before the failure, too
            raise
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
                    if self._backend is not None:
                        self._backend.unlock(fd)
                finally:
                    os.close(fd)
        finally:
            self._thread_lock.release()

    @property
    def held(self) -> bool:
        return self._depth > 0
