"""One engine builder over the API that ``tensorrt`` and TensorRT-RTX (``tensorrt_rtx_bindings``) share.

The host (``edgeq build``) and the device runtime (first start of a ``build_on = "device"`` target) both call
``build_engine(plan, onnx_path)``. The library is imported lazily through a flavour registry; what
differs between the two libraries is one small ``configure`` function per flavour. No torch here.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import BackendUnavailableError, ConfigError, EngineBuildError, OnnxParseError
from edgeq.sdk.bundle.flavours import engine_flavour
from edgeq.sdk.bundle.plan import BuildPlan

log = logging.getLogger(__name__)

Configure = Callable[[Any, Any, BuildPlan], None]
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Flavour:
    """A TensorRT library: the module to import and the flavour-specific builder-config step."""

    name: str
    module: str
    configure: Configure
    install_hint: str


FLAVOURS: dict[str, Flavour] = {}


def register_flavour(name: str) -> Callable[[Configure], Configure]:
    """Register ``configure(trt, config, plan)`` for a flavour of ``edgeq.sdk.bundle.flavours`` (its module and
    install hint come from there); returns the function unchanged."""
    row = engine_flavour(name)

    def deco(fn: Configure) -> Configure:
        FLAVOURS[name] = Flavour(name, row.module, fn, row.install_hint)
        return fn

    return deco


def _flavour(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ConfigError(f"unknown engine flavour {name!r}; known: {sorted(FLAVOURS)}") from None


def flavour_available(name: str) -> bool:
    """Whether the flavour's library can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(_flavour(name).module) is not None
    except (ImportError, ValueError):
        return False


def import_flavour(name: str) -> Any:
    """Import the flavour's module, or raise BackendUnavailableError saying how to get it."""
    fl = _flavour(name)
    try:
        return importlib.import_module(fl.module)
    except ImportError as exc:
        raise BackendUnavailableError(f"{fl.module} is not importable here: {exc}", hint=fl.install_hint) from exc


def library_version(name: str) -> str:
    return str(getattr(import_flavour(name), "__version__", "unknown"))


# -- flavour-specific configuration -----------------------------------------------------------------
@register_flavour("tensorrt_rtx")
def _configure_rtx(trt: Any, config: Any, plan: BuildPlan) -> None:
    # TensorRT-RTX builds ahead of time for named compute capabilities, so a CPU-only host works.
    # No timing cache: creating one makes TensorRT-RTX query the (absent) GPU (plan refuses it).
    caps = plan.compute_capabilities
    if caps:
        config.num_compute_capabilities = len(caps)
        for i, cc in enumerate(caps):
            member = "SM" + cc.replace(".", "")
            if not hasattr(trt.ComputeCapability, member):
                known = [m for m in trt.ComputeCapability.__members__ if m.startswith("SM")]
                raise ConfigError(f"TensorRT-RTX {trt.__version__} cannot build for compute capability {cc}; it knows {known}")
            config.set_compute_capability(getattr(trt.ComputeCapability, member), i)


_HWCOMPAT_ENUM = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


@register_flavour("tensorrt")
def _configure_tensorrt(trt: Any, config: Any, plan: BuildPlan) -> None:
    # Full TensorRT builds for the GPU it runs on; portability is hardware/version compatibility.
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, _HWCOMPAT_ENUM[plan.hardware_compatibility])
    if plan.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if plan.timing_cache:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


# -- results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineBuildInfo:
    """How an engine was built: recorded in the bundle manifest."""

    flavour: str
    library_version: str
    seconds: float
    peak_rss_bytes: int
    peak_rss_method: str
    engine_size: int
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "flavour": self.flavour,
            "library_version": self.library_version,
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_rss_method": self.peak_rss_method,
            "engine_size": self.engine_size,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class BuiltEngine:
    engine: bytes = field(repr=False)
    info: EngineBuildInfo


# -- the builder ----------------------------------------------------------------------------------------
def build_engine(plan: BuildPlan, onnx_path: str | Path) -> BuiltEngine:
    """Parse the QDQ ONNX into a strongly typed network and build a serialized engine per ``plan``.

    Raises OnnxParseError (names the rejected nodes), EngineBuildError (with the builder's log
    tail), BackendUnavailableError (library missing), ConfigError (plan the library cannot honour).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file not found: {onnx_path}")
    trt = import_flavour(plan.flavour)
    logger = _make_logger(trt)
    peak = _PeakRss()
    start = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (model.onnx.data) relative to the ONNX file.
    if not parser.parse_from_file(str(onnx_path)):
        raise OnnxParseError(_parser_message(parser, onnx_path), hint="check the ONNX opset (21) and the quantizer's output")
    config = builder.create_builder_config()
    _add_profiles(trt, builder, network, config, plan)
    if plan.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    config.builder_optimization_level = plan.builder_optimization_level
    _flavour(plan.flavour).configure(trt, config, plan)
    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as exc:  # the bindings raise plain exceptions for API misuse
        raise EngineBuildError(_build_message(logger, f"{type(exc).__name__}: {exc}")) from exc
    if serialized is None:
        raise EngineBuildError(_build_message(logger, "the builder returned no engine"), hint=_hint(logger))
    engine = bytes(memoryview(serialized))
    seconds = time.perf_counter() - start
    rss, method = peak.read()
    info = EngineBuildInfo(
        flavour=plan.flavour,
        library_version=str(getattr(trt, "__version__", "unknown")),
        seconds=seconds,
        peak_rss_bytes=rss,
        peak_rss_method=method,
        engine_size=len(engine),
        warnings=tuple(logger.warnings),
    )
    log.info("built %s engine (%d bytes) in %.1f s", plan.flavour, len(engine), seconds)
    return BuiltEngine(engine=engine, info=info)


def _add_profiles(trt: Any, builder: Any, network: Any, config: Any, plan: BuildPlan) -> None:
    net_inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    dynamic = {n for n, shape in net_inputs.items() if any(d < 0 for d in shape)}
    for k, p in enumerate(plan.profiles):
        named = {i.name for i in p.inputs}
        unknown = sorted(named - set(net_inputs))
        missing = sorted(dynamic - named)
        if unknown or missing:
            raise ConfigError(
                f"optimization profile {k} does not match the network: unknown inputs {unknown}, "
                f"dynamic inputs without shapes {missing}; network inputs: {sorted(net_inputs)}"
            )
        profile = builder.create_optimization_profile()
        for i in p.inputs:
            if len(i.min) != len(net_inputs[i.name]):
                raise ConfigError(f"input {i.name!r} has rank {len(net_inputs[i.name])}, plan gives {len(i.min)}")
            profile.set_shape(i.name, i.min, i.opt, i.max)
        config.add_optimization_profile(profile)


def _parser_message(parser: Any, onnx_path: Path) -> str:
    parts = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        parts.append(f"node {e.node_name() or '#' + str(e.node())} ({e.node_operator() or '?'}): {e.desc()}")
    shown = "; ".join(parts[:5]) + (f"; … {len(parts) - 5} more" if len(parts) > 5 else "")
    return f"TensorRT's ONNX parser rejected {onnx_path.name}: {shown or 'no error detail given'}"


#: Builder log patterns -> what to do about them (first match wins).
_HINTS = (
    ("OutOfMemory", "the profile's max shapes need more builder scratch memory than workspace_mib allows: "
                    "lower the target's max batch/sequence/past or raise workspace_mib"),
    ("HW-specific datatypes", "the precision is not supported by that compute capability; pick another precision"),
)


def _hint(logger: Any) -> str:
    text = "\n".join(logger.tail)
    for pattern, hint in _HINTS:
        if pattern in text:
            return hint
    return "the builder log tail names the failing layer; set EDGEQ_DEBUG=1 for the traceback"


def _build_message(logger: Any, what: str) -> str:
    errors = [line for line in logger.tail if line.startswith("ERROR")]
    head = errors[-1] if errors else what
    return f"engine build failed: {head}\nbuilder log tail:\n" + "\n".join(logger.tail)


def _make_logger(trt: Any) -> Any:
    """A logger (subclass of the flavour's ILogger) that keeps the tail for error messages."""

    class _TailLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        # TensorRT warnings go to the build info (and the manifest); they are advice, not failures.
        _LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.INFO,
                   "INFO": logging.DEBUG, "VERBOSE": logging.DEBUG}

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = str(severity).rsplit(".", 1)[-1]
            if level == "VERBOSE":
                return  # thousands of lines per build; never useful in an error message
            line = f"{level}: {msg}"
            self.tail.append(line)
            if level == "WARNING" and len(self.warnings) < 50:
                self.warnings.append(msg)
            log.log(self._LEVELS.get(level, logging.DEBUG), "%s", msg)

    return _TailLogger()


class _PeakRss:
    """Peak resident memory of this process during the build.

    Linux lets a process reset its high-water mark (write 5 to /proc/self/clear_refs), so the
    figure covers this build only; elsewhere the process-lifetime ru_maxrss is reported instead, and
    where there is no ``resource`` module (Windows) 0 with the method ``unavailable``.
    Side effect: the process's earlier high-water mark (and so a later ru_maxrss) is forgotten.
    """

    _HWM = re.compile(r"VmHWM:\s+(\d+)\s+kB")

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "vmhwm-reset"
        except OSError:
            self.method = "ru_maxrss"

    def read(self) -> tuple[int, str]:
        if self.method == "vmhwm-reset":
            try:
                with open("/proc/self/status") as f:
                    m = self._HWM.search(f.read())
                if m:
                    return int(m.group(1)) * 1024, self.method
            except OSError:
                pass
        try:
            import resource  # POSIX only: a Windows RTX PC has no getrusage
        except ImportError:
            return 0, "unavailable"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
