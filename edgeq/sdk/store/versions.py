"""The runtime's view of installed model versions: verified file access plus fallback bookkeeping.

Two catalogues implement one small interface. ``StoreCatalog`` wraps the device store
(``edgeq.sdk.store.store.Store``): every byte is read through ``read_verified``/``verified_path``, so a
file whose SHA-256 no longer matches the manifest is refused. ``BundleDirCatalog`` serves one
bundle directory without installing it (development, tests, `edgeq run` on a bundle): it checks
each file's hash itself and has no previous version to fall back to.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeq._fs import hash_bounded, open_regular, read_regular
from edgeq.errors import BundleError, IntegrityError, NotInstalledError
from edgeq.sdk.bundle.archive import ArchiveLimits
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, Manifest, sha256_bytes
from edgeq.sdk.store._state import now_iso

__all__ = ["BundleDirCatalog", "BundleDirVersion", "StoreCatalog", "StoreVersion", "VersionCatalog", "VersionFiles",
           "now_iso"]


class VersionFiles(Protocol):
    """One installed version: its manifest and verified access to its files."""

    model: str
    version: int
    manifest: Manifest

    def read(self, relpath: str) -> bytes: ...

    def path(self, relpath: str) -> Path: ...


class VersionCatalog(Protocol):
    """The versions of one model and what the monitor may do to them."""

    model: str

    def active(self) -> VersionFiles: ...

    def previous_usable(self, exclude: Iterable[int] = ()) -> VersionFiles | None: ...

    def activate(self, version: int, reason: str = "activate") -> None: ...

    def mark_bad(self, version: int, reason: str) -> None: ...

    def record_event(self, event: dict[str, Any]) -> None: ...

    def events(self) -> list[dict[str, Any]]: ...


# -- the device store ------------------------------------------------------------------------------
@dataclass
class StoreVersion:
    store: Any
    model: str
    version: int
    manifest: Manifest

    def read(self, relpath: str) -> bytes:
        return self.store.read_verified(self.model, self.version, relpath)

    def path(self, relpath: str) -> Path:
        return Path(self.store.verified_path(self.model, self.version, relpath))

    def cache_get(self, name: str) -> bytes | None:
        return self.store.read_derived(self.model, self.version, name)

    def cache_put(self, name: str, data: bytes, info: dict[str, Any]) -> None:
        self.store.put_derived(self.model, self.version, name, data, info)


class StoreCatalog:
    """``VersionCatalog`` over ``edgeq.sdk.store.store.Store`` (the contract in issue 6)."""

    def __init__(self, store: Any, model: str) -> None:
        self.store, self.model = store, model

    def _wrap(self, iv: Any) -> StoreVersion:
        return StoreVersion(self.store, self.model, int(iv.version), iv.manifest)

    def active(self) -> VersionFiles:
        return self._wrap(self.store.active(self.model))

    def previous_usable(self, exclude: Iterable[int] = ()) -> VersionFiles | None:
        """The newest kept version below the active one that is neither marked bad nor in ``exclude``."""
        skip = set(exclude)
        active = self.store.active(self.model).version
        for iv in sorted(self.store.versions(self.model), key=lambda v: v.version, reverse=True):
            if iv.version < active and not iv.bad and iv.version not in skip:
                return self._wrap(iv)
        return None

    def activate(self, version: int, reason: str = "activate") -> None:
        self.store.activate(self.model, version, reason=reason)

    def mark_bad(self, version: int, reason: str) -> None:
        self.store.mark_bad(self.model, version, reason)

    def record_event(self, event: dict[str, Any]) -> None:
        self.store.record_event(self.model, event)

    def events(self) -> list[dict[str, Any]]:
        return list(self.store.events(self.model))


# -- a bare bundle directory --------------------------------------------------------------------------
class BundleDirVersion:
    """A bundle directory read in place; each file's SHA-256 is checked against the manifest on access.

    Every read is bounded (by the manifest's size for a file) and refuses anything but a regular file,
    so a FIFO, device or endless file in the directory cannot hang the runtime.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        raw = read_regular(self.root / MANIFEST_NAME, ArchiveLimits().max_manifest_bytes)
        self.manifest = Manifest.from_bytes(raw)
        self.model = self.manifest.model_name
        self.version = self.manifest.bundle_version

    def read(self, relpath: str) -> bytes:
        entry = self.manifest.file(relpath)
        with os.fdopen(open_regular(self.root / entry.path), "rb") as f:
            data = f.read(entry.size + 1)
        if len(data) != entry.size or sha256_bytes(data) != entry.sha256:
            raise IntegrityError(f"{relpath} of {self.model} v{self.version} does not match its manifest hash")
        return data

    def path(self, relpath: str) -> Path:
        entry = self.manifest.file(relpath)
        with os.fdopen(open_regular(self.root / entry.path), "rb") as f:
            size, digest = hash_bounded(f, entry.size)
        if size != entry.size or digest != entry.sha256:
            raise IntegrityError(f"{relpath} of {self.model} v{self.version} does not match its manifest hash")
        return self.root / entry.path


class BundleDirCatalog:
    """One bundle, served without a store: no fallback; events are kept in memory."""

    def __init__(self, root: Path) -> None:
        if not os.path.lexists(Path(root) / MANIFEST_NAME):
            raise BundleError(f"not a bundle directory (no {MANIFEST_NAME}): {root}")
        self._version = BundleDirVersion(Path(root))
        self.model = self._version.model
        self._bad: dict[int, str] = {}
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def active(self) -> VersionFiles:
        return self._version

    def previous_usable(self, exclude: Iterable[int] = ()) -> VersionFiles | None:
        return None

    def activate(self, version: int, reason: str = "activate") -> None:
        if version != self._version.version:
            raise NotInstalledError(f"{self.model} v{version} is not this bundle")

    def mark_bad(self, version: int, reason: str) -> None:
        self._bad[version] = reason

    def record_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(dict(event))

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)
