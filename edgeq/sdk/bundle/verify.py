"""Open and verify a bundle, directory or archive, in trust order: signature → manifest → every file.

Nothing in a bundle is read as anything but bytes-to-hash until the signature over the canonical
manifest verifies against a trusted key (or the caller explicitly allows unsigned bundles). Then every
file listed must exist as a regular file with the recorded size and SHA-256, and no other file may be
present. :class:`BundleSource` is the store's view of a bundle to install: the manifest pair first,
then ``materialize`` into a staging directory (copy from a directory, safe extraction from an archive),
hashing each file while it is copied, so an installed byte is read and hashed exactly once. Every open
refuses anything but a regular file without blocking (``edgeq._fs.open_regular``), and every read is
bounded by the manifest's sizes or the limits.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from edgeq._fs import hash_bounded, open_regular, read_regular
from edgeq.errors import BundleError, IntegrityError, SignatureError
from edgeq.sdk.bundle.archive import ArchiveLimits, BundleArchive
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, canonical_json, parse_manifest_json
from edgeq.sdk.bundle.signing import TrustedKeys, verify

_CHUNK = 1 << 20
#: Staged files are always new: O_EXCL|O_NOFOLLOW so that nothing can be written through a planted name.
_WRITE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                | getattr(os, "O_BINARY", 0))
#: Files a bundle directory may hold besides the ones its manifest lists.
META_FILES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class SignedManifest:
    """A manifest whose signature was checked (``key_id`` None only when unsigned bundles were allowed)."""

    manifest: Manifest
    key_id: str | None
    digest: str  # SHA-256 of the canonical manifest bytes: the identity of this exact bundle content


def load_signed_manifest(
    manifest_bytes: bytes, signature: bytes | None, trusted: TrustedKeys, *, allow_unsigned: bool = False
) -> SignedManifest:
    """Verify ``signature`` over the canonical form of ``manifest_bytes``, then parse the manifest.

    With ``allow_unsigned`` a *missing* signature is accepted; a signature that is present must still
    verify against a trusted key (a bad signature is evidence of tampering, not a missing feature).
    """
    data = parse_manifest_json(manifest_bytes)
    canonical = canonical_json(data)
    if signature is None:
        if not allow_unsigned:
            raise SignatureError(
                "bundle is not signed (no manifest.sig)",
                hint="sign it with `edgeq keys generate` + a signing key, or configure the store to allow unsigned bundles",
            )
        kid = None
    else:
        kid = verify(canonical, signature, trusted)
    try:
        manifest = Manifest.from_dict(data)
    except BundleError:
        raise
    except Exception as exc:  # ConfigError and friends from the schema's own checks
        raise BundleError(f"malformed manifest: {exc}") from exc
    return SignedManifest(manifest, kid, hashlib.sha256(canonical).hexdigest())


def copy_verified(src: Readable, dst: Path, entry: FileEntry) -> None:
    """Copy ``src`` into the new file ``dst``, hashing on the way: the one read and hash of an installed byte.

    IntegrityError when the size or SHA-256 differs from ``entry`` (``dst`` is then left for the caller's
    staging cleanup). At most ``entry.size + 1`` bytes are read.
    """
    h = hashlib.sha256()
    n = 0
    fd = os.open(dst, _WRITE_FLAGS, 0o644)
    with os.fdopen(fd, "wb") as out:
        while n <= entry.size and (block := src.read(min(_CHUNK, entry.size + 1 - n))):
            n += len(block)
            h.update(block)
            out.write(block)
    _check_digest(entry, n, h.hexdigest())


def _check_digest(entry: FileEntry, size: int, digest: str) -> None:
    if size != entry.size:
        raise IntegrityError(f"{entry.path}: size differs from the manifest (read {size}{'+' if size > entry.size else ''}, "
                             f"expected {entry.size})")
    if digest != entry.sha256:
        raise IntegrityError(f"{entry.path}: SHA-256 differs from the manifest; the file was changed or corrupted")


def check_layout(manifest: Manifest, limits: ArchiveLimits) -> int:
    """Refuse a file list that cannot be laid out on disk or is over the limits; return its total size.

    Run before anything is written: a name that is also another file's directory, or the name of the
    manifest itself, would otherwise fail half-way through staging.
    """
    paths = {f.path for f in manifest.files}
    if clash := paths & META_FILES:
        raise BundleError(f"manifest lists {sorted(clash)[0]}, a name the bundle format reserves")
    dirs = {str(p) for f in paths for p in PurePosixPath(f).parents if str(p) != "."}
    if clash := paths & dirs:
        raise BundleError(f"manifest lists {sorted(clash)[0]!r} both as a file and as a directory")
    if len(manifest.files) > limits.max_members:
        raise BundleError(f"manifest lists more than {limits.max_members} files")
    for f in manifest.files:
        if f.size > limits.max_file_bytes:
            raise BundleError(f"{f.path} is {f.size} bytes, over the per-file limit {limits.max_file_bytes}")
    total = sum(f.size for f in manifest.files)
    if total > limits.max_total_bytes:
        raise BundleError(f"bundle content is {total} bytes, over the total limit {limits.max_total_bytes}")
    return total


def check_file(root: Path, entry: FileEntry) -> None:
    """Size and SHA-256 of ``root/entry.path`` must equal the manifest's; IntegrityError otherwise."""
    with os.fdopen(open_regular(root / entry.path), "rb") as f:
        size, digest = hash_bounded(f, entry.size)
    _check_digest(entry, size, digest)


def extra_files(root: Path, manifest: Manifest) -> list[str]:
    """Paths under ``root`` that are neither listed in the manifest nor manifest.json/manifest.sig."""
    listed = {f.path for f in manifest.files} | META_FILES
    dirs_needed = {str(Path(p).parent) for p in listed}
    extra: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel not in listed:
                extra.append(rel)
        for d in dirnames:
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if not any(n == rel or n.startswith(rel + "/") for n in dirs_needed):
                extra.append(rel + "/")
    return sorted(extra)


def verify_files(root: Path, manifest: Manifest, *, exact: bool = True) -> None:
    """Check every listed file; with ``exact`` also refuse any file the manifest does not list."""
    for entry in manifest.files:
        check_file(root, entry)
    if exact and (extra := extra_files(root, manifest)):
        raise IntegrityError(f"bundle holds files its manifest does not list: {extra[:5]}")


class BundleSource:
    """A bundle to install, directory or archive: the manifest pair first, the files only on request.

    Every read is bounded and refuses anything but a regular file, so a FIFO, device or endless file in
    a bundle cannot stall the caller (who holds the store lock).
    """

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        self._archive: BundleArchive | None = None
        if self.path.is_dir():
            self.manifest_bytes = self._read_small(self.path / MANIFEST_NAME)
            if self.manifest_bytes is None:
                raise BundleError(f"not a bundle (no {MANIFEST_NAME}): {self.path}")
            self.signature_bytes = self._read_small(self.path / SIGNATURE_NAME)
        elif self.path.exists():  # anything else is the archive form; BundleArchive refuses non-regular files
            self._archive = BundleArchive(self.path, self.limits)
            try:
                mb = self._archive.read_small(MANIFEST_NAME)
                if mb is None:
                    raise BundleError(f"not a bundle archive (no {MANIFEST_NAME}): {self.path}")
                self.manifest_bytes = mb
                self.signature_bytes = self._archive.read_small(SIGNATURE_NAME)
            except BaseException:
                self._archive.close()
                raise
        else:
            raise BundleError(f"no bundle at {self.path}")

    def _read_small(self, p: Path) -> bytes | None:
        if not os.path.lexists(p):
            return None
        return read_regular(p, self.limits.max_manifest_bytes)

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()

    def check_contents(self, manifest: Manifest) -> list[str]:
        """Refuse a bundle holding files other than the manifest's (or, in an archive, other sizes);
        return the listed paths in the order to read them. Nothing is read but names and sizes."""
        if self._archive is not None:
            return self._archive.members_for({f.path: f.size for f in manifest.files})
        # a directory must hold exactly what its manifest lists, like an archive must
        if extra := extra_files(self.path, manifest):
            raise IntegrityError(f"bundle holds files its manifest does not list: {extra[:5]}")
        return [f.path for f in manifest.files]

    def materialize(self, staging: Path, manifest: Manifest, on_file: Callable[[FileEntry], None] | None = None) -> None:
        """Put exactly the manifest's files, verified, plus the manifest pair's verified bytes into ``staging``.

        Each file is hashed while it is copied (or extracted), so every byte is read and hashed once;
        ``on_file`` is called after each file passed. ``staging`` must be empty: every file is created new.
        :meth:`check_contents` runs first (again, if the caller's plan ran it: it reads no file data).
        """
        by_path = {f.path: f for f in manifest.files}
        for rel in self.check_contents(manifest):
            entry = by_path[rel]
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with self._open(rel) as src:
                copy_verified(src, dst, entry)
            if on_file is not None:
                on_file(entry)
        # The manifest pair lands as the exact bytes that were verified, not re-read from the source.
        _write_new(staging / MANIFEST_NAME, self.manifest_bytes)
        if self.signature_bytes is not None:
            _write_new(staging / SIGNATURE_NAME, self.signature_bytes)


    def _open(self, rel: str) -> Any:
        if self._archive is not None:
            return self._archive.open_member(rel)
        return os.fdopen(open_regular(self.path / rel), "rb")


def _write_new(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, _WRITE_FLAGS, 0o644), "wb") as f:
        f.write(data)


def verify_bundle(
    path: str | os.PathLike[str],
    trusted: TrustedKeys | None = None,
    *,
    allow_unsigned: bool = False,
    check_signature: bool = True,
) -> SignedManifest:
    """Fully verify a bundle directory or archive (signature, manifest, every file, no extras).

    An archive is extracted with the store's safe, verifying extraction into a temporary directory that
    is removed afterwards. ``check_signature=False`` (host tools without the publisher's public key)
    checks only the manifest and the files; the returned ``key_id`` is then None.
    """
    trusted = trusted or TrustedKeys()
    with BundleSource(path) as src:
        sig = src.signature_bytes if check_signature else None
        signed = load_signed_manifest(src.manifest_bytes, sig, trusted,
                                      allow_unsigned=allow_unsigned or not check_signature)
        check_layout(signed.manifest, src.limits)
        if src.path.is_dir():
            verify_files(src.path, signed.manifest)
        else:
            with tempfile.TemporaryDirectory(prefix=".edgeq-verify-") as tmp:
                src.materialize(Path(tmp), signed.manifest)
    return signed
