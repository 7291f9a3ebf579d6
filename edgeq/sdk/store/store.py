"""The device store: verified, versioned, atomically activated bundles, with rollback and a downgrade floor.

Layout (under ``root``)::

    store.json                      config: keep, allow_unsigned (schema-versioned)
    keys/<key_id>.pub               trusted publisher keys (PEM)
    .lock                           OS-locked by the process changing the store (``_lock``)
    staging/                        in-progress installs; anything here after a crash is swept
    models/<model>/state.json       THE pointer: active version, floor, installed versions + digests, bad marks
    models/<model>/versions/<v>/    one installed bundle, never modified after its install
    models/<model>/derived/<v>/     artifacts made on this device for version v (``derived``)
    models/<model>/events.jsonl     install/rollback/health events, one JSON object per line

This module holds the store's config and trust set, its queries and verified reads, and the small
state changes (activate, rollback, mark bad, remove). Installing is ``install`` (plan, then execute),
crash recovery is ``recovery``, the cache of device-built artifacts is ``derived``. Every change runs
under the lock and starts by sweeping what an interrupted one left.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_write_bytes, atomic_write_text, fsync_dir, open_regular, read_regular
from edgeq.errors import ConfigError, IntegrityError, NotInstalledError, StoreError
from edgeq.sdk.bundle.archive import ArchiveLimits
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, Manifest, sha256_bytes
from edgeq.sdk.bundle.signing import KeySource, TrustedKeys, key_id, load_public_key, public_key_pem
from edgeq.sdk.bundle.verify import BundleSource, check_file, load_signed_manifest, verify_files
from edgeq.sdk.device import DeviceInfo, probe
from edgeq.sdk.store import derived, install, recovery
from edgeq.sdk.store._layout import CONFIG_NAME, StoreLayout
from edgeq.sdk.store._lock import StoreLock
from edgeq.sdk.store._state import ModelState, append_event, read_events, read_state, write_state

__all__ = ["CONFIG_NAME", "InstalledVersion", "Store"]

CONFIG_SCHEMA = 1


@dataclass(frozen=True)
class InstalledVersion:
    """One installed, verified-at-install bundle version of a model."""

    model: str
    version: int
    path: Path
    manifest: Manifest
    digest: str
    key_id: str | None
    installed_at: str
    active: bool = False
    bad: bool = False
    bad_reason: str | None = None


class Store:
    """A device store rooted at ``root`` (created when missing).

    ``trusted_keys`` are added to the store's persisted trust set; ``allow_unsigned`` and ``keep``
    (previous versions kept besides the active one), when given, are persisted too; when None the
    persisted values apply (defaults False and 2). ``device`` overrides the probe (tests, fleet tools).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        trusted_keys: Iterable[KeySource] | None = None,
        allow_unsigned: bool | None = None,
        keep: int | None = None,
        *,
        device: DeviceInfo | None = None,
        lock_timeout: float = 60.0,
        limits: ArchiveLimits | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        if keep is not None and (not isinstance(keep, int) or keep < 0):
            raise ConfigError(f"keep must be a non-negative integer, got {keep!r}")
        self._layout = StoreLayout(self.root)
        self._device = device
        self.limits = limits or ArchiveLimits()
        self._lock = StoreLock(self._layout.lock, timeout=lock_timeout)
        # Test seam: called with a step name at every point where a crash is interesting.
        self._fault_hook: Callable[[str], None] | None = None
        created = not self._layout.config.exists()
        if created:
            for d in (self._layout.keys, self._layout.staging, self._layout.models):
                d.mkdir(parents=True, exist_ok=True)
            self._layout.lock.touch()
        cfg = self._read_config()
        new_cfg = dict(cfg)
        if allow_unsigned is not None:
            new_cfg["allow_unsigned"] = bool(allow_unsigned)
        if keep is not None:
            new_cfg["keep"] = keep
        if created or new_cfg != cfg:
            atomic_write_text(self._layout.config, json.dumps(new_cfg, indent=2, sort_keys=True) + "\n")
            fsync_dir(self.root)
        self.allow_unsigned: bool = new_cfg["allow_unsigned"]
        self.keep: int = new_cfg["keep"]
        for k in trusted_keys or ():
            self.trust(k)

    # -- config and trust -----------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        try:
            cfg = json.loads(self._layout.config.read_text())
        except FileNotFoundError:
            return {"schema": CONFIG_SCHEMA, "allow_unsigned": False, "keep": 2}
        except (OSError, ValueError) as exc:
            raise StoreError(f"store config {self._layout.config} is unreadable: {exc}") from exc
        if cfg.get("schema") != CONFIG_SCHEMA:
            raise StoreError(f"store config schema {cfg.get('schema')!r} is not supported", hint="upgrade edgeq")
        return {"schema": CONFIG_SCHEMA, "allow_unsigned": bool(cfg.get("allow_unsigned", False)),
                "keep": int(cfg.get("keep", 2))}

    def trust(self, key: KeySource) -> str:
        """Add a publisher public key to the persisted trust set; returns its key id."""
        pub = load_public_key(key)
        kid = key_id(pub)
        dst = self._layout.keys / f"{kid}.pub"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, public_key_pem(pub))
        return kid

    def trusted_keys(self) -> TrustedKeys:
        keys = TrustedKeys()
        for p in sorted(self._layout.keys.glob("*.pub")):
            keys.add(p)
        return keys

    @property
    def device(self) -> DeviceInfo:
        if self._device is None:
            self._device = probe()
        return self._device

    # -- internals ------------------------------------------------------------------------------
    def _model_dir(self, model: str) -> Path:
        return self._layout.model_dir(model)

    def _state(self, model: str) -> ModelState | None:
        return read_state(self._layout.state_file(model), model)

    def _state_of_installed(self, model: str, version: int) -> ModelState:
        st = self._state(model)
        if st is None or version not in st.installed:
            raise NotInstalledError(f"{model} v{version} is not installed in {self.root}")
        return st

    def _fault(self, step: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(step)

    def _installed(self, model: str, st: ModelState, version: int) -> InstalledVersion:
        rec = st.installed[version]
        path = self._layout.version_dir(model, version)
        try:
            raw = read_regular(path / MANIFEST_NAME, self.limits.max_manifest_bytes)
        except IntegrityError as exc:
            raise IntegrityError(f"{model} v{version}: installed manifest is missing or unsafe: {exc}") from exc
        # The digest recorded at install pins the manifest; its signature was checked then.
        signed = load_signed_manifest(raw, None, TrustedKeys(), allow_unsigned=True)
        if signed.digest != rec["digest"]:
            raise IntegrityError(f"{model} v{version}: installed manifest was changed after install")
        return InstalledVersion(
            model=model, version=version, path=path, manifest=signed.manifest, digest=signed.digest,
            key_id=rec.get("key_id"), installed_at=rec.get("installed_at", ""), active=st.active == version,
            bad=version in st.bad, bad_reason=st.bad.get(version),
        )

    # -- queries --------------------------------------------------------------------------------
    def models(self) -> list[str]:
        d = self._layout.models
        if not d.is_dir():
            return []
        return sorted(m.name for m in d.iterdir()
                      if m.is_dir() and not m.is_symlink() and (st := self._state(m.name)) is not None and st.installed)

    def versions(self, model: str) -> list[InstalledVersion]:
        st = self._state(model)
        if st is None or not st.installed:
            raise NotInstalledError(f"model {model!r} is not installed in {self.root}")
        return [self._installed(model, st, v) for v in sorted(st.installed)]

    def version(self, model: str, version: int) -> InstalledVersion:
        return self._installed(model, self._state_of_installed(model, version), version)

    def active(self, model: str) -> InstalledVersion:
        st = self._state(model)
        if st is None or st.active is None:
            raise NotInstalledError(f"model {model!r} has no active version in {self.root}",
                                    hint="install a bundle with `edgeq install`")
        return self._installed(model, st, st.active)

    def previous_usable(self, model: str) -> InstalledVersion | None:
        """The newest kept version below the active one that is not marked bad (None when none)."""
        st = self._state(model)
        if st is None or st.active is None:
            return None
        for v in sorted(st.installed, reverse=True):
            if v < st.active and v not in st.bad:
                return self._installed(model, st, v)
        return None

    def floor(self, model: str) -> int:
        st = self._state(model)
        return st.floor if st else 0

    def status(self) -> list[dict[str, Any]]:
        """One summary row per installed model (for `edgeq status` / `edgeq list`)."""
        rows = []
        for model in self.models():
            st = self._state(model)
            if st is None:  # removed by another process since models() listed it
                continue
            rows.append({"model": model, "active": st.active, "floor": st.floor,
                         "versions": sorted(st.installed), "bad": dict(st.bad)})
        return rows

    # -- verified reads -------------------------------------------------------------------------
    def read_verified(self, model: str, version: int, relpath: str) -> bytes:
        """Read ``relpath`` of an installed version once, check size + SHA-256, and return those bytes.

        The returned bytes are exactly the bytes hashed: deserialize engines from them, never re-read.
        """
        iv = self.version(model, version)
        entry = iv.manifest.file(relpath)
        with os.fdopen(open_regular(iv.path / entry.path), "rb") as f:
            data = f.read(entry.size + 1)
        if len(data) != entry.size or sha256_bytes(data) != entry.sha256:
            raise IntegrityError(f"{model} v{version}: {relpath} does not match its manifest hash; refusing to load it",
                                 hint="roll back with `edgeq rollback` or reinstall the bundle")
        return data

    def verified_path(self, model: str, version: int, relpath: str) -> Path:
        """Path of ``relpath`` after re-hashing it, for libraries that must open files by path.

        Time-of-check/time-of-use limit: the library re-opens the file after this check, so a process
        able to write into the store between the two could swap content. The store's files are not
        writable by the runtime's user in a hardened deployment; engines use :meth:`read_verified`.
        """
        iv = self.version(model, version)
        entry = iv.manifest.file(relpath)
        check_file(iv.path, entry)
        return iv.path / entry.path

    def verify(self, model: str, version: int) -> InstalledVersion:
        """Re-hash every file of an installed version (and refuse extra files); return it."""
        iv = self.version(model, version)
        verify_files(iv.path, iv.manifest)
        return iv

    # -- events ---------------------------------------------------------------------------------
    def record_event(self, model: str, event: dict[str, Any]) -> None:
        append_event(self._layout.events_file(model), dict(event))

    def events(self, model: str) -> list[dict[str, Any]]:
        return read_events(self._layout.events_file(model))

    # -- crash recovery -------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Sweep what interrupted operations left (staged dirs, unreferenced versions, temp files)."""
        with self._lock:
            return recovery.sweep(self._layout)

    # -- derived artifacts: engines built on this device from a bundle's plan ---------------------
    def put_derived(
        self, model: str, version: int, name: str, data: bytes, info: dict[str, Any] | None = None
    ) -> None:
        """Cache ``data`` (e.g. an engine built from the bundle's plan) with an installed version.

        The file is written atomically under ``models/<m>/derived/<v>/`` and its SHA-256 recorded in the
        committed state, so a crash leaves either no entry or a complete one; it goes when the version goes.
        """
        derived.check_name(name)
        with self._lock:
            recovery.sweep(self._layout)
            derived.put(self._layout, model, version, name, data, info or {})
        self.record_event(model, {"event": "derived_cached", "version": version, "name": name, "size": len(data),
                                  "info": info or {}})

    def read_derived(self, model: str, version: int, name: str) -> bytes | None:
        """The cached artifact's bytes, hash-checked; None when absent or damaged (the caller rebuilds)."""
        return derived.read(self._layout, model, version, name, on_corrupt=lambda: self.record_event(
            model, {"event": "derived_corrupt", "version": version, "name": name}))

    # -- install --------------------------------------------------------------------------------
    def install(
        self, bundle: str | os.PathLike[str], *, allow_downgrade: bool = False, allow_unsigned: bool | None = None
    ) -> InstalledVersion:
        """Verify and install a bundle directory or archive, then make it the active version.

        ``allow_unsigned`` overrides the store's setting for this one install. Raises SignatureError,
        IncompatibleBundleError, DowngradeError, UnsafeArchiveError, IntegrityError or StoreFullError
        with the store unchanged.
        """
        unsigned_ok = self.allow_unsigned if allow_unsigned is None else allow_unsigned
        with self._lock:
            recovery.sweep(self._layout)
            self._fault("locked")
            with BundleSource(bundle, self.limits) as src:
                plan = install.plan(self._layout, src, trusted=self.trusted_keys(), device=lambda: self.device,
                                    allow_unsigned=unsigned_ok, allow_downgrade=allow_downgrade, fault=self._fault)
                st = install.execute(self._layout, plan, src, keep=self.keep, fault=self._fault)
            return self._installed(st.model, st, plan.manifest.bundle_version)

    # -- activation, rollback, marks, removal -----------------------------------------------------
    def activate(self, model: str, version: int, *, force: bool = False, reason: str = "activate") -> InstalledVersion:
        """Atomically make ``version`` the active one after re-hashing all its files.

        A version marked bad is refused unless ``force``. The downgrade floor does not apply: every
        kept version was verified at install and is re-verified here.
        """
        with self._lock:
            recovery.sweep(self._layout)
            st = self._state_of_installed(model, version)
            if version in st.bad and not force:
                raise StoreError(f"{model} v{version} is marked bad ({st.bad[version]}); refusing to activate it")
            verify_files(self._layout.version_dir(model, version), self._installed(model, st, version).manifest)
            previous, st.active = st.active, version
            write_state(self._layout.state_file(model), st)
            with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
                self.record_event(model, {"event": reason, "version": version, "previous": previous})
            return self._installed(model, st, version)

    def rollback(self, model: str, to: int | None = None) -> InstalledVersion:
        """Switch to ``to`` (default: the newest usable version below the active one), re-verified first."""
        if to is None:
            prev = self.previous_usable(model)
            if prev is None:
                raise StoreError(f"{model} has no kept version to roll back to",
                                 hint="`edgeq list` shows the kept versions")
            to = prev.version
        return self.activate(model, to, reason="rollback")

    def mark_bad(self, model: str, version: int, reason: str) -> None:
        """Mark a version bad: it is never chosen by previous_usable/rollback again (and pruned first)."""
        with self._lock:
            st = self._state_of_installed(model, version)
            st.bad[version] = reason
            write_state(self._layout.state_file(model), st)
            with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
                self.record_event(model, {"event": "mark_bad", "version": version, "reason": reason})

    def remove(self, model: str, version: int | None = None) -> list[int]:
        """Remove one kept version (not the active one) or, with ``version=None``, the whole model.

        The downgrade floor survives removal: the state file stays as a tombstone.
        """
        with self._lock:
            recovery.sweep(self._layout)
            st = self._state(model)
            if st is None or not st.installed:
                raise NotInstalledError(f"model {model!r} is not installed in {self.root}")
            if version is None:
                gone = sorted(st.installed)
                st.installed, st.bad, st.active = {}, {}, None
            else:
                if version not in st.installed:
                    raise NotInstalledError(f"{model} v{version} is not installed in {self.root}")
                if version == st.active:
                    raise StoreError(f"{model} v{version} is the active version",
                                     hint="roll back first, or remove the whole model")
                gone = [version]
                st.installed.pop(version)
                st.bad.pop(version, None)
            write_state(self._layout.state_file(model), st)
            for v in gone:
                self._layout.discard(self._layout.version_dir(model, v))
            with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
                self.record_event(model, {"event": "remove", "versions": gone})
            return gone
