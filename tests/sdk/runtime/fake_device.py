"""Stand-ins for the GPU path on a CPU: a CUDA runtime over host memory, a TensorRT engine, a toy causal LM.

``FakeCudaRuntime`` has the call shapes of ``cuda.bindings.runtime`` that ``cudart`` uses and records every
allocation and copy (with the byte ranges copied), so a test can show that no copy touched the KV arenas.
``ToyLm`` is a causal LM small enough to write in numpy whose logits depend on the whole (masked) KV cache,
so a decode that feeds the wrong past gives different tokens.
"""

from __future__ import annotations

import ctypes
import enum
import types
from collections import Counter
from typing import Any

import numpy as np


class FakeCudaRuntime:
    class cudaError_t(enum.IntEnum):  # noqa: N801 - the name cuda-bindings uses
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    def __init__(self, limit: int = 1 << 34) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.calls: Counter[str] = Counter()
        self.copies: list[tuple[str, int, int, int]] = []  # (kind, dst, src, nbytes)
        self.limit = limit
        self.live_streams = 0

    OK = cudaError_t.cudaSuccess

    # allocation
    def cudaMalloc(self, n: int) -> tuple[Any, int | None]:
        self.calls["cudaMalloc"] += 1
        if n > self.limit:
            return (self.cudaError_t.cudaErrorMemoryAllocation, None)
        a = np.zeros(int(n), np.uint8)
        self.mem[a.ctypes.data] = a
        return (self.OK, a.ctypes.data)

    def cudaFree(self, ptr: int) -> tuple[Any]:
        self.calls["cudaFree"] += 1
        if self.mem.pop(int(ptr), None) is None:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return (self.OK,)

    def is_device(self, ptr: int, nbytes: int = 1) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + a.nbytes for base, a in self.mem.items())

    # copies (host memory both sides: memmove)
    def cudaMemcpy(self, dst: int, src: int, n: int, kind: Any) -> tuple[Any]:
        self.calls["cudaMemcpy"] += 1
        self.copies.append((self.cudaMemcpyKind(kind).name, int(dst), int(src), int(n)))
        ctypes.memmove(dst, src, n)
        return (self.OK,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: Any, stream: Any) -> tuple[Any]:
        return self.cudaMemcpy(dst, src, n, kind)

    def cudaMemcpy2D(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int,
                     kind: Any) -> tuple[Any]:
        self.calls["cudaMemcpy2D"] += 1
        for r in range(height):
            self.copies.append((self.cudaMemcpyKind(kind).name, dst + r * dpitch, src + r * spitch, width))
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)
        return (self.OK,)

    def cudaMemcpy2DAsync(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int,
                          kind: Any, stream: Any) -> tuple[Any]:
        return self.cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind)

    def cudaMemset(self, ptr: int, value: int, n: int) -> tuple[Any]:
        ctypes.memset(ptr, value, n)
        return (self.OK,)

    def cudaMemsetAsync(self, ptr: int, value: int, n: int, stream: Any) -> tuple[Any]:
        return self.cudaMemset(ptr, value, n)

    # streams and sync
    def cudaStreamCreate(self) -> tuple[Any, Any]:
        self.live_streams += 1
        return (self.OK, types.SimpleNamespace(getPtr=lambda: 0xABC))

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any]:
        return (self.OK,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any]:
        self.live_streams -= 1
        return (self.OK,)

    def cudaDeviceSynchronize(self) -> tuple[Any]:
        return (self.OK,)

    def cudaGetDeviceCount(self) -> tuple[Any, int]:
        return (self.OK, 1)

    def copies_touching(self, ranges: list[tuple[int, int]]) -> list[tuple[str, int, int, int]]:
        """Copies whose source or destination overlaps any (start, nbytes) range."""
        def hit(p: int, n: int) -> bool:
            return any(p < s + m and s < p + n for s, m in ranges)

        return [c for c in self.copies if hit(c[1], c[3]) or hit(c[2], c[3])]


def host_array(ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The memory at ``ptr`` as an array (the fake device is host memory)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = (ctypes.c_char * max(n, 1)).from_address(ptr)
    return np.frombuffer(buf, dtype=np.uint8, count=n).view(dtype).reshape(shape)


class ToyLm:
    """A causal LM with a KV cache: k = v = E[id] per layer (float16); logits_t = (Σ masked values ≤ t) @ W."""

    def __init__(self, layers: int = 2, heads: int = 2, head_dim: int = 4, vocab: int = 13, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.layers, self.heads, self.head_dim, self.vocab = layers, heads, head_dim, vocab
        self.emb = rng.standard_normal((layers, vocab, heads, head_dim)).astype(np.float16)
        self.w = rng.standard_normal((heads * head_dim, vocab)).astype(np.float32)
        self.input_names = ["input_ids", "attention_mask", "position_ids"] + [
            f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self.output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    def forward(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids, mask = feeds["input_ids"], feeds["attention_mask"].astype(np.float32)
        b, n = ids.shape
        presents = []
        acc = np.zeros((b, n, self.heads * self.head_dim), np.float32)
        for i in range(self.layers):
            new = self.emb[i][ids].transpose(0, 2, 1, 3)  # (b, heads, n, dim)
            for kv in ("key", "value"):
                past = feeds[f"past_key_values.{i}.{kv}"]
                present = np.concatenate([past, new], axis=2)
                presents.append(present)
                if kv == "value":
                    vals = present.astype(np.float32) * mask[:, None, :, None]
                    cum = np.cumsum(vals, axis=2)[:, :, -n:, :]  # position t sees every kept value ≤ t
                    acc += cum.transpose(0, 2, 1, 3).reshape(b, n, -1)
        return [(acc @ self.w).astype(np.float32)] + presents


def fake_tensorrt(model: ToyLm, rt: FakeCudaRuntime | None, *, max_batch: int = 4, max_seq: int = 16,
                  max_past: int = 32) -> types.ModuleType:
    """A module with the TensorRT calls the backend makes, running ``model`` on the bound memory.

    With ``rt`` (the stand-in runtime) the engine reads and writes the host memory behind the fake device
    pointers. With None it runs on a real GPU: it copies its inputs out of and its outputs into the bound
    device addresses through edgeq's device-memory layer (tagged ``engine``: the work TensorRT would do
    on the device), so every address the backend binds must be real device memory of the right size.
    """
    from edgeq.sdk.runtime.backends import cudart

    def read(ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        if rt is not None:
            return host_array(ptr, dtype, shape).copy()
        return cudart.copy_d2h(np.empty(shape, dtype), ptr, tag="engine")

    def write(ptr: int, value: np.ndarray) -> None:
        if rt is not None:
            host_array(ptr, value.dtype, value.shape)[...] = value
        else:
            cudart.copy_h2d(ptr, np.ascontiguousarray(value), tag="engine")

    mod = types.ModuleType("fake_tensorrt")
    dtypes = {"input_ids": np.int64, "attention_mask": np.int64, "position_ids": np.int64, "logits": np.float32}
    kv = (model.heads, model.head_dim)

    class TensorIOMode(enum.Enum):
        INPUT = 0
        OUTPUT = 1

    def dtype_of(name: str) -> Any:
        return dtypes.get(name, np.float16)

    class Engine:
        names = model.input_names + model.output_names
        num_io_tensors = len(names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, n: str) -> TensorIOMode:
            return TensorIOMode.INPUT if n in model.input_names else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, n: str) -> Any:
            return dtype_of(n)

        def get_tensor_profile_shape(self, n: str, profile: int) -> list[tuple[int, ...]]:
            if n.startswith("past_key_values."):
                return [(1, kv[0], 0, kv[1]), (1, kv[0], 8, kv[1]), (max_batch, kv[0], max_past, kv[1])]
            if n == "attention_mask":
                return [(1, 1), (1, 8), (max_batch, max_past + max_seq)]
            return [(1, 1), (1, 8), (max_batch, max_seq)]

        def create_execution_context(self) -> Context:
            return Context()

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addr: dict[str, int] = {}
            self.runs = 0

        def set_input_shape(self, n: str, shape: tuple[int, ...]) -> bool:
            lo, _, hi = Engine().get_tensor_profile_shape(n, 0)
            if any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[n] = tuple(shape)
            return True

        def set_tensor_address(self, n: str, ptr: int) -> None:
            self.addr[n] = int(ptr)

        def get_tensor_shape(self, n: str) -> tuple[int, ...]:
            b, s = self.shapes["input_ids"]
            if n == "logits":
                return (b, s, model.vocab)
            past = self.shapes[n.replace("present.", "past_key_values.")]
            return (b, kv[0], past[2] + s, kv[1])

        def execute_async_v3(self, stream: int) -> bool:
            self.runs += 1
            if rt is not None:
                for n in list(self.addr):  # every binding must be device memory
                    assert rt.is_device(self.addr[n]), f"{n} is not bound to device memory"
            feeds = {n: read(self.addr[n], dtype_of(n), self.shapes[n]) for n in model.input_names}
            outs = model.forward(feeds)
            for n, val in zip(model.output_names, outs):
                write(self.addr[n], val.astype(dtype_of(n)))
            return True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine() if data == b"toy-engine" else None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    mod.TensorIOMode, mod.Runtime, mod.Logger = TensorIOMode, Runtime, Logger
    mod.nptype = lambda t: t
    return mod
