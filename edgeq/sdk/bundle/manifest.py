"""The bundle manifest: the schema-versioned record of exactly what a bundle holds and how it was made.

A bundle is a directory (``manifest.json`` at its root, optional ``manifest.sig`` beside it) whose
files are all listed in the manifest with size and SHA-256. The signature covers
``canonical_bytes(manifest)``; nothing else in the bundle is trusted until its hash matches.
Standard library only: this module runs on devices.

Bundle layout (paths relative to the bundle root)::

    manifest.json           this schema
    manifest.sig            ed25519 signature (JSON: key_id, signature hex) over canonical manifest bytes
    model/model.onnx        the QDQ ONNX (+ model/model.onnx_data, its tensors)
    model/model.cpu.onnx    an LM's CPU graph (engine entry device "cpu"), sharing model.onnx_data's bytes
    engine/<name>.engine    serialized TensorRT / TensorRT-RTX engine, when one was built
    plan/build_plan.json    builder settings for an on-device build (build_on = "device"), + plan/trtexec.txt
    tokenizer/...           tokenizer.json, tokenizer_config.json, config.json, generation_config.json, ...
    health/health.json      the monitor's spec (see edgeq.sdk.bundle.health), + health/canaries.npz
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import BundleError, ConfigError
from edgeq.sdk.bundle.flavours import engine_flavour

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"

#: What an engine entry's ``device`` may say: None (any backend) or "cpu" (ONNX Runtime's CPU provider only).
ENGINE_DEVICES = (None, "cpu")

#: Roles a file may play in a bundle; the runtime looks files up by role, never by guessing names.
FILE_ROLES = frozenset(
    {"onnx", "onnx_data", "engine", "plan", "tokenizer", "model_config", "health", "other"}
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: POSIX relative path, byte size, SHA-256 hex, role."""

    path: str
    size: int
    sha256: str
    role: str = "other"

    def __post_init__(self) -> None:
        p = self.path
        if not p or p.startswith("/") or "\\" in p or any(part in ("", ".", "..") for part in p.split("/")):
            raise ConfigError(f"unsafe bundle file path: {p!r}")
        if self.role not in FILE_ROLES:
            raise ConfigError(f"unknown file role {self.role!r}; expected one of {sorted(FILE_ROLES)}")
        if self.size < 0 or len(self.sha256) != 64:
            raise ConfigError(f"bad size/sha256 for {p!r}")


@dataclass(frozen=True)
class EngineInfo:
    """One runnable artifact of the bundle.

    ``flavour`` names the library that loads it; ``path`` is the engine file (None when the engine is
    to be built on the device from ``plan``); ``compute_capabilities`` lists the GPUs it runs on
    (e.g. ``["8.9"]``; empty for ``onnx``); ``trt_version`` is the library version it was built with.
    ``device`` is ``"cpu"`` for an ``onnx`` artifact made for ONNX Runtime's CPU provider (the CPU graph:
    FP32 compute, fused; ``edgeq.converters.cpu_graph``), which the CPU backend prefers and GPU backends skip;
    None (not serialised, so manifests without one keep their bytes) for an artifact any backend may run.
    """

    flavour: str
    path: str | None = None
    plan: str | None = None
    onnx: str | None = None
    compute_capabilities: tuple[str, ...] = ()
    trt_version: str | None = None
    precision: str = "fp16"
    device: str | None = None

    def __post_init__(self) -> None:
        engine_flavour(self.flavour)  # ConfigError naming the known flavours
        if self.device not in ENGINE_DEVICES:
            raise ConfigError(f"engine device {self.device!r} is not one of {list(ENGINE_DEVICES)}")
        if self.device is not None and (self.flavour != "onnx" or self.onnx is None):
            raise ConfigError("an engine entry for one device is an onnx entry naming its onnx file")
        if self.path is None and self.plan is None and self.onnx is None:
            raise ConfigError("an engine entry needs a path, a plan or an onnx file")
        object.__setattr__(self, "compute_capabilities", tuple(self.compute_capabilities))


@dataclass(frozen=True)
class Manifest:
    """What a bundle is. ``model_name`` is the store key; ``bundle_version`` increases monotonically."""

    model_name: str
    bundle_version: int
    task: str
    target: str
    precision: str
    files: tuple[FileEntry, ...]
    engines: tuple[EngineInfo, ...]
    model_id: str = ""
    model_revision: str | None = None
    target_hash: str = ""
    quant_config: dict[str, Any] = field(default_factory=dict)
    min_runtime_version: str = "0.1.0"
    created_at: str = ""
    build_host: str = ""
    build: dict[str, Any] = field(default_factory=dict)
    health: str | None = "health/health.json"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema version {self.schema_version} is not supported (this runtime reads {SCHEMA_VERSION})",
                hint="upgrade edgeq on the device",
            )
        if not self.model_name or "/" in self.model_name or self.model_name.startswith("."):
            raise ConfigError(f"invalid model_name {self.model_name!r}")
        if not isinstance(self.bundle_version, int) or self.bundle_version < 1:
            raise ConfigError(f"bundle_version must be a positive integer, got {self.bundle_version!r}")
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "engines", tuple(self.engines))
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ConfigError("manifest lists a file twice")
        known = set(paths)
        for e in self.engines:
            for ref in (e.path, e.plan, e.onnx):
                if ref is not None and ref not in known:
                    raise ConfigError(f"engine refers to {ref!r}, which the manifest does not list")

    # -- lookup -------------------------------------------------------------------------------
    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise BundleError(f"bundle has no file {path!r}")

    def files_with_role(self, role: str) -> list[FileEntry]:
        return [f for f in self.files if f.role == role]

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for e in d["engines"]:  # absent rather than null: manifests written before the field keep their bytes
            if e.get("device") is None:
                e.pop("device", None)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            d = dict(data)
            d["files"] = tuple(FileEntry(**f) for f in d.get("files", ()))
            d["engines"] = tuple(
                EngineInfo(**{**e, "compute_capabilities": tuple(e.get("compute_capabilities", ()))})
                for e in d.get("engines", ())
            )
            return cls(**d)
        except (TypeError, KeyError) as exc:
            raise BundleError(f"malformed manifest: {exc}") from exc

    def canonical_bytes(self) -> bytes:
        """The exact bytes a signature covers: sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        return cls.from_dict(parse_manifest_json(raw))

    @classmethod
    def load(cls, bundle_dir: str | Path) -> Manifest:
        p = Path(bundle_dir) / MANIFEST_NAME
        try:
            raw = p.read_bytes()
        except FileNotFoundError as exc:
            raise BundleError(f"not a bundle (no {MANIFEST_NAME}): {bundle_dir}") from exc
        return cls.from_bytes(raw)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def parse_manifest_json(raw: bytes) -> dict[str, Any]:
    """The manifest's JSON object (BundleError when it is not UTF-8 JSON or not an object)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError("manifest is not a JSON object")
    return data


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
