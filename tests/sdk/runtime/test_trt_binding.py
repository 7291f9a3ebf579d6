"""The TensorRT backends' device path on a stand-in engine and CUDA runtime: every binding is device memory
allocated once (inputs and KV arenas at the profile maximum), and no copy touches the KV cache."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.errors import RuntimeErrorBase
from edgeq.sdk.bundle.model_info import ModelInfo
from edgeq.sdk.runtime.backends import cudart
from edgeq.sdk.runtime.backends.trt import TensorRTBackend
from edgeq.sdk.runtime.decode import GenerationConfig, LmStepper, generate_ids
from tests.sdk.runtime.fake_device import FakeCudaRuntime, ToyLm, fake_tensorrt

PROMPTS = [[3, 5, 7, 1], [2], [9, 9, 4]]


@pytest.fixture()
def rt() -> FakeCudaRuntime:
    fake = FakeCudaRuntime()
    old = cudart.use_runtime(fake)
    cudart.COPIES.reset()
    yield fake
    cudart.use_runtime(old)


def _open(model: ToyLm, rt: FakeCudaRuntime) -> TensorRTBackend:
    be = TensorRTBackend()
    be._setup(fake_tensorrt(model, rt), b"toy-engine", "toy v1")
    be._open_ = True
    return be


def _info(m: ToyLm) -> ModelInfo:
    return ModelInfo(task="text-generation", num_layers=m.layers, num_key_value_heads=m.heads,
                     head_dim=m.head_dim, vocab_size=m.vocab)


def _greedy(stepper: LmStepper, prompts: list[list[int]], n: int) -> np.ndarray:
    done = np.zeros(len(prompts), bool)
    cfg = GenerationConfig(max_new_tokens=n)
    return np.stack([t for t, _ in generate_ids(stepper, prompts, cfg, pad_id=0, done=done)], axis=1)


class _HostOnly:
    """The toy model through host arrays only: the reference."""

    def __init__(self, m: ToyLm) -> None:
        self.m, self.input_names, self.output_names = m, m.input_names, m.output_names
        self.input_dtypes = {n: np.dtype(np.float16) if n.startswith("past") else np.dtype(np.int64)
                             for n in m.input_names}
        self.binder = None

    def infer(self, feeds: dict) -> list[np.ndarray]:
        return self.m.forward(feeds)


def test_trt_decode_keeps_the_cache_on_the_device(rt: FakeCudaRuntime) -> None:
    m = ToyLm()
    ref = _greedy(LmStepper(_HostOnly(m), _info(m)), PROMPTS, 10)
    be = _open(m, rt)
    stepper = LmStepper(be, _info(m))
    got = _greedy(stepper, PROMPTS, 10)
    np.testing.assert_array_equal(got, ref)

    (state,) = stepper._free
    arenas = [(a.ptr, a.capacity) for a in state.kv.arenas]
    b = state.binder
    assert (b.max_batch, b.max_tokens) == (4, 33)  # the profile: batch 4, past 32 (+1 decoded), prompt 16
    # arenas at the profile maximum: all layers' K and V for 4 rows x 33 tokens, float16
    assert all(cap >= 4 * m.layers * 2 * m.heads * 33 * m.head_dim * 2 for _, cap in arenas)
    assert rt.copies_touching(arenas) == [], "a copy touched the KV cache"
    assert cudart.COPIES.host_copies("present.0.key") == cudart.COPIES.host_copies("past_key_values.0.key") == 0
    # per step: ids, mask, positions in; the last position's logits (one 2-D copy of 3 rows) out
    assert cudart.COPIES.count[("h2d", "input_ids")] == 10 and cudart.COPIES.count[("d2h", "logits")] == 10
    assert cudart.COPIES.bytes[("d2h", "logits")] == 10 * 3 * m.vocab * 4

    mallocs = rt.calls["cudaMalloc"]
    _greedy(stepper, PROMPTS, 12)
    _greedy(stepper, [[1]], 20)
    assert rt.calls["cudaMalloc"] == mallocs, "a later generation allocated device memory"
    stepper.close()
    be.close()
    assert rt.mem == {} and rt.live_streams == 0


def test_trt_infer_uses_buffers_allocated_at_open(rt: FakeCudaRuntime) -> None:
    """The canaries' path: host arrays in and out, through input buffers sized at the profile maximum."""
    m = ToyLm()
    be = _open(m, rt)
    after_open = rt.calls["cudaMalloc"]
    ids = np.array([[1, 2, 3]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(3)[None]}
    feeds.update({n: np.zeros((1, m.heads, 0, m.head_dim), np.float16) for n in m.input_names if n.startswith("past")})
    out = be.infer(feeds)
    np.testing.assert_allclose(out[0], m.forward(feeds)[0], rtol=1e-6)
    first = rt.calls["cudaMalloc"]
    for _ in range(3):
        be.infer(feeds)
    assert rt.calls["cudaMalloc"] == first and first - after_open == len(m.output_names)  # outputs once each
    big = dict(feeds, input_ids=np.zeros((1, 17), np.int64))
    with pytest.raises(RuntimeErrorBase, match="outside the engine's optimization profile"):
        be.infer(big)
    be.close()


def test_trt_generation_beyond_the_profile_is_refused_before_running(rt: FakeCudaRuntime) -> None:
    m = ToyLm()
    be = _open(m, rt)
    stepper = LmStepper(be, _info(m))
    with pytest.raises(RuntimeErrorBase, match="exceeds the engine's limit"):
        _greedy(stepper, [[1] * 16], 30)
    assert rt.calls["cudaMemcpy"] == 0  # refused before anything was copied or run
    stepper.close()
    be.close()
