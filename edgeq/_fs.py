"""Crash-safe filesystem primitives: write to a temporary sibling, fsync, rename.

Shared by the converters (export/quantize/build outputs) and the device store. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeq.errors import BundleError, DiskFullError, IntegrityError, OutputError, OutputExistsError, OutputNotWritableError

TMP_PREFIX = ".edgeq-tmp-"
#: O_NONBLOCK: opening a FIFO that has no writer would otherwise wait forever (and a terminal can block
#: too); on a regular file it changes nothing. Flags an OS lacks (Windows) are 0; the type checks remain.
_READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and new entries in it survive a power cut."""
    if os.name == "nt":  # Windows cannot open a directory with os.open; NTFS journals directory entries itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (children before parents)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, *, follow_symlinks: bool = False) -> int:
    """A read-only fd for the regular file ``path``; IntegrityError for anything else, and never blocking.

    For files that untrusted input names (a bundle's files, the store's copies of them). The type is
    checked before the open, so a device is never opened at all, and again on the open fd, same inode,
    so a swap in between is caught; the open itself is non-blocking in case a FIFO wins that race.
    ``O_NOFOLLOW`` refuses a symlink at the last component; ``follow_symlinks`` allows one (a path the
    user typed). Read the fd with a bound: a regular file can still be huge.
    """
    try:
        before = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError as exc:
        raise IntegrityError(f"bundle file is missing: {path.name}") from exc
    except OSError as exc:
        raise IntegrityError(f"file {path} cannot be read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(before.st_mode):
        raise IntegrityError(f"file {path} is {_kind(before.st_mode)}, not a regular file; refusing to open it")
    flags = _READ_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise IntegrityError(f"file {path} cannot be opened safely: {exc.strerror or exc}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise IntegrityError(f"file {path} was replaced while it was being opened; refusing it")
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """All bytes of the regular file ``path``, which must be at most ``limit`` bytes (BundleError otherwise)."""
    with os.fdopen(open_regular(path), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path.name} is over {limit} bytes; refusing to read it")
    return data


def hash_bounded(f: Any, limit: int, chunk: int = 1 << 20) -> tuple[int, str]:
    """(bytes read, their SHA-256) of the binary stream ``f``, reading at most ``limit + 1`` bytes: one byte
    more than allowed is enough to tell a file that is too long, and nothing is read without bound."""
    h = hashlib.sha256()
    n = 0
    while n <= limit and (block := f.read(min(chunk, limit + 1 - n))):
        n += len(block)
        h.update(block)
    return n, h.hexdigest()


def mkdir_durable(path: Path, root: Path) -> None:
    """mkdir -p below ``root``, then fsync every directory whose entry list changed, so that a new directory
    survives a power cut (a kill -9 cannot show this: the page cache outlives the process)."""
    missing = []
    p = path
    while not p.exists() and p != root:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        fsync_dir(d.parent)


def read_at(fd: int, n: int, offset: int) -> bytes:
    """``os.pread`` where the OS has it; seek + read elsewhere (Windows has no pread)."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def write_at(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` where the OS has it; seek + write elsewhere."""
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, offset)
        return
    os.lseek(fd, offset, os.SEEK_SET)
    os.write(fd, data)


def os_error_to_edgeq(exc: OSError, what: Path) -> OutputError:
    """Map an OSError met while writing ``what`` to the matching typed error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on device while writing {what}", hint="free disk space and retry")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputNotWritableError(f"output location is not writable: {what}", hint="choose another --out")
    return OutputError(f"could not write {what}: {exc.strerror or exc}")


def check_parent_writable(final: Path) -> None:
    parent = final.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error_to_edgeq(exc, final) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output location is not writable: {parent}", hint="choose another --out")


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory of ``final``; on success rename it into place.

    On any exception the temporary directory is removed and ``final`` is untouched, so a failed or
    interrupted step never leaves a half-written output. With ``overwrite`` an existing ``final`` is
    replaced only after the new content is complete (old moved aside, new renamed in, old deleted).
    """
    final = Path(final).absolute()
    if final.exists() and not overwrite:
        raise OutputExistsError(f"output already exists: {final}", hint="pass --overwrite or choose another --out")
    check_parent_writable(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + "-", dir=final.parent))
    except OSError as exc:
        raise os_error_to_edgeq(exc, final) from exc
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f"{TMP_PREFIX}{final.name}-old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error_to_edgeq(exc, final) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename, fsync dir)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + "-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise os_error_to_edgeq(exc, path) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
