"""TensorRT / TensorRT-RTX bindings for the decode loop: every tensor at a device address, the KV cache included.

The KV arenas are sized once at the optimization profile's maximum (``max_batch`` × ``max_tokens``), the
host inputs of a step (token ids, mask, positions) are copied into the backend's input buffers (allocated
at the profile maximum when the engine was opened), and after ``execute_async_v3`` only the last position's
logits are copied back, in one 2-D copy. Nothing is allocated or freed per step.

NOT RUN on a TensorRT engine (none runs on the machines this project reaches); tested with a stand-in
engine and a stand-in CUDA runtime on the CPU, and the device-memory calls it makes on the H200.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeq.errors import RuntimeErrorBase
from edgeq.sdk.runtime.backends import cudart
from edgeq.sdk.runtime.backends.binding import Binder, Buffer


class TrtBinder(Binder):
    """One generation's addresses on a ``_TrtBackend``; runs under the backend's lock (one context serves all)."""

    device = "cuda"

    def __init__(self, backend: Any) -> None:
        self._be = backend
        ids_max = backend.max_shapes["input_ids"]
        past = [n for n in backend.input_names if n.startswith("past_key_values.")]
        past_max = backend.max_shapes[past[0]] if past else (ids_max[0], 0, 0, 0)
        self.max_batch = int(ids_max[0])
        # the longest present: a prefill of the longest prompt, or the longest past plus one decoded token
        self.max_tokens = int(max(ids_max[1], past_max[2] + 1))
        self._addr: dict[str, int] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._host: dict[str, np.ndarray] = {}
        self._logits = cudart.DeviceBuffer()
        self._extra = {n: cudart.DeviceBuffer() for n in backend.output_names
                       if n != "logits" and not n.startswith("present.")}
        self._rows = self._n = 0
        self._vocab = 0

    def new_buffer(self) -> Buffer:
        return cudart.DeviceBuffer()

    def bind(self, name: str, ptr: int, dtype: np.dtype, shape: tuple[int, ...], *, output: bool) -> None:
        self._addr[name] = ptr
        if not output:
            self._shapes[name] = tuple(shape)

    def feed(self, name: str, array: np.ndarray) -> None:
        arr = np.ascontiguousarray(array, dtype=self._be._dtypes[name])
        if name == "input_ids":
            self._rows, self._n = arr.shape
        self._host[name] = arr  # alive until run() has synchronized the copy
        self._shapes[name] = arr.shape

    def run(self) -> None:
        be = self._be
        with be._infer_lock:
            ctx, stream = be._context, be._stream
            for name, arr in self._host.items():
                ptr = be._buffers[name].reserve(arr.nbytes)  # allocated at the profile maximum at open
                cudart.copy_h2d(ptr, arr, tag=name, stream=stream)
                self._addr[name] = ptr
            for name, shape in self._shapes.items():
                be._set_shape(name, shape)
            for name, ptr in self._addr.items():
                ctx.set_tensor_address(name, ptr)
            shape = tuple(int(d) for d in ctx.get_tensor_shape("logits"))
            self._vocab = shape[-1]
            ctx.set_tensor_address("logits", self._logits.reserve(_nbytes(shape, be._dtypes["logits"])))
            for name, buf in self._extra.items():  # outputs the decode loop does not read still need an address
                ctx.set_tensor_address(name, buf.reserve(_nbytes(ctx.get_tensor_shape(name), be._dtypes[name])))
            if not ctx.execute_async_v3(stream.ptr):
                raise RuntimeErrorBase(f"{be.flavour} execution failed")
            stream.synchronize()
        self._host.clear()

    def last_logits(self) -> np.ndarray:
        dt = self._be._dtypes["logits"]
        rows, n, v = self._rows, self._n, self._vocab
        out = np.empty((rows, v), dt)
        row = v * dt.itemsize
        cudart.copy_rows_d2h(out, self._logits.ptr + (n - 1) * row, n * row, tag="logits")
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self._logits.free()
        for buf in self._extra.values():
            buf.free()


def _nbytes(shape: Any, dtype: np.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * np.dtype(dtype).itemsize
