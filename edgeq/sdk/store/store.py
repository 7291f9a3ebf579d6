"""The device store: verified, versioned, atomically activated bundles, with rollback and a downgrade floor.

Layout (under ``root``)::

    store.json                      config: keep, allow_unsigned (schema-versioned)
    keys/<key_id>.pub               trusted publisher keys (PEM)
    .lock                           flock'ed by the process changing the store
    staging/                        in-progress installs; anything here after a crash is swept
    models/<model>/state.json       THE pointer: active version, floor, installed versions + digests, bad marks
    models/<model>/versions/<v>/    one installed bundle, never modified after its install
    models/<model>/events.jsonl     install/rollback/health events, one JSON object per line

Install (under the lock): verify signature → compatibility with this device → downgrade floor →
extract/copy into ``staging/`` (safe extraction) → hash every file → fsync files and dirs → rename the
staged dir to ``versions/<v>`` → atomically replace ``state.json`` (the commit point) → fsync parent →
prune old versions. A crash before the commit leaves the old state, and at most a staged or
unreferenced directory that no reader looks at and the next locked operation sweeps away.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq._fs import TMP_PREFIX, atomic_write_bytes, atomic_write_text, fsync_dir, fsync_tree
from edgeq.errors import (
    ConfigError,
    DowngradeError,
    IntegrityError,
    NotInstalledError,
    StoreError,
)
from edgeq.sdk.store._state import (
    ModelState,
    StoreLock,
    append_event,
    now_iso,
    read_events,
    read_state,
    write_state,
)
from edgeq.sdk.bundle.archive import ArchiveLimits
from edgeq.sdk.bundle.verify import BundleSource, check_file, load_signed_manifest, open_regular, verify_files
from edgeq.sdk.device import DeviceInfo, check_compatible, probe
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, Manifest, sha256_bytes
from edgeq.sdk.bundle.signing import KeySource, TrustedKeys, key_id, load_public_key, public_key_pem

CONFIG_NAME = "store.json"
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
        self._device = device
        self.limits = limits or ArchiveLimits()
        self._lock = StoreLock(self.root / ".lock", timeout=lock_timeout)
        # Test seam: called with a step name at every point where a crash is interesting.
        self._fault_hook: Callable[[str], None] | None = None
        created = not (self.root / CONFIG_NAME).exists()
        if created:
            for d in ("keys", "staging", "models"):
                (self.root / d).mkdir(parents=True, exist_ok=True)
            (self.root / ".lock").touch()
        cfg = self._read_config()
        new_cfg = dict(cfg)
        if allow_unsigned is not None:
            new_cfg["allow_unsigned"] = bool(allow_unsigned)
        if keep is not None:
            new_cfg["keep"] = keep
        if created or new_cfg != cfg:
            atomic_write_text(self.root / CONFIG_NAME, _json(new_cfg))
            fsync_dir(self.root)
        self.allow_unsigned: bool = new_cfg["allow_unsigned"]
        self.keep: int = new_cfg["keep"]
        for k in trusted_keys or ():
            self.trust(k)

    # -- config and trust -----------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        try:
            cfg = json.loads((self.root / CONFIG_NAME).read_text())
        except FileNotFoundError:
            return {"schema": CONFIG_SCHEMA, "allow_unsigned": False, "keep": 2}
        except (OSError, ValueError) as exc:
            raise StoreError(f"store config {self.root / CONFIG_NAME} is unreadable: {exc}") from exc
        if cfg.get("schema") != CONFIG_SCHEMA:
            raise StoreError(f"store config schema {cfg.get('schema')!r} is not supported", hint="upgrade edgeq")
        return {"schema": CONFIG_SCHEMA, "allow_unsigned": bool(cfg.get("allow_unsigned", False)),
                "keep": int(cfg.get("keep", 2))}

    def trust(self, key: KeySource) -> str:
        """Add a publisher public key to the persisted trust set; returns its key id."""
        pub = load_public_key(key)
        kid = key_id(pub)
        dst = self.root / "keys" / f"{kid}.pub"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, public_key_pem(pub))
        return kid

    def trusted_keys(self) -> TrustedKeys:
        keys = TrustedKeys()
        for p in sorted((self.root / "keys").glob("*.pub")):
            keys.add(p)
        return keys

    @property
    def device(self) -> DeviceInfo:
        if self._device is None:
            self._device = probe()
        return self._device

    # -- paths ----------------------------------------------------------------------------------
    def _model_dir(self, model: str) -> Path:
        if not model or "/" in model or model.startswith(".") or "\x00" in model:
            raise ConfigError(f"invalid model name {model!r}")
        return self.root / "models" / model

    def _state(self, model: str) -> ModelState | None:
        return read_state(self._model_dir(model) / "state.json", model)

    def _fault(self, step: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(step)

    # -- queries --------------------------------------------------------------------------------
    def models(self) -> list[str]:
        d = self.root / "models"
        if not d.is_dir():
            return []
        return sorted(m.name for m in d.iterdir()
                      if m.is_dir() and not m.is_symlink() and (st := self._state(m.name)) is not None and st.installed)

    def _installed(self, model: str, st: ModelState, version: int) -> InstalledVersion:
        rec = st.installed[version]
        path = self._model_dir(model) / "versions" / str(version)
        try:
            with os.fdopen(open_regular(path / MANIFEST_NAME), "rb") as f:
                raw = f.read(self.limits.max_manifest_bytes + 1)
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

    def versions(self, model: str) -> list[InstalledVersion]:
        st = self._state(model)
        if st is None or not st.installed:
            raise NotInstalledError(f"model {model!r} is not installed in {self.root}")
        return [self._installed(model, st, v) for v in sorted(st.installed)]

    def version(self, model: str, version: int) -> InstalledVersion:
        st = self._state(model)
        if st is None or version not in st.installed:
            raise NotInstalledError(f"{model} v{version} is not installed in {self.root}")
        return self._installed(model, st, version)

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
        append_event(self._model_dir(model) / "events.jsonl", dict(event))

    def events(self, model: str) -> list[dict[str, Any]]:
        return read_events(self._model_dir(model) / "events.jsonl")

    # -- crash recovery -------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Sweep what interrupted operations left (staged dirs, unreferenced versions, temp files)."""
        with self._lock:
            return self._recover()

    def _recover(self) -> list[str]:
        removed: list[str] = []
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        for p in staging.iterdir():
            _rm(p)
            removed.append(str(p.relative_to(self.root)))
        for p in self.root.glob(TMP_PREFIX + "*"):
            _rm(p)
            removed.append(p.name)
        models = self.root / "models"
        for mdir in models.iterdir() if models.is_dir() else ():
            if not mdir.is_dir() or mdir.is_symlink():  # a stray file must not stop the store working
                continue
            st = read_state(mdir / "state.json", mdir.name)
            installed = st.installed if st else {}
            for p in mdir.glob(TMP_PREFIX + "*"):
                _rm(p)
                removed.append(str(p.relative_to(self.root)))
            vdir = mdir / "versions"
            for p in vdir.iterdir() if vdir.is_dir() else ():
                if not p.name.isdigit() or int(p.name) not in installed:
                    self._discard(p)
                    removed.append(str(p.relative_to(self.root)))
            self._sweep_derived(mdir, installed, removed)
            if st is None:  # a first install that never committed: leave no empty model dir behind
                for p in (vdir, mdir):
                    if p.is_dir() and not any(p.iterdir()):
                        p.rmdir()
        if removed:
            fsync_dir(staging)
        return removed

    def _discard(self, path: Path) -> None:
        # Rename out of sight first so a half-deleted version is never visible under versions/.
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.root / "staging"))
        os.replace(path, trash / "x")
        fsync_dir(path.parent)
        shutil.rmtree(trash, ignore_errors=True)

    # -- derived artifacts: engines built on this device from a bundle's plan ---------------------
    def put_derived(
        self, model: str, version: int, name: str, data: bytes, info: dict[str, Any] | None = None
    ) -> None:
        """Cache ``data`` (e.g. an engine built from the bundle's plan) with an installed version.

        The file is written atomically under ``models/<m>/derived/<v>/`` and its SHA-256 recorded in the
        committed state, so a crash leaves either no entry or a complete one; it goes when the version goes.
        """
        _check_derived_name(name)
        with self._lock:
            self._recover()
            st = self._state(model)
            if st is None or version not in st.installed:
                raise NotInstalledError(f"{model} v{version} is not installed in {self.root}")
            d = self._model_dir(model) / "derived" / str(version)
            _mkdir_durable(d, self.root)
            atomic_write_bytes(d / name, data)
            st.installed[version].setdefault("derived", {})[name] = {
                "sha256": sha256_bytes(data), "size": len(data), "created_at": now_iso(), "info": info or {},
            }
            write_state(self._model_dir(model) / "state.json", st)
        self.record_event(model, {"event": "derived_cached", "version": version, "name": name, "size": len(data),
                                  "info": info or {}})

    def read_derived(self, model: str, version: int, name: str) -> bytes | None:
        """The cached artifact's bytes, hash-checked; None when absent or damaged (the caller rebuilds)."""
        _check_derived_name(name)
        st = self._state(model)
        rec = (st.installed.get(version, {}) if st else {}).get("derived", {}).get(name)
        if rec is None:
            return None
        try:
            with os.fdopen(open_regular(self._model_dir(model) / "derived" / str(version) / name), "rb") as f:
                data = f.read(int(rec["size"]) + 1)
        except (IntegrityError, OSError):
            data = b""
        if len(data) != rec["size"] or sha256_bytes(data) != rec["sha256"]:
            with contextlib.suppress(OSError):
                self.record_event(model, {"event": "derived_corrupt", "version": version, "name": name})
            return None
        return data

    def _sweep_derived(self, mdir: Path, installed: dict[int, dict[str, Any]], removed: list[str]) -> None:
        """Drop derived files of versions no longer installed, and files their state never recorded."""
        ddir = mdir / "derived"
        for p in ddir.iterdir() if ddir.is_dir() else ():
            v = int(p.name) if p.name.isdigit() else None
            if v is None or v not in installed or not p.is_dir():
                self._discard(p)
                removed.append(str(p.relative_to(self.root)))
                continue
            known = set(installed[v].get("derived", {}))
            for f in p.iterdir():
                if f.name not in known:
                    _rm(f)
                    removed.append(str(f.relative_to(self.root)))

    # -- install --------------------------------------------------------------------------------
    def install(
        self, bundle: str | os.PathLike[str], *, allow_downgrade: bool = False, allow_unsigned: bool | None = None
    ) -> InstalledVersion:
        """Verify and install a bundle directory or archive, then make it the active version.

        ``allow_unsigned`` overrides the store's setting for this one install. Raises SignatureError,
        IncompatibleBundleError, DowngradeError, UnsafeArchiveError or IntegrityError with the store
        unchanged.
        """
        unsigned_ok = self.allow_unsigned if allow_unsigned is None else allow_unsigned
        with self._lock:
            self._recover()
            self._fault("locked")
            with BundleSource(bundle, self.limits) as src:
                signed = load_signed_manifest(src.manifest_bytes, src.signature_bytes, self.trusted_keys(),
                                              allow_unsigned=unsigned_ok)
                m = signed.manifest
                self._fault("signature_ok")
                check_compatible(m, self.device)
                st = self._state(m.model_name) or ModelState(model=m.model_name)
                if m.bundle_version in st.installed:
                    raise StoreError(f"{m.model_name} v{m.bundle_version} is already installed",
                                     hint="activate it with `edgeq rollback --to`, or publish a new version")
                if m.bundle_version < st.floor and not allow_downgrade:
                    raise DowngradeError(
                        f"{m.model_name} v{m.bundle_version} is below the store's floor v{st.floor} (downgrade)",
                        hint="pass --allow-downgrade to install an older version on purpose",
                    )
                staged = Path(tempfile.mkdtemp(prefix=f"{m.model_name}-{m.bundle_version}-", dir=self.root / "staging"))
                try:
                    self._fault("staging_created")
                    src.materialize(staged, m)
                    self._fault("extracted")
                    for entry in m.files:
                        check_file(staged, entry)
                        self._fault("hashed_file")
                    verify_files(staged, m)  # also refuses anything not listed
                    fsync_tree(staged)
                    self._fault("fsynced")
                    vdir = self._model_dir(m.model_name) / "versions"
                    _mkdir_durable(vdir, self.root)
                    final = vdir / str(m.bundle_version)
                    os.replace(staged, final)
                    fsync_dir(vdir)
                    self._fault("renamed")
                except BaseException:
                    shutil.rmtree(staged, ignore_errors=True)
                    raise
            previous = st.active
            st.installed[m.bundle_version] = {"digest": signed.digest, "key_id": signed.key_id,
                                             "installed_at": now_iso()}
            st.active = m.bundle_version
            st.floor = max(st.floor, m.bundle_version)
            pruned = self._prune(st)
            write_state(self._model_dir(m.model_name) / "state.json", st)  # commit point
            self._fault("committed")
            for v in pruned:
                self._discard(vdir / str(v))
                self._fault("pruned")
            with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
                self.record_event(m.model_name, {"event": "install", "version": m.bundle_version,
                                                 "previous": previous, "key_id": signed.key_id, "pruned": pruned})
            return self._installed(m.model_name, st, m.bundle_version)

    def _prune(self, st: ModelState) -> list[int]:
        """Drop all but the active version and ``keep`` others (bad ones go first, then the oldest)."""
        others = sorted((v for v in st.installed if v != st.active), key=lambda v: (v not in st.bad, v), reverse=True)
        drop = others[self.keep:]
        for v in drop:
            st.installed.pop(v)
            st.bad.pop(v, None)
        return sorted(drop)

    # -- activation, rollback, marks, removal -----------------------------------------------------
    def activate(self, model: str, version: int, *, force: bool = False, reason: str = "activate") -> InstalledVersion:
        """Atomically make ``version`` the active one after re-hashing all its files.

        A version marked bad is refused unless ``force``. The downgrade floor does not apply: every
        kept version was verified at install and is re-verified here.
        """
        with self._lock:
            self._recover()
            st = self._state(model)
            if st is None or version not in st.installed:
                raise NotInstalledError(f"{model} v{version} is not installed in {self.root}")
            if version in st.bad and not force:
                raise StoreError(f"{model} v{version} is marked bad ({st.bad[version]}); refusing to activate it")
            verify_files(self._model_dir(model) / "versions" / str(version), self._installed(model, st, version).manifest)
            previous, st.active = st.active, version
            write_state(self._model_dir(model) / "state.json", st)
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
            st = self._state(model)
            if st is None or version not in st.installed:
                raise NotInstalledError(f"{model} v{version} is not installed in {self.root}")
            st.bad[version] = reason
            write_state(self._model_dir(model) / "state.json", st)
            with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
                self.record_event(model, {"event": "mark_bad", "version": version, "reason": reason})

    def remove(self, model: str, version: int | None = None) -> list[int]:
        """Remove one kept version (not the active one) or, with ``version=None``, the whole model.

        The downgrade floor survives removal: the state file stays as a tombstone.
        """
        with self._lock:
            self._recover()
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
            write_state(self._model_dir(model) / "state.json", st)
            for v in gone:
                self._discard(self._model_dir(model) / "versions" / str(v))
            with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
                self.record_event(model, {"event": "remove", "versions": gone})
            return gone

    def status(self) -> list[dict[str, Any]]:
        """One summary row per installed model (for `edgeq status` / `edgeq list`)."""
        rows = []
        for model in self.models():
            st = self._state(model)
            if st is None:  # removed by another process since models() listed it
                continue
            rows.append({"model": model, "active": st.active, "floor": st.floor,
                         "versions": sorted(st.installed), "bad": {v: r for v, r in st.bad.items()}})
        return rows


def _mkdir_durable(path: Path, root: Path) -> None:
    """mkdir -p, then fsync every directory whose entry list changed, so a new model or version directory
    survives a power cut (a kill -9 cannot show this: the page cache outlives the process)."""
    missing = []
    p = path
    while not p.exists() and p != root:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        fsync_dir(d.parent)


def _check_derived_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != os.path.basename(name):
        raise ConfigError(f"invalid derived artifact name {name!r}")


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"

