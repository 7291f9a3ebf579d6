"""TensorRT engine backends: full TensorRT (Jetson, H100) and TensorRT-RTX (RTX GPUs).

The engine bytes come only through the store (read once, hashed, deserialized from memory). Where a
bundle carries a build plan instead of an engine (Jetson/H100), the engine is built on first start
with ``edgeq.sdk.engine.builder`` and cached through the version's cache hook when the store offers one.
I/O uses named tensors, device buffers and one stream (``execute_async_v3``).

NOT RUN on the build machine (no GPU): written against the shared TensorRT Python API and kept small.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from edgeq.errors import BackendUnavailableError, EdgeqError, RuntimeErrorBase
from edgeq.sdk.runtime.backends.base import Backend, BackendOptions, register_backend
from edgeq.sdk.bundle.manifest import EngineInfo

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _device() -> Any:
    """This machine's GPU and TensorRT libraries, probed once per process (nvidia-smi is slow)."""
    from edgeq.sdk.device import probe

    return probe()


class _TrtBackend(Backend):
    flavour: ClassVar[str]
    module: ClassVar[str]

    @classmethod
    def available(cls) -> str | None:
        if importlib.util.find_spec(cls.module) is None:
            return f"{cls.module} is not installed"
        if _device().cpu_only:
            return "no NVIDIA GPU on this machine"
        return None

    @classmethod
    def match(cls, version: Any) -> EngineInfo | None:
        from edgeq.sdk.device import engine_problem

        device = _device()
        for e in version.manifest.engines:
            if e.flavour == cls.flavour and engine_problem(e, device) is None:
                return e
        return None

    def _engine_bytes(self, version: Any, engine: EngineInfo) -> bytes:
        if engine.path is not None:
            return version.read(engine.path)
        return build_from_plan(version, engine)

    def _open(self, version: Any, engine: EngineInfo, options: BackendOptions) -> None:
        from edgeq.sdk.runtime.backends.cudart import Stream

        trt = importlib.import_module(self.module)
        data = self._engine_bytes(version, engine)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise RuntimeErrorBase(f"{self.flavour} could not deserialize the engine of {version.model} v{version.version}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self.input_dtypes = {n: self._dtypes[n] for n in self.input_names}
        from edgeq.sdk.runtime.backends.cudart import DeviceBuffer

        self._buffers = {n: DeviceBuffer() for n in names}
        self._infer_lock = threading.Lock()
        self._stream = Stream()
        self.description = f"{self.name} ({engine.path or 'built from ' + str(engine.plan)})"

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        # One execution context, stream and buffer set serve every caller (requests and the monitor's
        # canaries come from several threads), so calls are serialised; ORT sessions need no such lock.
        with self._infer_lock:
            return self._infer_locked(feeds)

    def _infer_locked(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        ctx, stream = self._context, self._stream
        keep = []  # host arrays must outlive the async copies
        for name in self.input_names:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            keep.append(arr)
            if not ctx.set_input_shape(name, arr.shape):
                raise RuntimeErrorBase(f"{self.flavour}: input {name} shape {arr.shape} is outside the engine's "
                                       "optimization profile", hint="check the target profile's shape ranges")
            ptr = self._buffers[name].ensure(arr.nbytes)
            if arr.nbytes:
                stream.copy_h2d(ptr, arr.ctypes.data, arr.nbytes)
            ctx.set_tensor_address(name, ptr)
        outs = []
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            out = np.empty(shape, dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._buffers[name].ensure(out.nbytes))
            outs.append(out)
        if not ctx.execute_async_v3(stream.ptr):
            raise RuntimeErrorBase(f"{self.flavour} execution failed")
        for name, out in zip(self.output_names, outs):
            if out.nbytes:
                stream.copy_d2h(out.ctypes.data, self._buffers[name].ptr.value, out.nbytes)
        stream.synchronize()
        return outs

    def _close(self) -> None:
        for b in self._buffers.values():
            b.free()
        self._stream.destroy()
        self._context = self._engine = self._runtime = None


def build_from_plan(version: Any, engine: EngineInfo) -> bytes:
    """Build the engine on this device from the bundle's plan; cache it with the version when possible."""
    from edgeq.sdk.engine.builder import build_engine
    from edgeq.sdk.bundle.plan import BuildPlan

    if engine.plan is None or engine.onnx is None:
        raise BackendUnavailableError(f"{version.model} v{version.version}: no engine and no plan+onnx to build one")
    from edgeq.sdk.device import probe

    # An engine is only valid for the library version and GPU it was built with: both are in the name, so
    # an upgraded TensorRT or a moved disk rebuilds instead of failing to deserialize on every start.
    dev = probe()
    lib = dev.trt_versions.get(engine.flavour, "unknown")
    cache_name = f"engine-built-{engine.flavour}-{lib}-cc{dev.compute_capability or 'none'}.engine"
    cached = getattr(version, "cache_get", None)
    if cached is not None and (data := cached(cache_name)) is not None:
        return data
    plan = BuildPlan.from_json(version.read(engine.plan).decode("utf-8"))
    for f in version.manifest.files_with_role("onnx_data"):
        version.path(f.path)
    built = build_engine(plan, version.path(engine.onnx))
    put = getattr(version, "cache_put", None)
    if put is not None:
        try:
            put(cache_name, built.engine, {"event": "engine_built", **built.info.to_dict()})
        except (EdgeqError, OSError) as exc:  # a minutes-long build is still good for this run
            log.warning("could not cache the engine built from the plan (%s); serving it uncached", exc)
    else:
        log.warning("store offers no artifact cache; the engine built from the plan is not cached")
    return built.engine


@register_backend
class TensorRTBackend(_TrtBackend):
    """Full TensorRT (Jetson Orin, H100): engines serialized for this GPU and library version."""

    name = "tensorrt"
    priority = 10
    flavour = "tensorrt"
    module = "tensorrt"


@register_backend
class TensorRTRTXBackend(_TrtBackend):
    """TensorRT-RTX (GeForce/RTX Ampere, Ada, Blackwell)."""

    name = "tensorrt_rtx"
    priority = 11
    flavour = "tensorrt_rtx"
    module = "tensorrt_rtx_bindings"
