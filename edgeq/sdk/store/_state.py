"""Small persistent pieces of the device store: per-model state files and event logs.

The store's one source of truth per model is ``models/<model>/state.json`` (active version, downgrade
floor, installed versions with their manifest digests, bad marks). It is only ever replaced whole by
write-temp → fsync → rename → fsync-dir, so a reader sees the old or the new state, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_write_text, read_at
from edgeq.errors import StoreError

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


def append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one JSON line. A line torn by a crash is terminated first so it cannot swallow this one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"ts": now_iso(), **event}, sort_keys=True, default=str) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and read_at(fd, 1, size - 1) != b"\n":
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
