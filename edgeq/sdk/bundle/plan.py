"""The engine build plan: every builder setting, as versioned JSON, plus the equivalent CLI command.

A plan is written into bundles for targets with ``build_on = "device"`` (Jetson, Hopper servers), so
that the runtime builds exactly what the host planned, with the same ``edgeq.sdk.engine.builder`` code.
Standard library only: this runs on devices.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.flavours import ENGINE_FLAVOURS, TENSORRT_FLAVOURS

PLAN_SCHEMA_VERSION = 1
HARDWARE_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")

#: How trtexec spells hardware-compat levels.
_TRTEXEC_HWCOMPAT = {"ampere_plus": "ampere+", "same_compute_capability": "sameComputeCapability"}


@dataclass(frozen=True)
class InputShape:
    """min/opt/max of one network input (full shapes, one int per dimension)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        for attr in ("min", "opt", "max"):
            object.__setattr__(self, attr, tuple(int(v) for v in getattr(self, attr)))
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ConfigError(f"input {self.name!r}: min/opt/max ranks differ")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not 0 <= lo <= mid <= hi:
                raise ConfigError(f"input {self.name!r}: need 0 <= min <= opt <= max per dim, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class OptimizationProfile:
    """One TensorRT optimization profile: the shape range of every dynamic input."""

    inputs: tuple[InputShape, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ConfigError("an optimization profile names an input twice")


@dataclass(frozen=True)
class BuildPlan:
    """Everything the builder needs besides the ONNX bytes.

    Args:
        flavour: a TensorRT flavour of ``edgeq.sdk.bundle.flavours`` (which library builds and loads the engine).
        onnx: path of the QDQ ONNX relative to the bundle (or absolute on a host).
        engine: where the engine goes, relative to the bundle.
        precision: the quantization scheme the ONNX carries (informational; strongly typed networks
            take their types from the ONNX, never from builder flags).
        profiles: optimization profiles (shape ranges per input).
        compute_capabilities: flavours that cross-build (TensorRT-RTX) only: the GPUs to build kernels for, e.g. ("8.9",).
        hardware_compatibility / version_compatible: flavours that build on the device (full TensorRT) only:
            portability switches.
        workspace_bytes: WORKSPACE memory-pool limit (None = library default).
        builder_optimization_level: 0..5.
        timing_cache: use a timing cache (never in CPU-only TensorRT-RTX builds: it queries a GPU).
        target / target_hash: the profile this plan came from.
    """

    flavour: str
    onnx: str
    engine: str
    precision: str
    profiles: tuple[OptimizationProfile, ...]
    compute_capabilities: tuple[str, ...] = ()
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    workspace_bytes: int | None = None
    builder_optimization_level: int = 3
    strongly_typed: bool = True
    timing_cache: bool = False
    target: str = ""
    target_hash: str = ""
    schema_version: int = PLAN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", tuple(self.profiles))
        object.__setattr__(self, "compute_capabilities", tuple(str(c) for c in self.compute_capabilities))
        if self.schema_version != PLAN_SCHEMA_VERSION:
            raise ConfigError(f"build plan schema {self.schema_version} is not supported (this edgeq reads {PLAN_SCHEMA_VERSION})")
        if self.flavour not in TENSORRT_FLAVOURS:
            raise ConfigError(f"unknown engine flavour {self.flavour!r}; expected one of {list(TENSORRT_FLAVOURS)}")
        fl = ENGINE_FLAVOURS[self.flavour]
        if self.hardware_compatibility not in HARDWARE_COMPAT_LEVELS:
            raise ConfigError(f"unknown hardware_compatibility {self.hardware_compatibility!r}")
        if not self.profiles:
            raise ConfigError("a build plan needs at least one optimization profile")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ConfigError("builder_optimization_level must be 0..5")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ConfigError("workspace_bytes must be positive")
        if not self.strongly_typed:
            # Weak typing lets TensorRT pick precisions itself, which would silently change what the
            # QDQ graph (checked against the reference) computes.
            raise ConfigError("edgeq builds strongly typed networks only")
        if fl.cross_builds and (self.hardware_compatibility != "none" or self.version_compatible):
            raise ConfigError(f"{fl.title} takes compute_capabilities, not hardware/version compatibility")
        if fl.cross_builds and self.timing_cache:
            raise ConfigError(f"no timing cache for {fl.title}: creating one queries a GPU, which CPU-only builds lack")
        if not fl.cross_builds and self.compute_capabilities:
            cross = ", ".join(f.title for f in ENGINE_FLAVOURS.values() if f.cross_builds)
            raise ConfigError(f"{fl.title} builds for the GPU it runs on; compute_capabilities is {cross} only")

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "flavour": self.flavour,
            "onnx": self.onnx,
            "engine": self.engine,
            "precision": self.precision,
            "profiles": [
                {"inputs": [{"name": i.name, "min": list(i.min), "opt": list(i.opt), "max": list(i.max)} for i in p.inputs]}
                for p in self.profiles
            ],
            "compute_capabilities": list(self.compute_capabilities),
            "hardware_compatibility": self.hardware_compatibility,
            "version_compatible": self.version_compatible,
            "workspace_bytes": self.workspace_bytes,
            "builder_optimization_level": self.builder_optimization_level,
            "strongly_typed": self.strongly_typed,
            "timing_cache": self.timing_cache,
            "target": self.target,
            "target_hash": self.target_hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildPlan:
        try:
            d = dict(data)
            d["profiles"] = tuple(
                OptimizationProfile(tuple(InputShape(**i) for i in p["inputs"])) for p in d.get("profiles", ())
            )
            return cls(**d)
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"malformed build plan: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BuildPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"build plan is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("build plan is not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> BuildPlan:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # -- the equivalent command line --------------------------------------------------------------
    def to_trtexec(self, onnx: str | None = None, engine: str | None = None) -> str:
        """The ``trtexec`` (TensorRT) or ``tensorrt_rtx`` (TensorRT-RTX) command that builds the same engine.

        Paths default to the plan's bundle-relative ones (run it from the bundle root). The CLI can
        express one optimization profile per shape flag set; extra profiles are listed as comments.
        """
        tool = ENGINE_FLAVOURS[self.flavour].cli_tool or self.flavour
        trtexec = tool == "trtexec"  # the flags below are trtexec's; the tensorrt_rtx tool has its own set
        args = [tool, f"--onnx={onnx or self.onnx}", f"--saveEngine={engine or self.engine}"]
        if trtexec:
            args.append("--stronglyTyped")  # TensorRT-RTX networks are always strongly typed
        first = self.profiles[0]
        dynamic = [i for i in first.inputs if i.min != i.max]
        for flag, attr in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            if dynamic:
                args.append(flag + "=" + ",".join(f"{i.name}:{_dims(getattr(i, attr))}" for i in dynamic))
        if self.compute_capabilities:
            args.append("--computeCapabilities=" + ",".join(self.compute_capabilities))
        if self.workspace_bytes is not None:
            args.append(f"--memPoolSize=workspace:{max(1, self.workspace_bytes >> 20)}M")
        if trtexec:
            args.append(f"--builderOptimizationLevel={self.builder_optimization_level}")
            if self.hardware_compatibility != "none":
                args.append(f"--hardwareCompatibilityLevel={_TRTEXEC_HWCOMPAT[self.hardware_compatibility]}")
            if self.version_compatible:
                args.append("--versionCompatible")
        line = " ".join(shlex.quote(a) for a in args)
        if len(self.profiles) > 1:
            line += f"\n# plus {len(self.profiles) - 1} more optimization profile(s); see build_plan.json"
        return line + "\n"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)
