"""Pack a bundle directory into its single-file transport form (``edgeq.sdk.bundle.archive`` reads it)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from edgeq._fs import TMP_PREFIX, fsync_dir, os_error_to_edgeq
from edgeq.errors import BundleError, OutputExistsError
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the archive of a bundle is byte-identical wherever it is packed.
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, 0o644, 0, 0, 0, "", ""
    return ti


def pack(bundle_dir: str | os.PathLike[str], out_file: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the bundle directory as one uncompressed tar (manifest, signature, then listed files).

    Only files the manifest lists are packed; sizes are checked against the manifest on the way.
    Written to a temporary sibling, fsynced, then renamed: never a partial archive at ``out_file``.
    """
    src = Path(bundle_dir)
    out = Path(out_file).absolute()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output already exists: {out}", hint="pass --overwrite or choose another --out")
    manifest = Manifest.load(src)
    names = [MANIFEST_NAME] + ([SIGNATURE_NAME] if (src / SIGNATURE_NAME).is_file() else [])
    names += [f.path for f in manifest.files]
    sizes = {f.path: f.size for f in manifest.files}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + out.name + "-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                p = src / name
                if p.is_symlink() or not p.is_file():
                    raise BundleError(f"bundle file {name!r} is missing or not a regular file in {src}")
                size = p.stat().st_size
                if name in sizes and size != sizes[name]:
                    raise BundleError(f"bundle file {name!r} is {size} bytes, the manifest says {sizes[name]}")
                with open(p, "rb") as f:
                    tar.addfile(_tarinfo(name, size), f)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise os_error_to_edgeq(exc, out) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
