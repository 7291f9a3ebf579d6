"""Small persistent pieces of the device store: the lock, per-model state files and event logs.

The store's one source of truth per model is ``models/<model>/state.json`` (active version, downgrade
floor, installed versions with their manifest digests, bad marks). It is only ever replaced whole by
write-temp → fsync → rename → fsync-dir, so a reader sees the old or the new state, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_write_text
from edgeq.errors import StoreError, StoreLockedError

STATE_SCHEMA = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class ModelState:
    """What the store knows about one model (mutable working copy; persisted with :func:`write_state`)."""

    model: str
    active: int | None = None
    floor: int = 0
    installed: dict[int, dict[str, Any]] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "schema": STATE_SCHEMA, "model": self.model, "active": self.active, "floor": self.floor,
            "installed": {str(v): rec for v, rec in sorted(self.installed.items())},
            "bad": {str(v): r for v, r in sorted(self.bad.items())},
        }, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, model: str) -> ModelState:
        try:
            d = json.loads(text)
            if d.get("schema") != STATE_SCHEMA or d.get("model") != model:
                raise ValueError(f"schema {d.get('schema')!r} / model {d.get('model')!r}")
            return cls(
                model=model, active=d["active"], floor=int(d["floor"]),
                installed={int(v): dict(rec) for v, rec in d["installed"].items()},
                bad={int(v): str(r) for v, r in d.get("bad", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"store state for {model!r} is unreadable: {exc}",
                             hint="the store directory was edited by hand; reinstall the model") from exc


def read_state(path: Path, model: str) -> ModelState | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return ModelState.from_json(text, model)


def write_state(path: Path, state: ModelState) -> None:
    """Atomically replace the state file: this rename is the commit point of every store change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, state.to_json())


class StoreLock:
    """Exclusive lock on the store, held by one process at a time.

    ``flock`` on ``<root>/.lock``: the kernel drops the lock when its holder dies (kill -9 included), so
    a lock file left by a dead process is stale by construction and the next locker simply takes it
    — no PID-liveness guess and no PID-reuse race. The holder writes its PID into the file so a
    waiter that times out can say who holds it.
    """

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        # flock excludes other processes; threads sharing this object are excluded by this reentrant lock
        # (nesting is per thread: a second thread waits instead of joining the first one's depth).
        self._thread_lock = threading.RLock()

    def __enter__(self) -> StoreLock:
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise StoreLockedError(f"store {self.path.parent} is locked by another thread of this process",
                                   hint="wait for the other install/rollback to finish")
        if self._depth:
            self._depth += 1
            return self
        try:
            self._flock()
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth = 1
        return self

    def _flock(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise StoreLockedError(
                        f"store {self.path.parent} is locked by another process (pid {holder})",
                        hint="wait for the other install/rollback to finish",
                    ) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._thread_lock.release()

    @property
    def held(self) -> bool:
        return self._depth > 0


def append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one JSON line. A line torn by a crash is terminated first so it cannot swallow this one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"ts": now_iso(), **event}, sort_keys=True, default=str) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                out.append(obj)
    return out
