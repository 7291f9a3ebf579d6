"""Single-file transport form of a bundle (a tar), read with extraction that cannot write outside its staging dir.

The publisher packs archives with ``edgeq.converters.pack``.

Every member is checked before a byte is extracted: only regular files and directories; no absolute
paths, ``..``, backslashes or empty components; no symlinks, hardlinks, devices, FIFOs or sparse files;
no duplicate names; member count and sizes bounded (and Python's ``tarfile.data_filter`` as a second
opinion). The store additionally requires the member set to equal the signed manifest's file list with
the exact sizes; ``edgeq.sdk.bundle.verify`` then streams each member into a fresh staging directory,
hashing it on the way (each byte is read and hashed once).
"""

from __future__ import annotations

import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edgeq._fs import open_regular
from edgeq.errors import BundleError, ConfigError, IntegrityError, UnsafeArchiveError
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME

ARCHIVE_SUFFIX = ".edgeq.tar"
#: what reading a damaged (or damaged compressed) archive raises part-way through a member
_READ_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError, zlib.error)
try:
    import lzma

    _READ_ERRORS += (lzma.LZMAError,)
except ImportError:  # Python built without lzma cannot open .xz archives at all
    pass
_ALLOWED_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds applied to an archive before anything is extracted (defaults fit a 70B INT4 engine)."""

    max_members: int = 10_000
    max_file_bytes: int = 256 << 30
    max_total_bytes: int = 512 << 30
    #: manifest.json and manifest.sig are read into memory before the signature check.
    max_manifest_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        for name in ("max_members", "max_file_bytes", "max_total_bytes", "max_manifest_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ArchiveLimits.{name} must be positive")


def check_member_name(name: str) -> str:
    """The normalised POSIX relative path of a member, or UnsafeArchiveError."""
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"archive member has an unsafe name: {name!r}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member has an absolute path: {name!r}")
    stripped = name[2:] if name.startswith("./") else name
    stripped = stripped.rstrip("/")
    parts = stripped.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeArchiveError(f"archive member escapes or is ambiguous: {name!r}")
    return str(PurePosixPath(*parts))


class BundleArchive:
    """An opened bundle archive whose member list has passed every safety check.

    Use as a context manager. ``read_small`` returns in-memory bytes of manifest-sized members;
    ``extract_to`` writes the members into an empty staging directory.
    """

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        # open_regular: a FIFO or device given as the archive must be refused, not waited on
        self._file = os.fdopen(open_regular(self.path, follow_symlinks=True), "rb")
        try:
            self._tar = tarfile.open(fileobj=self._file, mode="r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._file.close()
            raise BundleError(f"not a readable bundle archive: {self.path}: {exc}") from exc
        try:
            self.files, self.dirs = self._plan()
        except BaseException:
            self.close()
            raise

    def _plan(self) -> tuple[dict[str, tarfile.TarInfo], set[str]]:
        files: dict[str, tarfile.TarInfo] = {}
        dirs: set[str] = set()
        total = 0
        try:
            for count, m in enumerate(self._tar, start=1):
                if count > self.limits.max_members:
                    raise UnsafeArchiveError(f"archive has more than {self.limits.max_members} members")
                name = check_member_name(m.name)
                if m.type not in _ALLOWED_TYPES or m.issparse():
                    kind = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "character device",
                            tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}.get(m.type, f"type {m.type!r}")
                    raise UnsafeArchiveError(f"archive member {name!r} is a {kind}; only regular files are allowed")
                if name in files or name in dirs:
                    raise UnsafeArchiveError(f"archive lists {name!r} twice")
                if m.isdir():
                    dirs.add(name)
                    continue
                if m.size > self.limits.max_file_bytes:
                    raise UnsafeArchiveError(f"archive member {name!r} is {m.size} bytes, over the per-file limit")
                total += m.size
                if total > self.limits.max_total_bytes:
                    raise UnsafeArchiveError("archive content is over the total size limit")
                # Python's own data filter as a second opinion on every member.
                try:
                    tarfile.data_filter(m, "/nonexistent-edgeq-staging")
                except tarfile.FilterError as exc:
                    raise UnsafeArchiveError(f"archive member {name!r} refused by tarfile's data filter: {exc}") from exc
                files[name] = m
        except tarfile.TarError as exc:
            raise BundleError(f"corrupt bundle archive {self.path}: {exc}") from exc
        # A file may not also be a directory prefix of another member (a/b file and a/b/c).
        for name in files:
            if name in dirs or any(d.startswith(name + "/") for d in dirs):
                raise UnsafeArchiveError(f"archive member {name!r} is both a file and a directory")
        prefixes = {str(p) for n in files for p in PurePosixPath(n).parents if str(p) != "."}
        if clash := prefixes & files.keys():
            raise UnsafeArchiveError(f"archive member {sorted(clash)[0]!r} is both a file and a directory")
        return files, dirs

    def __enter__(self) -> BundleArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()  # a tar opened on a file object leaves that object open
        self._file.close()

    def read_small(self, name: str) -> bytes | None:
        """Bytes of member ``name`` (None when absent), bounded by ``max_manifest_bytes``."""
        m = self.files.get(name)
        if m is None:
            return None
        if m.size > self.limits.max_manifest_bytes:
            raise UnsafeArchiveError(f"{name} in the archive is {m.size} bytes; refusing to read it")
        with self.open_member(name) as f:
            data = f.read(m.size + 1)
        if len(data) != m.size:
            raise BundleError(f"archive member {name!r} is truncated")
        return data

    def members_for(self, expected: dict[str, int]) -> list[str]:
        """The names of ``expected`` ({relpath: size}) in archive order, once the archive holds exactly them.

        Refused when the archive holds any other file, lacks one, or a size differs: the signed
        manifest, not the archive, decides what lands on disk. Archive order lets a compressed
        archive be read front to back.
        """
        # manifest.json/.sig were read (and verified) in memory; the caller writes those exact bytes.
        have = set(self.files) - {MANIFEST_NAME, SIGNATURE_NAME}
        want = set(expected)
        if extra := sorted(have - want):
            raise UnsafeArchiveError(f"archive holds files the manifest does not list: {extra[:5]}")
        if missing := sorted(want - have):
            raise IntegrityError(f"archive lacks files the manifest lists: {missing[:5]}")
        for name, size in expected.items():
            if self.files[name].size != size:
                raise UnsafeArchiveError(
                    f"archive member {name!r} is {self.files[name].size} bytes, the manifest says {size}"
                )
        return sorted(want, key=lambda n: self.files[n].offset_data)

    def open_member(self, name: str) -> _MemberReader:
        """A reader of member ``name``'s bytes (a checked regular file: the plan admits nothing else)."""
        try:
            f = self._tar.extractfile(self.files[name])
        except _READ_ERRORS as exc:
            raise BundleError(f"corrupt bundle archive {self.path}: {exc}") from exc
        if f is None:
            raise UnsafeArchiveError(f"archive member {name!r} has no data")
        return _MemberReader(f, self.path, name)


class _MemberReader:
    """A member's byte stream whose read errors (truncated or corrupt archive) are BundleErrors."""

    def __init__(self, f: BinaryIO, path: Path, name: str) -> None:
        self._f, self._path, self._name = f, path, name

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except _READ_ERRORS as exc:
            raise BundleError(f"corrupt bundle archive {self._path} (member {self._name!r}): {exc}") from exc

    def __enter__(self) -> _MemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
