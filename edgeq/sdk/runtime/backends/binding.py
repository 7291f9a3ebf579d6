"""The seam between the decode loop and a backend's device: memory that stays where the model runs.

A backend that can keep a causal LM's KV cache on its own device returns a ``Binder`` from
``Backend.binder()``. The decode loop (``edgeq.sdk.runtime.decode``) then, per generation, reserves the
cache through ``new_buffer`` once, binds every past and present tensor by pointer on each step (nothing
copied, nothing allocated), ``feed``\\ s the few host inputs a step has (token ids, mask, positions), and
reads back only what the sampler needs: the last position's logits, or the tokens when the backend
samples greedily on its device (``next_tokens``). ONNX Runtime (CPU and CUDA, through IOBinding) and
TensorRT implement it; a backend without one is driven through ``infer`` with host arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from edgeq.sdk.runtime.backends.cudart import ALIGN


class Buffer(Protocol):
    """Memory on a binder's device: ``reserve`` returns a pointer to at least ``nbytes`` (growing only when needed)."""

    ptr: int
    capacity: int
    allocations: int

    def reserve(self, nbytes: int) -> int: ...

    def free(self) -> None: ...


class HostBuffer:
    """Host memory with ``DeviceBuffer``'s interface: where the CPU backend keeps its KV cache."""

    def __init__(self) -> None:
        self._array = np.empty(0, np.uint8)
        self.ptr = 0
        self.capacity = 0
        self.allocations = 0

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.capacity:
            size = (max(int(nbytes), 2 * self.capacity, 1) + ALIGN - 1) // ALIGN * ALIGN
            self._array = np.empty(size, np.uint8)
            self.ptr, self.capacity = self._array.ctypes.data, size
            self.allocations += 1
        return self.ptr

    def view(self, offset: int, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        """The bytes at ``offset`` as an array (no copy)."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self._array[offset:offset + n].view(dtype).reshape(shape)

    def free(self) -> None:
        self._array = np.empty(0, np.uint8)
        self.ptr = self.capacity = 0


class Binder(ABC):
    """One generation's I/O bindings on a backend's device. Not thread-safe: one generation uses one binder.

    ``device`` is where bound buffers live ("cpu" or "cuda"); ``new_buffer`` makes memory there. A binder
    whose engine has fixed shape limits (a TensorRT optimization profile) sets ``max_batch`` and
    ``max_tokens``: the KV cache is then allocated once at that size and never grows.
    """

    device: str = "cpu"
    max_batch: int | None = None
    max_tokens: int | None = None

    @abstractmethod
    def new_buffer(self) -> Buffer:
        """An empty buffer on this binder's device (the caller reserves its size)."""

    @abstractmethod
    def bind(self, name: str, ptr: int, dtype: np.dtype, shape: tuple[int, ...], *, output: bool) -> None:
        """Bind input or output ``name`` to ``shape`` elements of ``dtype`` at ``ptr`` in this device's memory."""

    def bind_many(self, dtype: np.dtype, items: Sequence[tuple[str, int, tuple[int, ...], bool]]) -> None:
        """``bind`` each (name, ptr, shape, output): a decode step rebinds every layer's past and present."""
        for name, ptr, shape, output in items:
            self.bind(name, ptr, dtype, shape, output=output)

    @abstractmethod
    def feed(self, name: str, array: np.ndarray) -> None:
        """Use a host array as input ``name`` for the next ``run`` (the backend copies it where it needs it)."""

    @abstractmethod
    def run(self) -> None:
        """Execute once with the current bindings; returns when the outputs are complete."""

    @abstractmethod
    def last_logits(self) -> np.ndarray:
        """The last position's logits of the latest run, (batch, vocab) float32 on the host."""

    def next_tokens(self) -> np.ndarray | None:
        """Greedy tokens (batch,) int64 of the latest run when this binder computes them on its device, else None."""
        return None

    def close(self) -> None:
        return None
