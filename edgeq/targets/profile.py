"""The target profile schema: one frozen, typed record per kind of hardware, validated on load.

Profiles are data (``edgeq/targets/profiles/*.toml``); this module only says what a valid one looks
like. Every field carries a one-line hardware reason here and, as a comment, in each TOML file.
Standard library and the bundle format's tables only (``edgeq.targets`` sits below the converters and
beside the device runtime): tasks, engine flavours and compute dtypes come from ``edgeq.sdk.bundle``.
Precision names are only checked for their form here; that each names a quantization scheme is checked
against the scheme registry where the converters load a profile (``edgeq.converters.build_checks``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.flavours import COMPUTE_DTYPES, ENGINE_FLAVOURS, TENSORRT_FLAVOURS
from edgeq.sdk.bundle.model_info import CONVERTIBLE_TASKS, TASK_SPECS
from edgeq.sdk.bundle.plan import HARDWARE_COMPAT_LEVELS

SCHEMA_VERSION = 1

#: Tasks a profile states precisions and shapes for.
KNOWN_TASKS = CONVERTIBLE_TASKS
#: Where the engine can be built: ``host`` (anywhere, CPU-only included) or ``device`` (needs the GPU).
BUILD_LOCATIONS = ("host", "device")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_CC = re.compile(r"^\d{1,2}\.\d$")


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max of one dynamic axis: the optimization profile TensorRT tunes kernels for."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.min, self.opt, self.max)):
            raise ConfigError(f"shape range values must be integers, got {self.as_list()}")
        if not 0 <= self.min <= self.opt <= self.max or self.max == 0:
            raise ConfigError(f"shape range must satisfy 0 <= min <= opt <= max, max > 0; got {self.as_list()}")

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    @classmethod
    def parse(cls, value: Any, where: str) -> ShapeRange:
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ConfigError(f"{where}: expected [min, opt, max], got {value!r}")
        return cls(*value)


@dataclass(frozen=True)
class TaskShapes:
    """Dynamic-axis ranges for one task. ``past`` (KV cache length) only applies to text generation."""

    batch: ShapeRange
    sequence: ShapeRange
    past: ShapeRange | None = None

    def axes(self) -> dict[str, ShapeRange]:
        out = {"batch": self.batch, "sequence": self.sequence}
        if self.past is not None:
            out["past"] = self.past
        return out


@dataclass(frozen=True)
class TargetProfile:
    """One kind of target hardware. Field reasons (the TOML files repeat them per target):

    - ``compute_capability``: the SM version; decides which tensor-core datatypes exist (FP8 needs >= 8.9).
      Empty for a CPU target (``engine_flavour = "onnx"``): there is no GPU.
    - ``engine_flavour``: full TensorRT (Jetson, data centre), TensorRT for RTX (consumer GPUs), or ``onnx``
      (ONNX Runtime runs the QDQ ONNX itself: CPU targets; no engine is built).
    - ``build_on``: TensorRT-RTX builds anywhere; full TensorRT builds on the device it serves; an ``onnx``
      target has nothing to build, so the host writes the whole bundle.
    - ``hardware_compatibility`` / ``version_compatible``: TensorRT portability switches (not on JetPack).
    - ``compute_dtype``: dtype of activations and unquantized weights (tensor cores run FP16); one the
      quantizer produces (``edgeq.sdk.bundle.flavours.COMPUTE_DTYPES``), refused here otherwise.
    - ``builder_optimization_level``, ``workspace_mib``: build effort and tactic scratch memory.
    - ``dla_cores``: NVDLA engines present (Jetson AGX/NX); 0 on discrete GPUs.
    - ``memory_variants_gb`` / ``default_variant`` / ``usable_memory_fraction``: the memory budget
      (shared CPU/GPU memory on Jetson, VRAM on discrete GPUs) and how much of it a model may use.
    - ``precisions`` / ``default_precision`` per task; ``unsupported`` maps a precision to why not.
    - ``shapes`` per task: batch / sequence / past-length ranges for the optimization profile.
    - ``accuracy_budget`` per task: what every default build must meet on held-out text (``ppl+1%``,
      ``cosine>=0.995``; parsed where the converters load the profile). A task without one gets the outer
      bound (``edgeq.converters.build_checks.DEFAULT_BUDGETS``).
    - ``upgrade_precisions`` per task: the rungs, cheapest first, that a budget may raise sensitive layers to
      before leaving them unquantized (e.g. ``int8-wo`` above ``int4-awq``); each a precision of the task.
    - ``aliases``: other names ``get_profile`` answers to (a renamed target keeps its old name working).
    """

    name: str
    description: str
    engine_flavour: str
    build_on: str
    precisions: dict[str, tuple[str, ...]]
    default_precision: dict[str, str]
    shapes: dict[str, TaskShapes]
    memory_variants_gb: dict[str, float]
    default_variant: str
    usable_memory_fraction: float
    unsupported: dict[str, str] = field(default_factory=dict)
    compute_capability: str = ""
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    compute_dtype: str = "float16"
    builder_optimization_level: int = 3
    workspace_mib: int = 1024
    dla_cores: int = 0
    accuracy_budget: dict[str, str] = field(default_factory=dict)
    upgrade_precisions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check(self.schema_version == SCHEMA_VERSION, f"schema_version {self.schema_version} != {SCHEMA_VERSION}")
        _check(bool(_NAME.match(self.name or "")), f"invalid profile name {self.name!r} (lowercase, digits, '-')")
        _one_of("engine_flavour", self.engine_flavour, tuple(ENGINE_FLAVOURS))
        _one_of("build_on", self.build_on, BUILD_LOCATIONS)
        flavour = ENGINE_FLAVOURS[self.engine_flavour]
        if flavour.tensorrt:
            _check(bool(_CC.match(self.compute_capability)),
                   f"compute_capability must look like '8.9', got {self.compute_capability!r}")
            _check(self.build_on == "device" or flavour.cross_builds,
                   f"build_on = 'host' needs a flavour that builds without the target GPU; {flavour.title} builds on the device")
        else:  # a CPU target: ONNX Runtime runs the ONNX, nothing is built for a GPU
            _check(self.compute_capability == "", f"a {flavour.title} target has no GPU: drop compute_capability "
                   f"(got {self.compute_capability!r})")
            _check(self.build_on == "host", f"a {flavour.title} target has no engine to build on the device: build_on = 'host'")
        _one_of("hardware_compatibility", self.hardware_compatibility, HARDWARE_COMPAT_LEVELS)
        _one_of("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        object.__setattr__(self, "aliases", (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases))
        for alias in self.aliases:
            _check(isinstance(alias, str) and bool(_NAME.match(alias)) and alias != self.name,
                   f"invalid alias {alias!r} (lowercase, digits, '-'; not the profile's own name)")
        _check(0 <= self.builder_optimization_level <= 5, "builder_optimization_level must be 0..5")
        _check(self.workspace_mib > 0 and self.dla_cores >= 0, "workspace_mib must be > 0 and dla_cores >= 0")
        _check(0 < self.usable_memory_fraction <= 1, "usable_memory_fraction must be in (0, 1]")
        _check(bool(self.memory_variants_gb), "memory_variants_gb must list at least one variant")
        _check(all(v > 0 for v in self.memory_variants_gb.values()), "memory variants must be > 0 GB")
        _one_of("default_variant", self.default_variant, tuple(self.memory_variants_gb))
        object.__setattr__(self, "precisions", {t: tuple(p) for t, p in self.precisions.items()})
        _check(bool(self.precisions), "precisions must name at least one task")
        for task, precs in self.precisions.items():
            _one_of("precisions task", task, KNOWN_TASKS)
            _check(bool(precs), f"precisions.{task} is empty")
            for p in precs:
                _check(isinstance(p, str) and bool(_NAME.match(p)), f"precisions.{task}: {p!r} is not a precision name")
                _check(p not in self.unsupported, f"{p} is both supported and unsupported")
            _check(task in self.default_precision, f"default_precision.{task} is missing")
            _check(task in self.shapes, f"shapes.{task} is missing")
        for task, p in self.default_precision.items():
            _check(task in self.precisions and p in self.precisions[task],
                   f"default_precision.{task} = {p!r} is not in precisions.{task}")
        for p in self.unsupported:
            _check(bool(_NAME.match(p)), f"unsupported: {p!r} is not a precision name")
        for task, budget in self.accuracy_budget.items():
            _one_of("accuracy_budget task", task, KNOWN_TASKS)
            _check(isinstance(budget, str) and bool(budget.strip()), f"accuracy_budget.{task} must be a budget like 'ppl+1%'")
        object.__setattr__(self, "upgrade_precisions", {t: tuple(p) for t, p in self.upgrade_precisions.items()})
        for task, rungs in self.upgrade_precisions.items():
            _one_of("upgrade_precisions task", task, KNOWN_TASKS)
            for p in rungs:
                _check(p in self.precisions.get(task, ()), f"upgrade_precisions.{task}: {p!r} is not in precisions.{task}")
                _check(p != self.default_precision.get(task), f"upgrade_precisions.{task}: {p!r} is the default itself")
        for task, s in self.shapes.items():
            _one_of("shapes task", task, KNOWN_TASKS)
            has_kv = TASK_SPECS[task].kv_cache
            _check(s.past is not None or not has_kv, f"shapes.{task} needs a past range (KV cache length)")
            _check(s.past is None or has_kv, f"shapes.{task} has a past range but {task} has no KV cache")

    # -- queries ------------------------------------------------------------------------------
    @property
    def sm(self) -> str:
        """``sm89`` style name of the compute capability (``cpu`` for a target without a GPU)."""
        return "sm" + self.compute_capability.replace(".", "") if self.compute_capability else "cpu"

    @property
    def builds_engine(self) -> bool:
        """Whether bundles for this target carry a TensorRT engine (or a plan for one); False: ONNX only."""
        return ENGINE_FLAVOURS[self.engine_flavour].tensorrt

    def memory_budget_bytes(self, variant: str | None = None) -> int:
        """Bytes a model (weights + KV cache) may use on ``variant`` (default: ``default_variant``)."""
        v = variant or self.default_variant
        if v not in self.memory_variants_gb:
            raise ConfigError(
                f"unknown memory variant {v!r} for {self.name}", hint=f"use one of: {', '.join(self.memory_variants_gb)}"
            )
        return int(self.memory_variants_gb[v] * (1 << 30) * self.usable_memory_fraction)

    def supports(self, task: str, precision: str) -> bool:
        return precision in self.precisions.get(task, ())

    def all_precisions(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for precs in self.precisions.values():
            seen.update(dict.fromkeys(precs))
        return tuple(seen)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["precisions"] = {t: list(p) for t, p in self.precisions.items()}
        d["aliases"] = list(self.aliases)
        d["upgrade_precisions"] = {t: list(p) for t, p in self.upgrade_precisions.items()}
        d["shapes"] = {
            t: {axis: r.as_list() for axis, r in s.axes().items()} for t, s in self.shapes.items()
        }
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> TargetProfile:
        """Build and validate a profile from parsed TOML/JSON; unknown keys are refused (typos)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown profile fields {unknown}", hint=f"valid fields: {sorted(known)}")
        d = dict(data)
        try:
            shapes = {}
            for task, axes in (d.get("shapes") or {}).items():
                extra = set(axes) - {"batch", "sequence", "past"}
                _check(not extra, f"shapes.{task}: unknown axes {sorted(extra)}")
                shapes[task] = TaskShapes(
                    batch=ShapeRange.parse(axes.get("batch"), f"shapes.{task}.batch"),
                    sequence=ShapeRange.parse(axes.get("sequence"), f"shapes.{task}.sequence"),
                    past=ShapeRange.parse(axes["past"], f"shapes.{task}.past") if "past" in axes else None,
                )
            d["shapes"] = shapes
            d["memory_variants_gb"] = {k: float(v) for k, v in (d.get("memory_variants_gb") or {}).items()}
            return cls(**d)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid profile: {exc}") from exc


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{what}: {value!r} is not one of {list(allowed)}")
