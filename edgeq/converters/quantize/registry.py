"""The scheme registry: one handler per quantization scheme, keyed by its config type (torchao style).

This module holds the table, the handler base class and the decorator, nothing else: the built-in
handlers live in ``schemes.py`` (the plugin module the package imports), a new scheme registers its own
the same way. Everything that lists schemes derives from here: ``get_config`` names, target-profile
validation, memory estimates, CLI help. Torch-free, so that the CLI and target validation can read it
without loading torch; a handler imports its implementation when it quantizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from edgeq.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from edgeq.converters.quantize.calibrate import CalibData
    from edgeq.converters.quantize.numerics import LinearPlan
    from edgeq.converters.sources import LoadedModel
    from edgeq.targets import TargetProfile


@dataclass
class QuantContext:
    """What a handler's ``quantize`` gets: a private, mutable copy of the torch model (schemes that fold
    scales rewrite its FP weights; the exporter then writes the folded, FP-equivalent graph), the linears
    to quantize and the calibration data."""

    loaded: LoadedModel
    cfg: Any  # the scheme's QuantConfig subclass
    linears: dict[str, torch.nn.Linear]
    calib: CalibData | None
    #: per-scheme statistics for the report (e.g. chosen alpha per group)
    stats: dict[str, Any] = field(default_factory=dict)


class SchemeHandler:
    """Everything edgeq knows of one scheme besides its config's fields. Subclass, set the class
    attributes, implement ``weight_bits`` and ``quantize``, and decorate the class with ``register_handler``.

    Class attributes:
        name: the scheme name (``--scheme``, ``--precision``, target profiles, manifests).
        config: the frozen QuantConfig subclass that selects this handler.
        block_int4: INT4 blocks along the input dimension: every quantized layer must take the block
            size, which is checked before any work (``cfg.block_size``, ``cfg.head_bits``).
        min_compute_capability: the oldest GPU whose tensor cores run the scheme (None: any GPU edgeq targets).
        refused_flavours: engine flavour -> why that library cannot run the scheme.
        runs_on_onnxruntime_cpu: False where ONNX Runtime CPU cannot execute the emitted graph (NVFP4).
    """

    name: ClassVar[str]
    config: ClassVar[type]
    block_int4: ClassVar[bool] = False
    min_compute_capability: ClassVar[str | None] = None
    refused_flavours: ClassVar[Mapping[str, str]] = {}
    #: whether ONNX Runtime CPU executes the scheme's graph (the quantizer validates through it, else through
    #: the torch simulation of the same arithmetic)
    runs_on_onnxruntime_cpu: ClassVar[bool] = True

    def weight_bits(self, cfg: Any) -> float:
        """Stored bits per quantized linear weight under ``cfg``, scales and offsets included (memory estimates)."""
        raise NotImplementedError

    def quantize(self, ctx: QuantContext) -> dict[str, LinearPlan]:
        """One LinearPlan per quantized linear of ``ctx.linears`` (an empty dict: nothing is quantized)."""
        raise NotImplementedError

    def target_problem(self, profile: TargetProfile) -> str | None:
        """Why ``profile``'s hardware cannot run this scheme, or None when it can."""
        reason = self.refused_flavours.get(profile.engine_flavour)
        if reason is not None:
            return reason
        need = self.min_compute_capability
        if need is not None and not profile.compute_capability:
            return f"{self.name} needs a GPU with compute capability >= {need}; {profile.name} has none"
        if need is not None and _cc(profile.compute_capability) < _cc(need):
            return f"{self.name} needs compute capability >= {need}; {profile.name} is {profile.compute_capability}"
        return None

    def __repr__(self) -> str:
        return f"<scheme handler {self.name!r} for {self.config.__name__}>"


def _cc(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


#: config type -> its handler: the one table of schemes, in registration order.
HANDLERS: dict[type, SchemeHandler] = {}

H = TypeVar("H", bound=SchemeHandler)


def register_handler(cls: type[H]) -> H:
    """Class decorator: register one instance of the handler class under its ``config`` type and return
    that instance (what was registered). A name or config type registered twice is refused."""
    for attr in ("name", "config"):
        if not hasattr(cls, attr):
            raise ConfigError(f"scheme handler {cls.__name__} has no {attr!r}")
    if cls.config in HANDLERS:
        raise ConfigError(f"{cls.config.__name__} already has a scheme handler: {HANDLERS[cls.config]!r}")
    if cls.name in scheme_names():
        raise ConfigError(f"scheme name {cls.name!r} is already registered", hint="pick another name")
    handler = cls()
    HANDLERS[cls.config] = handler
    return handler


def unregister_handler(config: type) -> None:
    """Remove the handler of ``config`` (a plugin unloading, a test cleaning up)."""
    HANDLERS.pop(config, None)


def handler_for(cfg: Any) -> SchemeHandler:
    """The handler of a config instance or config type."""
    typ = cfg if isinstance(cfg, type) else type(cfg)
    handler = HANDLERS.get(typ)
    if handler is None:
        raise ConfigError(f"no scheme handler is registered for {typ.__name__}",
                          hint="decorate a SchemeHandler for it with register_handler")
    return handler


def handler_named(name: str) -> SchemeHandler:
    """The handler of scheme ``name``; ConfigError listing the registered names otherwise."""
    for handler in HANDLERS.values():
        if handler.name == name:
            return handler
    raise ConfigError(f"unknown quantization scheme {name!r}; valid: {', '.join(scheme_names())}")


def scheme_names() -> tuple[str, ...]:
    """Every registered scheme name, in registration order."""
    return tuple(h.name for h in HANDLERS.values())
