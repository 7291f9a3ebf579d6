"""Crash-safe filesystem primitives: write to a temporary sibling, fsync, rename.

Shared by the converters (export/quantize/build outputs) and the device store. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeq.errors import DiskFullError, OutputError, OutputExistsError, OutputNotWritableError

TMP_PREFIX = ".edgeq-tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and new entries in it survive a power cut."""
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
