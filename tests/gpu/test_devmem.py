"""The device-memory layer the TensorRT backends and the CUDA IOBinding decode use, on a real GPU.

TensorRT cannot run on the machines this project reaches, so the TensorRT backend is driven here by a
stand-in engine that reads and writes the device addresses it is given through this layer: the backend's
own buffer management, bindings and copies are the real ones, on real device memory.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.errors import RuntimeErrorBase
from edgeq.sdk.bundle.model_info import ModelInfo
from edgeq.sdk.runtime.backends import cudart
from edgeq.sdk.runtime.backends.trt import TensorRTBackend
from edgeq.sdk.runtime.decode import GenerationConfig, LmStepper, generate_ids
from tests.sdk.runtime.fake_device import ToyLm, fake_tensorrt

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_device")]


def test_buffers_round_trip_random_data_and_grow_geometrically() -> None:
    rng = np.random.default_rng()
    buf = cudart.DeviceBuffer()
    per_token = 8 * 8 * 64 * 2
    for t in range(1, 2049):
        buf.reserve(t * per_token)
    assert buf.allocations <= 13 and buf.capacity >= 2048 * per_token
    x = rng.standard_normal(2048 * per_token // 4).astype(np.float32)
    cudart.copy_h2d(buf.ptr, x, tag="test")
    back = cudart.copy_d2h(np.full_like(x, np.nan), buf.ptr, tag="test")  # poisoned before the copy
    np.testing.assert_array_equal(back, x)
    ptr = buf.ptr
    assert buf.reserve(1) == ptr  # never shrinks, never moves when big enough
    buf.free()
    assert buf.ptr == 0 and buf.capacity == 0


def test_async_copies_on_a_stream_and_last_position_rows() -> None:
    rng = np.random.default_rng()
    b, s, v = 5, 7, 49152
    logits = rng.standard_normal((b, s, v)).astype(np.float32)
    buf = cudart.DeviceBuffer(logits.nbytes)
    stream = cudart.Stream()
    cudart.copy_h2d(buf.ptr, logits, tag="test", stream=stream)
    last = np.full((b, v), np.nan, np.float32)
    row = v * 4
    cudart.copy_rows_d2h(last, buf.ptr + (s - 1) * row, s * row, tag="test", stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(last, logits[:, -1, :])
    other = cudart.DeviceBuffer(logits.nbytes)
    cudart.copy_d2d(other.ptr, buf.ptr, logits.nbytes, tag="test", stream=stream)
    cudart.memset(buf.ptr, 0, logits.nbytes, stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(cudart.copy_d2h(np.empty_like(logits), other.ptr, tag="test"), logits)
    assert not cudart.copy_d2h(np.empty_like(logits), buf.ptr, tag="test").any()
    stream.destroy()
    buf.free(), other.free()


def test_failures_are_typed_errors() -> None:
    with pytest.raises(RuntimeErrorBase, match="cudaMalloc"):
        cudart.DeviceBuffer(1 << 50)  # a petabyte
    with pytest.raises(RuntimeErrorBase, match="wider than the pitch"):
        cudart.copy_rows_d2h(np.empty((2, 8), np.float32), 0, 16, tag="test")


def test_trt_backend_binds_real_device_memory_allocated_once() -> None:
    m = ToyLm(layers=3, heads=2, head_dim=8, vocab=29)
    info = ModelInfo(task="text-generation", num_layers=m.layers, num_key_value_heads=m.heads,
                     head_dim=m.head_dim, vocab_size=m.vocab)
    be = TensorRTBackend()
    be._setup(fake_tensorrt(m, None), b"toy-engine", "toy v1")
    be._open_ = True
    stepper = LmStepper(be, info)
    prompts = [[3, 5, 7, 1], [2], [9, 9, 4]]
    cfg = GenerationConfig(max_new_tokens=10)

    def greedy() -> np.ndarray:
        done = np.zeros(len(prompts), bool)
        return np.stack([t for t, _ in generate_ids(stepper, prompts, cfg, pad_id=0, done=done)], axis=1)

    class HostOnly:
        input_names, output_names, binder = m.input_names, m.output_names, None
        input_dtypes = {n: np.dtype(np.float16) if n.startswith("past") else np.dtype(np.int64) for n in m.input_names}
        infer = staticmethod(m.forward)

    ref_stepper = LmStepper(HostOnly(), info)
    done = np.zeros(len(prompts), bool)
    ref = np.stack([t for t, _ in generate_ids(ref_stepper, prompts, cfg, pad_id=0, done=done)], axis=1)
    cudart.COPIES.reset()
    np.testing.assert_array_equal(greedy(), ref)
    (state,) = stepper._free
    allocations = [a.allocations for a in state.kv.arenas]
    np.testing.assert_array_equal(greedy(), ref)
    assert [a.allocations for a in state.kv.arenas] == allocations == [1, 1]
    tags = {t for (_, t) in cudart.COPIES.count}
    assert not any(t.startswith(("past_key_values", "present")) for t in tags), tags
    assert cudart.COPIES.count[("d2h", "logits")] == 20  # one 2-D copy of the last position per step
    stepper.close()
    be.close()
