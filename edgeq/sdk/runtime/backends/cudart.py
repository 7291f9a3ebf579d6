"""The device-memory layer of the GPU backends: CUDA buffers, copies and streams on NVIDIA's cuda-bindings.

One layer for every GPU path: the ONNX Runtime IOBinding decode keeps its KV cache in these buffers
(bound by pointer), and the TensorRT / TensorRT-RTX backends bind every tensor to them at the profile
maximum. A buffer grows geometrically and never shrinks, so a cache that grows by a token does not
reallocate. Every host↔device copy goes through ``copy_*`` and is counted by tag in ``COPIES``, which is
how tests and the benchmark show that no KV byte crosses to the host.

``cuda.bindings.runtime`` (the ``cuda-bindings`` package, ``pip install edgeq[gpu]``) is imported on first
use; tests swap in a stand-in with the same call shapes through ``use_runtime``.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np

from edgeq.errors import BackendUnavailableError, RuntimeErrorBase

#: Allocations are rounded up to this (cudaMalloc's own alignment), so sub-buffers stay aligned.
ALIGN = 256
_RT: Any = None
_RT_LOCK = threading.Lock()


def use_runtime(module: Any) -> Any:
    """Use ``module`` as the CUDA runtime binding (None: import cuda-bindings again on next use). Returns the old one."""
    global _RT
    with _RT_LOCK:
        old, _RT = _RT, module
    return old


def runtime() -> Any:
    """``cuda.bindings.runtime``, imported once; BackendUnavailableError when cuda-bindings is missing."""
    global _RT
    if _RT is None:
        with _RT_LOCK:
            if _RT is None:
                try:
                    from cuda.bindings import runtime as rt
                except ImportError as exc:
                    raise BackendUnavailableError(
                        f"cuda-bindings cannot be imported ({exc})", hint="pip install 'edgeq[gpu]' (cuda-bindings)"
                    ) from exc
                _RT = rt
    return _RT


def check(result: Any, what: str, rt: Any = None) -> Any:
    """Unpack a cuda-bindings ``(cudaError_t, value...)`` result, raising RuntimeErrorBase on an error."""
    rt = rt or runtime()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        raise RuntimeErrorBase(f"CUDA {what} failed: {name}", hint="check the GPU, its driver and free device memory")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """CUDA devices visible to this process (0 when there is no driver or no GPU)."""
    rt = runtime()
    err, n = rt.cudaGetDeviceCount()
    return int(n) if err == rt.cudaError_t.cudaSuccess else 0


def _round_up(n: int) -> int:
    return (max(int(n), 1) + ALIGN - 1) // ALIGN * ALIGN


# -- counting ------------------------------------------------------------------------------------------
class CopyStats:
    """Host↔device copies by (direction, tag): count and bytes. Direction is "h2d", "d2h" or "d2d"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()

    def record(self, direction: str, tag: str, nbytes: int) -> None:
        with self._lock:
            self.count[(direction, tag)] += 1
            self.bytes[(direction, tag)] += int(nbytes)

    def host_copies(self, tag: str) -> int:
        """Copies of ``tag`` that crossed between host and device (either way)."""
        return self.count[("h2d", tag)] + self.count[("d2h", tag)]

    def host_bytes(self, tag: str) -> int:
        return self.bytes[("h2d", tag)] + self.bytes[("d2h", tag)]

    def reset(self) -> None:
        with self._lock:
            self.count.clear()
            self.bytes.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {f"{d}:{t}": {"copies": c, "bytes": self.bytes[(d, t)]} for (d, t), c in sorted(self.count.items())}


#: every copy this process made through the layer
COPIES = CopyStats()


# -- buffers and streams -----------------------------------------------------------------------------------
class DeviceBuffer:
    """One device allocation. ``reserve`` grows it (at least doubling) only when asked for more than it holds.

    Contents are not kept across a growth: callers size a buffer before they fill it (the KV cache per
    generation, TensorRT bindings at the profile maximum), so a grown buffer never needs its old bytes.
    """

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.capacity = 0
        self._rt: Any = None  # the binding that allocated it frees it
        #: how many times cudaMalloc ran for this buffer (tests pin that a growing cache does not reallocate)
        self.allocations = 0
        if nbytes:
            self.reserve(nbytes)

    def reserve(self, nbytes: int) -> int:
        """The device pointer of at least ``nbytes`` bytes (allocating only when the buffer is too small)."""
        if nbytes > self.capacity:
            size = _round_up(max(nbytes, 2 * self.capacity))
            self.free()
            rt = self._rt = runtime()
            self.ptr = int(check(rt.cudaMalloc(size), f"cudaMalloc({size} bytes)", rt))
            self.capacity = size
            self.allocations += 1
        return self.ptr

    ensure = reserve

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.capacity = self.ptr, 0, 0
            check(self._rt.cudaFree(ptr), "cudaFree", self._rt)

    def __del__(self) -> None:  # a backend closes its buffers; this only covers one dropped on an error path
        try:
            self.free()
        except Exception:  # noqa: BLE001 - interpreter shutdown or a dead context: nothing left to free
            pass


class Stream:
    """A CUDA stream (created on first use of the device by this process)."""

    def __init__(self) -> None:
        self._rt = runtime()
        self._stream = check(self._rt.cudaStreamCreate(), "cudaStreamCreate", self._rt)

    @property
    def handle(self) -> Any:
        return self._stream

    @property
    def ptr(self) -> int:
        """The stream as an integer, as TensorRT's ``execute_async_v3`` takes it."""
        if self._stream is None:
            return 0
        get = getattr(self._stream, "getPtr", None)
        return int(get()) if get is not None else int(self._stream)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize", self._rt)

    def destroy(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy", self._rt)


# -- copies (every one counted) ---------------------------------------------------------------------------------
def _kind(name: str) -> Any:
    return getattr(runtime().cudaMemcpyKind, name)


def copy_h2d(dst: int, src: np.ndarray, *, tag: str, stream: Stream | None = None) -> None:
    """Host array → device pointer (contiguous bytes). With a stream the copy is asynchronous: keep ``src`` alive."""
    if not src.flags.c_contiguous:
        raise RuntimeErrorBase("copy_h2d needs a C-contiguous host array")
    n = src.nbytes
    if n:
        rt = runtime()
        kind = _kind("cudaMemcpyHostToDevice")
        if stream is None:
            check(rt.cudaMemcpy(dst, src.ctypes.data, n, kind), "cudaMemcpy H2D")
        else:
            check(rt.cudaMemcpyAsync(dst, src.ctypes.data, n, kind, stream.handle), "cudaMemcpyAsync H2D")
    COPIES.record("h2d", tag, n)


def copy_d2h(dst: np.ndarray, src: int, *, tag: str, stream: Stream | None = None) -> np.ndarray:
    """Device pointer → host array (its whole size). With a stream, synchronize before reading ``dst``."""
    if not dst.flags.c_contiguous:
        raise RuntimeErrorBase("copy_d2h needs a C-contiguous host array")
    n = dst.nbytes
    if n:
        rt = runtime()
        kind = _kind("cudaMemcpyDeviceToHost")
        if stream is None:
            check(rt.cudaMemcpy(dst.ctypes.data, src, n, kind), "cudaMemcpy D2H")
        else:
            check(rt.cudaMemcpyAsync(dst.ctypes.data, src, n, kind, stream.handle), "cudaMemcpyAsync D2H")
    COPIES.record("d2h", tag, n)
    return dst


def copy_rows_d2h(dst: np.ndarray, src: int, src_pitch: int, *, tag: str, stream: Stream | None = None) -> np.ndarray:
    """Rows of a strided device array → a (rows, ...) host array in one 2-D copy.

    Row ``r`` of ``dst`` comes from ``src + r * src_pitch``: the last position of every sequence of a
    (batch, seq, vocab) logits tensor is ``src = base + (seq - 1) * vocab * 4`` with pitch ``seq * vocab * 4``.
    """
    if not dst.flags.c_contiguous or dst.ndim < 1:
        raise RuntimeErrorBase("copy_rows_d2h needs a C-contiguous host array")
    rows = dst.shape[0]
    width = dst.nbytes // rows if rows else 0
    if width > src_pitch:
        raise RuntimeErrorBase(f"copy_rows_d2h: row of {width} bytes is wider than the pitch {src_pitch}")
    if rows and width:
        rt = runtime()
        kind = _kind("cudaMemcpyDeviceToHost")
        if stream is None:
            check(rt.cudaMemcpy2D(dst.ctypes.data, width, src, src_pitch, width, rows, kind), "cudaMemcpy2D D2H")
        else:
            check(rt.cudaMemcpy2DAsync(dst.ctypes.data, width, src, src_pitch, width, rows, kind, stream.handle),
                  "cudaMemcpy2DAsync D2H")
    COPIES.record("d2h", tag, dst.nbytes)
    return dst


def copy_d2d(dst: int, src: int, nbytes: int, *, tag: str, stream: Stream | None = None) -> None:
    if nbytes:
        rt = runtime()
        kind = _kind("cudaMemcpyDeviceToDevice")
        if stream is None:
            check(rt.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy D2D")
        else:
            check(rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream.handle), "cudaMemcpyAsync D2D")
    COPIES.record("d2d", tag, nbytes)


def memset(ptr: int, value: int, nbytes: int, *, stream: Stream | None = None) -> None:
    if nbytes:
        rt = runtime()
        if stream is None:
            check(rt.cudaMemset(ptr, value, nbytes), "cudaMemset")
        else:
            check(rt.cudaMemsetAsync(ptr, value, nbytes, stream.handle), "cudaMemsetAsync")


def synchronize() -> None:
    """Wait for all work on the current device."""
    check(runtime().cudaDeviceSynchronize(), "cudaDeviceSynchronize")
