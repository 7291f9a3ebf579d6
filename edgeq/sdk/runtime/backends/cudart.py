"""A minimal CUDA runtime binding through ctypes: device buffers, copies, one stream.

TensorRT executes on device pointers; the device runtime must not need torch or cuda-python for
that, so these few libcudart calls are bound directly (as Polygraphy does). Loaded lazily; unrun
on the CPU-only build machine.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

from edgeq.errors import BackendUnavailableError, RuntimeErrorBase

_H2D, _D2H = 1, 2
_LIBS = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "cudart64_13.dll", "cudart64_12.dll")


@functools.lru_cache(maxsize=1)
def _lib() -> Any:
    for name in _LIBS:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise BackendUnavailableError("libcudart (the CUDA runtime) cannot be loaded", hint="install the CUDA runtime")


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeErrorBase(f"CUDA {what} failed with status {status}")


class DeviceBuffer:
    """A device allocation that grows (never shrinks) to the largest size asked for."""

    def __init__(self) -> None:
        self.ptr = ctypes.c_void_p(0)
        self.capacity = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.capacity:
            self.free()
            _check(_lib().cudaMalloc(ctypes.byref(self.ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
            self.capacity = nbytes
        return int(self.ptr.value or 0)

    def free(self) -> None:
        if self.ptr.value:
            _lib().cudaFree(self.ptr)
            self.ptr = ctypes.c_void_p(0)
            self.capacity = 0


class Stream:
    def __init__(self) -> None:
        self.handle = ctypes.c_void_p(0)
        _check(_lib().cudaStreamCreate(ctypes.byref(self.handle)), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle.value or 0)

    def copy_h2d(self, dst: int, src_host: Any, nbytes: int) -> None:
        _check(_lib().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src_host), ctypes.c_size_t(nbytes),
                                      _H2D, self.handle), "cudaMemcpyAsync H2D")

    def copy_d2h(self, dst_host: Any, src: int, nbytes: int) -> None:
        _check(_lib().cudaMemcpyAsync(ctypes.c_void_p(dst_host), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                      _D2H, self.handle), "cudaMemcpyAsync D2H")

    def synchronize(self) -> None:
        _check(_lib().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle.value:
            _lib().cudaStreamDestroy(self.handle)
            self.handle = ctypes.c_void_p(0)
