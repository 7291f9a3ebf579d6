"""Open and verify a bundle, directory or archive, in trust order: signature → manifest → every file.

Nothing in a bundle is read as anything but bytes-to-hash until the signature over the canonical
manifest verifies against a trusted key (or the caller explicitly allows unsigned bundles). Then every
file listed must exist as a regular file with the recorded size and SHA-256, and no other file may be
present. :class:`BundleSource` is the store's view of a bundle to install: the manifest pair first,
then ``materialize`` into a staging directory (copy from a directory, safe extraction from an archive).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import BundleError, IntegrityError, SignatureError
from edgeq.sdk.bundle.archive import ArchiveLimits, BundleArchive
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, canonical_json, parse_manifest_json
from edgeq.sdk.bundle.signing import TrustedKeys, verify

_CHUNK = 1 << 20
#: Files a bundle directory may hold besides the ones its manifest lists.
META_FILES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


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


def hash_open_file(f, size_limit: int) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    h = hashlib.sha256()
    n = 0
    while block := f.read(_CHUNK):
        n += len(block)
        if n > size_limit:
            break
        h.update(block)
    return n, h.hexdigest()


def open_regular(path: Path) -> int:
    """An fd for a regular file, refusing symlinks at the last component (and FIFOs/devices)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise IntegrityError(f"bundle file is missing: {path.name}") from exc
    except OSError as exc:
        raise IntegrityError(f"bundle file {path} cannot be opened safely: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"bundle file {path} is not a regular file")
    return fd


def check_file(root: Path, entry: FileEntry) -> None:
    """Size and SHA-256 of ``root/entry.path`` must equal the manifest's; IntegrityError otherwise."""
    with os.fdopen(open_regular(root / entry.path), "rb") as f:
        size, digest = hash_open_file(f, entry.size)
    if size != entry.size:
        raise IntegrityError(f"{entry.path}: size differs from the manifest (read {size}{'+' if size > entry.size else ''}, "
                             f"expected {entry.size})")
    if digest != entry.sha256:
        raise IntegrityError(f"{entry.path}: SHA-256 differs from the manifest; the file was changed or corrupted")


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
    """A bundle to install, directory or archive: the manifest pair first, the files only on request."""

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        self._archive: BundleArchive | None = None
        if self.path.is_dir():
            self.manifest_bytes = self._read_small(self.path / MANIFEST_NAME)
            if self.manifest_bytes is None:
                raise BundleError(f"not a bundle (no {MANIFEST_NAME}): {self.path}")
            self.signature_bytes = self._read_small(self.path / SIGNATURE_NAME)
        elif self.path.is_file():
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
        if not p.exists() and not p.is_symlink():
            return None
        with os.fdopen(open_regular(p), "rb") as f:
            data = f.read(self.limits.max_manifest_bytes + 1)
        if len(data) > self.limits.max_manifest_bytes:
            raise BundleError(f"{p.name} is over {self.limits.max_manifest_bytes} bytes; refusing to read it")
        return data

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()

    def materialize(self, staging: Path, manifest: Manifest) -> None:
        """Put exactly the manifest's files (plus manifest.json/.sig bytes already read) into ``staging``."""
        expected = {f.path: f.size for f in manifest.files}
        if self._archive is not None:
            self._archive.extract_to(staging, expected)
        else:
            # A directory must hold exactly what its manifest lists, like an archive must.
            if extra := extra_files(self.path, manifest):
                raise IntegrityError(f"bundle holds files its manifest does not list: {extra[:5]}")
            for entry in manifest.files:
                dst = staging / entry.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                with os.fdopen(open_regular(self.path / entry.path), "rb") as src, open(dst, "xb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        # The manifest pair lands as the exact bytes that were verified, not re-read from the source.
        (staging / MANIFEST_NAME).write_bytes(self.manifest_bytes)
        if self.signature_bytes is not None:
            (staging / SIGNATURE_NAME).write_bytes(self.signature_bytes)


def verify_bundle(
    path: str | os.PathLike[str],
    trusted: TrustedKeys | None = None,
    *,
    allow_unsigned: bool = False,
    check_signature: bool = True,
) -> SignedManifest:
    """Fully verify a bundle directory or archive (signature, manifest, every file, no extras).

    An archive is extracted with the store's safe extraction into a temporary directory that is
    removed afterwards. ``check_signature=False`` (host tools without the publisher's public key)
    checks only the manifest and the files; the returned ``key_id`` is then None.
    """
    trusted = trusted or TrustedKeys()
    with BundleSource(path) as src:
        sig = src.signature_bytes if check_signature else None
        signed = load_signed_manifest(src.manifest_bytes, sig, trusted,
                                      allow_unsigned=allow_unsigned or not check_signature)
        if src.path.is_dir():
            verify_files(src.path, signed.manifest)
        else:
            with tempfile.TemporaryDirectory(prefix=".edgeq-verify-") as tmp:
                src.materialize(Path(tmp), signed.manifest)
                verify_files(Path(tmp), signed.manifest)
    return signed
