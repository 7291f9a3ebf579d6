"""The store's cache of artifacts made on the device for an installed version (an engine built from its plan).

Files live in ``models/<m>/derived/<v>/<name>``; their size and SHA-256 are recorded in the model's
committed state, under the version's record, so a crash leaves either no entry or a complete one, and
they go when the version goes. The :class:`~edgeq.sdk.store.store.Store` takes the lock and runs
recovery before calling :func:`put`; reads need no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_write_bytes, mkdir_durable, open_regular
from edgeq.errors import ConfigError, IntegrityError, NotInstalledError
from edgeq.sdk.bundle.manifest import sha256_bytes
from edgeq.sdk.store._layout import StoreLayout, rm
from edgeq.sdk.store._state import now_iso, read_state, write_state


def check_name(name: str) -> None:
    """A derived artifact's name is one plain file name (it is joined to a store path)."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != os.path.basename(name):
        raise ConfigError(f"invalid derived artifact name {name!r}")


def put(layout: StoreLayout, model: str, version: int, name: str, data: bytes, info: dict[str, Any]) -> None:
    """Write ``data`` atomically, then commit its record into the state (under the caller's lock)."""
    check_name(name)
    st = read_state(layout.state_file(model), model)
    if st is None or version not in st.installed:
        raise NotInstalledError(f"{model} v{version} is not installed in {layout.root}")
    d = layout.derived_dir(model, version)
    mkdir_durable(d, layout.root)
    atomic_write_bytes(d / name, data)
    st.installed[version].setdefault("derived", {})[name] = {
        "sha256": sha256_bytes(data), "size": len(data), "created_at": now_iso(), "info": info,
    }
    write_state(layout.state_file(model), st)  # commit point


def read(layout: StoreLayout, model: str, version: int, name: str,
         on_corrupt: Callable[[], None]) -> bytes | None:
    """The artifact's bytes, hash-checked; None when absent or damaged (``on_corrupt`` is told; the caller
    rebuilds). The read is bounded by the recorded size and refuses anything but a regular file."""
    check_name(name)
    st = read_state(layout.state_file(model), model)
    rec = (st.installed.get(version, {}) if st else {}).get("derived", {}).get(name)
    if rec is None:
        return None
    try:
        with os.fdopen(open_regular(layout.derived_dir(model, version) / name), "rb") as f:
            data = f.read(int(rec["size"]) + 1)
    except (IntegrityError, OSError):
        data = b""
    if len(data) != rec["size"] or sha256_bytes(data) != rec["sha256"]:
        with contextlib.suppress(OSError):
            on_corrupt()
        return None
    return data


def sweep(layout: StoreLayout, mdir: Path, installed: dict[int, dict[str, Any]], removed: list[str]) -> None:
    """Drop derived files of versions no longer installed, and files their state never recorded."""
    ddir = mdir / "derived"
    for p in ddir.iterdir() if ddir.is_dir() else ():
        v = int(p.name) if p.name.isdigit() else None
        if v is None or v not in installed or not p.is_dir():
            layout.discard(p)
            removed.append(str(p.relative_to(layout.root)))
            continue
        known = set(installed[v].get("derived", {}))
        for f in p.iterdir():
            if f.name not in known:
                rm(f)
                removed.append(str(f.relative_to(layout.root)))
