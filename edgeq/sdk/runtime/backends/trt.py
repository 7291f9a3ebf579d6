"""TensorRT engine backends: full TensorRT (Jetson, Hopper servers) and TensorRT-RTX (RTX GPUs).

The engine bytes come only through the store (read once, hashed, deserialized from memory). Where a
bundle carries a build plan instead of an engine (Jetson, Hopper), the engine is built on first start
with ``edgeq.sdk.engine.builder`` and cached through the version's cache hook when the store offers one.
I/O uses named tensors, device buffers of the device-memory layer (``cudart``, cuda-bindings) and one
stream (``execute_async_v3``): inputs are allocated once at the optimization profile's maximum, and the
decode loop's binder (``trt_io``) keeps the KV cache in device arenas sized at that maximum.

NOT RUN on a TensorRT engine here: no machine this project reaches executes one (full TensorRT does not
install, TensorRT-RTX refuses sm90). Tested with a stand-in engine over the same device-memory layer,
whose own calls are tested on the H200 (tests/gpu).
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
        trt = importlib.import_module(self.module)
        self._setup(trt, self._engine_bytes(version, engine), f"{version.model} v{version.version}")
        self.description = f"{self.name} ({engine.path or 'built from ' + str(engine.plan)})"

    def _setup(self, trt: Any, data: bytes, what: str) -> None:
        """Deserialize the engine and allocate every binding once, at the optimization profile's maximum."""
        from edgeq.sdk.runtime.backends.cudart import DeviceBuffer, Stream

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise RuntimeErrorBase(f"{self.flavour} could not deserialize the engine of {what}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self.input_dtypes = {n: self._dtypes[n] for n in self.input_names}
        #: the profile's maximum shape of every input (the engine was built with one profile)
        self.max_shapes = {n: tuple(int(d) for d in self._engine.get_tensor_profile_shape(n, 0)[2])
                           for n in self.input_names}
        self._infer_lock = threading.Lock()
        self._stream = Stream()
        # Inputs at the profile maximum now; outputs when the first call shows their size (a logits tensor at
        # the maximum batch x sequence x vocabulary can be gigabytes), then grown geometrically, never per call.
        self._buffers = {n: DeviceBuffer() for n in names}
        for n in self.input_names:
            self._buffers[n].reserve(_nbytes(self.max_shapes[n], self._dtypes[n]))
        self._binders: list[Any] = []

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        # One execution context, stream and buffer set serve every caller (requests and the monitor's
        # canaries come from several threads), so calls are serialised; ORT sessions need no such lock.
        with self._infer_lock:
            return self._infer_locked(feeds)

    def _infer_locked(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        from edgeq.sdk.runtime.backends.cudart import copy_d2h, copy_h2d

        ctx, stream = self._context, self._stream
        keep = []  # host arrays must outlive the async copies
        for name in self.input_names:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            keep.append(arr)
            self._set_shape(name, arr.shape)
            ptr = self._buffers[name].reserve(arr.nbytes)
            copy_h2d(ptr, arr, tag=name, stream=stream)
            ctx.set_tensor_address(name, ptr)
        outs = []
        for name in self.output_names:
            out = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._buffers[name].reserve(out.nbytes))
            outs.append(out)
        if not ctx.execute_async_v3(stream.ptr):
            raise RuntimeErrorBase(f"{self.flavour} execution failed")
        for name, out in zip(self.output_names, outs):
            copy_d2h(out, self._buffers[name].ptr, tag=name, stream=stream)
        stream.synchronize()
        return outs

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, shape):
            raise RuntimeErrorBase(f"{self.flavour}: input {name} shape {shape} is outside the engine's "
                                   f"optimization profile (max {self.max_shapes.get(name)})",
                                   hint="check the target profile's shape ranges")

    # -- the decode loop's binder ----------------------------------------------------------------------
    def binder(self, info: Any) -> Any:
        """Device bindings for one generation: KV arenas at the profile maximum, bound by address."""
        from edgeq.sdk.runtime.backends.trt_io import TrtBinder

        if "logits" not in self.output_names or "input_ids" not in self.max_shapes:
            return None
        return TrtBinder(self)

    def _close(self) -> None:
        for b in self._buffers.values():
            b.free()
        self._stream.destroy()
        self._context = self._engine = self._runtime = None


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * np.dtype(dtype).itemsize


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
    """Full TensorRT (Jetson Orin/Thor, Hopper servers): engines serialized for this GPU and library version."""

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
