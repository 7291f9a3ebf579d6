"""Host side of bundles: copy the artifacts into the bundle layout, hash them, write and sign the manifest.

Plan, then execute: every source file, relative path, role and engine reference is validated before
the first byte is written; the bundle is assembled in a temporary sibling directory and renamed into
place (``atomic_output_dir``), so a failed write never leaves a half bundle. Files are hashed while
they are copied: the hash in the manifest is the hash of the bytes that were written.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_output_dir
from edgeq._version import __version__
from edgeq.errors import ConfigError
from edgeq.sdk.bundle.manifest import (
    FILE_ROLES,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    EngineInfo,
    FileEntry,
    Manifest,
)
from edgeq.converters.signing import load_private_key, sign

_CHUNK = 1 << 20
HEALTH_PATH = "health/health.json"


@dataclass(frozen=True)
class BundleContents:
    """Everything a bundle holds and records. ``files`` maps bundle-relative path → (source file, role)."""

    model_name: str
    bundle_version: int
    task: str
    target: str
    precision: str
    files: dict[str, tuple[Path, str]]
    engines: tuple[EngineInfo, ...] = ()
    target_hash: str = ""
    quant_config: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    model_revision: str | None = None
    build: dict[str, Any] = field(default_factory=dict)
    min_runtime_version: str = __version__

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", {str(k): (Path(v[0]), str(v[1])) for k, v in self.files.items()})
        object.__setattr__(self, "engines", tuple(self.engines))
        if not isinstance(self.bundle_version, int) or self.bundle_version < 1:
            raise ConfigError(f"bundle_version must be a positive integer, got {self.bundle_version!r}")
        for rel, (src, role) in self.files.items():
            if rel in (MANIFEST_NAME, SIGNATURE_NAME):
                raise ConfigError(f"{rel} is written by write_bundle; do not list it in files")
            if role not in FILE_ROLES:
                raise ConfigError(f"file {rel!r}: unknown role {role!r}; expected one of {sorted(FILE_ROLES)}")
            # FileEntry's own checks reject absolute paths, '..', backslashes and empty parts.
            FileEntry(path=rel, size=0, sha256="0" * 64, role=role)
        prefixes = {str(p) for rel in self.files for p in Path(rel).parents if str(p) != "."}
        if clash := prefixes & self.files.keys():
            raise ConfigError(f"bundle path {sorted(clash)[0]!r} is both a file and a directory")
        for e in self.engines:
            for ref in (e.path, e.plan, e.onnx):
                if ref is not None and ref not in self.files:
                    raise ConfigError(f"engine refers to {ref!r}, which is not among the bundle files")


def _copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while block := fin.read(_CHUNK):
            h.update(block)
            fout.write(block)
            n += len(block)
    return n, h.hexdigest()


def write_bundle(
    contents: BundleContents,
    out_dir: str | os.PathLike[str],
    *,
    signing_key: str | os.PathLike[str] | Any = None,
    overwrite: bool = False,
) -> Path:
    """Assemble a bundle directory at ``out_dir``; sign its manifest when ``signing_key`` is given.

    ``signing_key`` is a private key file from ``edgeq keys generate`` (or an Ed25519PrivateKey).
    Returns the bundle path. Raises ConfigError for a bad plan, OutputExistsError when ``out_dir``
    exists and not ``overwrite``.
    """
    # -- plan ----------------------------------------------------------------------------------
    for rel, (src, _role) in contents.files.items():
        if not src.is_file():
            raise ConfigError(f"bundle file {rel!r}: source {src} is not a file")
    key = load_private_key(signing_key) if signing_key is not None else None
    # -- execute -------------------------------------------------------------------------------
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        entries = []
        for rel, (src, role) in sorted(contents.files.items()):
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            size, digest = _copy_hashed(src, dst)
            entries.append(FileEntry(path=rel, size=size, sha256=digest, role=role))
        manifest = Manifest(
            model_name=contents.model_name,
            bundle_version=contents.bundle_version,
            task=contents.task,
            target=contents.target,
            precision=contents.precision,
            files=tuple(entries),
            engines=contents.engines,
            model_id=contents.model_id,
            model_revision=contents.model_revision,
            target_hash=contents.target_hash,
            quant_config=dict(contents.quant_config),
            min_runtime_version=contents.min_runtime_version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            build_host=socket.gethostname(),
            build={"edgeq_version": __version__, "python": platform.python_version(), **contents.build},
            health=HEALTH_PATH if HEALTH_PATH in contents.files else None,
        )
        (tmp / MANIFEST_NAME).write_text(manifest.dumps(), encoding="utf-8")
        if key is not None:
            (tmp / SIGNATURE_NAME).write_bytes(sign(manifest.canonical_bytes(), key))
    return Path(out_dir).absolute()
