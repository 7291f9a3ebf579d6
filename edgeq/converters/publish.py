"""Publish bundles to a TUF repository (python-tuf metadata API) that any static HTTP server can serve.

Repository layout (``repo_dir``)::

    keys/<role>.key            ed25519 private keys of root/targets/snapshot/timestamp (mode 0600; NEVER serve)
    public/                    serve exactly this directory
      metadata/N.root.json     root history (1.root.json is what devices bootstrap trust from)
      metadata/N.targets.json  signed list of targets (bundle archives + index.json), consistent snapshots
      metadata/N.snapshot.json, metadata/timestamp.json
      targets/<sha256>.index.json                              latest version of every model
      targets/bundles/<model>/<sha256>.<model>-v<N>.edgeq.tar  the bundle archives

Every publish bumps targets → snapshot → timestamp with fresh expiries. The timestamp's short expiry is
the freeze-attack bound: re-run ``refresh`` (``edgeq publish --repo DIR --refresh``) more often than it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_write_bytes, fsync_dir
from edgeq.errors import ConfigError, OutputError, UpdateError
from edgeq.converters.pack import pack
from edgeq.converters.signing import generate_keypair, load_private_key
from edgeq.sdk.bundle.archive import ARCHIVE_SUFFIX
from edgeq.sdk.bundle.verify import BundleSource, SignedManifest, verify_bundle
from edgeq.sdk.bundle.manifest import sha256_file
from edgeq.sdk.bundle.signing import TrustedKeys

ROLES = ("root", "targets", "snapshot", "timestamp")
INDEX_TARGET = "index.json"


@dataclass(frozen=True)
class TufExpiry:
    """How long each role's metadata stays valid after it is signed (timestamp: the freeze bound)."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def expires(self, role: str) -> datetime:
        return (datetime.now(UTC) + getattr(self, role)).replace(microsecond=0)


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    target: str
    targets_version: int
    root_path: Path  # the trust anchor devices bootstrap from


class _Repo:
    """The repository's current metadata, loaded from ``public/metadata``, with the role signers."""

    def __init__(self, repo_dir: Path, keys_dir: Path | None) -> None:
        from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

        self.dir = repo_dir
        self.meta_dir = repo_dir / "public" / "metadata"
        self.targets_dir = repo_dir / "public" / "targets"
        self.keys_dir = keys_dir or repo_dir / "keys"
        self.signers = {role: self._signer(role) for role in ROLES}
        if not (self.meta_dir / "1.root.json").exists():
            raise UpdateError(f"{repo_dir} is not an edgeq TUF repository (no public/metadata/1.root.json)")
        versions = sorted(int(p.name.split(".")[0]) for p in self.meta_dir.glob("*.root.json"))
        self.root: Metadata[Root] = Metadata.from_file(str(self.meta_dir / f"{versions[-1]}.root.json"))
        self.timestamp: Metadata[Timestamp] = Metadata.from_file(str(self.meta_dir / "timestamp.json"))
        snap_v = self.timestamp.signed.snapshot_meta.version
        self.snapshot: Metadata[Snapshot] = Metadata.from_file(str(self.meta_dir / f"{snap_v}.snapshot.json"))
        tgt_v = self.snapshot.signed.meta["targets.json"].version
        self.targets: Metadata[Targets] = Metadata.from_file(str(self.meta_dir / f"{tgt_v}.targets.json"))

    def _signer(self, role: str) -> Any:
        from securesystemslib.signer import CryptoSigner

        path = self.keys_dir / f"{role}.key"
        if not path.exists():
            raise ConfigError(f"TUF {role} key not found: {path}", hint="pass --keys DIR holding root/targets/snapshot/timestamp .key")
        return CryptoSigner(load_private_key(path))

    def write(self, md: Any, name: str) -> bytes:
        """Write ``md`` atomically as ``name`` and return the bytes written (what the next role hashes)."""
        from tuf.api.serialization.json import JSONSerializer

        data = md.to_bytes(JSONSerializer(compact=False))
        atomic_write_bytes(self.meta_dir / name, data)
        return data

    def _resign(self, md: Any, role: str, expiry: TufExpiry, name: str | None = None) -> bytes:
        """Bump ``role``'s version and expiry, sign it afresh, write it (as ``<version>.<role>.json`` by default)."""
        md.signed.version += 1
        md.signed.expires = expiry.expires(role)
        md.signatures.clear()
        md.sign(self.signers[role])
        return self.write(md, name or f"{md.signed.version}.{role}.json")

    def commit(self, expiry: TufExpiry, *, bump_targets: bool) -> None:
        """Re-sign targets (optionally), snapshot and timestamp in dependency order, timestamp last."""
        from tuf.api.metadata import MetaFile

        t = self.targets
        if bump_targets:
            targets_bytes = self._resign(t, "targets", expiry)
        else:
            targets_bytes = (self.meta_dir / f"{t.signed.version}.targets.json").read_bytes()
        s = self.snapshot
        s.signed.meta["targets.json"] = MetaFile.from_data(t.signed.version, targets_bytes, ["sha256"])
        snap_bytes = self._resign(s, "snapshot", expiry)
        ts = self.timestamp
        ts.signed.snapshot_meta = MetaFile.from_data(s.signed.version, snap_bytes, ["sha256"])
        # timestamp.json is the one file replaced in place: its rename is the publish's commit point.
        self._resign(ts, "timestamp", expiry, "timestamp.json")


def init_repo(repo_dir: str | os.PathLike[str], *, keys_dir: str | os.PathLike[str] | None = None,
              expiry: TufExpiry = TufExpiry()) -> Path:
    """Create an empty repository (generating role keys unless ``keys_dir`` already holds them)."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
    from tuf.api.serialization.json import JSONSerializer

    repo = Path(repo_dir).absolute()
    meta = repo / "public" / "metadata"
    if (meta / "1.root.json").exists():
        raise OutputError(f"TUF repository already initialised: {repo}")
    kdir = Path(keys_dir) if keys_dir else repo / "keys"
    kdir.mkdir(parents=True, exist_ok=True)
    os.chmod(kdir, 0o700)
    for role in ROLES:
        if not (kdir / f"{role}.key").exists():
            generate_keypair(kdir, role)
    signers = {role: CryptoSigner(load_private_key(kdir / f"{role}.key")) for role in ROLES}
    root = Root(expires=expiry.expires("root"), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    targets = Targets(expires=expiry.expires("targets"))
    mds = {"root": Metadata(root), "targets": Metadata(targets)}
    (repo / "public" / "targets").mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    ser = JSONSerializer(compact=False)
    for role in ("root", "targets"):
        mds[role].sign(signers[role])
    atomic_write_bytes(meta / "1.targets.json", mds["targets"].to_bytes(ser))
    snapshot = Snapshot(expires=expiry.expires("snapshot"))
    snapshot.meta["targets.json"] = MetaFile.from_data(1, (meta / "1.targets.json").read_bytes(), ["sha256"])
    snap_md = Metadata(snapshot)
    snap_md.sign(signers["snapshot"])
    atomic_write_bytes(meta / "1.snapshot.json", snap_md.to_bytes(ser))
    ts = Timestamp(expires=expiry.expires("timestamp"),
                   snapshot_meta=MetaFile.from_data(1, (meta / "1.snapshot.json").read_bytes(), ["sha256"]))
    ts_md = Metadata(ts)
    ts_md.sign(signers["timestamp"])
    atomic_write_bytes(meta / "timestamp.json", ts_md.to_bytes(ser))
    # root last: a repository without 1.root.json is "not initialised" and can be re-initialised.
    root_bytes = mds["root"].to_bytes(ser)
    atomic_write_bytes(meta / "root.json", root_bytes)
    atomic_write_bytes(meta / "1.root.json", root_bytes)
    return meta / "1.root.json"


def _add_target(repo: _Repo, rel: str, src: Path, custom: dict[str, Any] | None = None) -> None:
    """Copy ``src`` into public/targets as ``<sha256>.<name>`` (consistent snapshot) and list it."""
    from tuf.api.metadata import TargetFile

    tf = TargetFile.from_file(rel, str(src), ["sha256"])
    if custom:
        tf.unrecognized_fields["custom"] = custom
    dirname, _, base = rel.rpartition("/")
    dst = repo.targets_dir / dirname / f"{tf.hashes['sha256']}.{base}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        tmp = dst.with_name(f".tmp-{os.getpid()}-{base}")
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    repo.targets.signed.targets[rel] = tf


def read_index(repo: _Repo) -> dict[str, Any]:
    tf = repo.targets.signed.targets.get(INDEX_TARGET)
    if tf is None:
        return {"schema": 1, "models": {}}
    return json.loads((repo.targets_dir / f"{tf.hashes['sha256']}.{INDEX_TARGET}").read_text())


def publish(
    bundle: str | os.PathLike[str],
    repo_dir: str | os.PathLike[str],
    *,
    keys_dir: str | os.PathLike[str] | None = None,
    expiry: TufExpiry = TufExpiry(),
    trusted_keys: TrustedKeys | None = None,
    allow_unsigned: bool = False,
) -> PublishResult:
    """Add a bundle (directory or archive) to the TUF repository at ``repo_dir`` (initialised if new).

    The bundle is fully verified first (signature against ``trusted_keys`` when given — otherwise
    only that a signature is present — plus every file hash). A version not above the model's
    latest published version is refused: devices would refuse it anyway.
    """
    repo_path = Path(repo_dir).absolute()
    with tempfile.TemporaryDirectory(prefix=".edgeq-publish-") as tmp:
        src = Path(bundle)
        archive = src if src.is_file() else pack(src, Path(tmp) / f"bundle{ARCHIVE_SUFFIX}")
        # Verify before anything is written: a refused bundle must not leave a new repository behind.
        signed = _verify_for_publish(archive, trusted_keys, allow_unsigned)
        if not (repo_path / "public" / "metadata" / "1.root.json").exists():
            init_repo(repo_path, keys_dir=keys_dir, expiry=expiry)
        m = signed.manifest
        repo = _Repo(repo_path, Path(keys_dir) if keys_dir else None)
        index = read_index(repo)
        latest = index["models"].get(m.model_name, {}).get("version", 0)
        if m.bundle_version <= latest:
            raise UpdateError(f"{m.model_name} v{m.bundle_version} is not above the published v{latest}",
                              hint="bump the bundle version")
        rel = f"bundles/{m.model_name}/{m.model_name}-v{m.bundle_version}{ARCHIVE_SUFFIX}"
        _add_target(repo, rel, archive, {"edgeq": {"model": m.model_name, "version": m.bundle_version,
                                                   "manifest_digest": signed.digest}})
        index["models"][m.model_name] = {"version": m.bundle_version, "target": rel,
                                         "sha256": sha256_file(archive), "precision": m.precision,
                                         "target_profile": m.target}
        index_file = Path(tmp) / INDEX_TARGET
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        _add_target(repo, INDEX_TARGET, index_file)
        repo.commit(expiry, bump_targets=True)
    return PublishResult(m.model_name, m.bundle_version, rel, repo.targets.signed.version,
                         repo.meta_dir / "1.root.json")


def _verify_for_publish(archive: Path, trusted: TrustedKeys | None, allow_unsigned: bool) -> SignedManifest:
    with BundleSource(archive) as src:
        has_sig = src.signature_bytes is not None
    if not has_sig and not allow_unsigned:
        raise UpdateError("refusing to publish an unsigned bundle", hint="sign it, or pass --allow-unsigned")
    if trusted is not None and len(trusted):
        return verify_bundle(archive, trusted, allow_unsigned=allow_unsigned)
    # Without the publisher's public key the signature is left to the devices' trust sets;
    # every file hash is still checked here so a corrupt bundle is never published.
    return verify_bundle(archive, None, allow_unsigned=True, check_signature=False)


def refresh(repo_dir: str | os.PathLike[str], *, keys_dir: str | os.PathLike[str] | None = None,
            expiry: TufExpiry = TufExpiry()) -> int:
    """Re-sign snapshot and timestamp with fresh expiries (run periodically); returns the timestamp version."""
    repo = _Repo(Path(repo_dir).absolute(), Path(keys_dir) if keys_dir else None)
    repo.commit(expiry, bump_targets=False)
    return repo.timestamp.signed.version
