"""The decode loop's device seam without a GPU: KV arenas allocated once and bound by pointer, no KV byte
through the host, the device-memory layer's growth and copies, and the on-device greedy graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgeq.errors import RuntimeErrorBase
from edgeq.sdk.bundle.model_info import ModelInfo
from edgeq.sdk.runtime.backends import cudart
from edgeq.sdk.runtime.backends.binding import Binder, HostBuffer
from edgeq.sdk.runtime.decode import GenerationConfig, LmStepper, generate_ids
from tests.sdk.runtime.fake_device import FakeCudaRuntime, ToyLm, host_array

HOST_INPUTS = {"input_ids", "attention_mask", "position_ids"}


def _info(m: ToyLm) -> ModelInfo:
    return ModelInfo(task="text-generation", num_layers=m.layers, num_key_value_heads=m.heads,
                     head_dim=m.head_dim, vocab_size=m.vocab)


class RecordingBinder(Binder):
    """A binder over host memory that runs ``ToyLm`` from the bound pointers and records every call."""

    def __init__(self, model: ToyLm) -> None:
        self.m = model
        self.bound: dict[str, tuple[int, tuple[int, ...], bool]] = {}
        self.fed: dict[str, np.ndarray] = {}
        self.fed_log: list[str] = []
        self.buffers: list[HostBuffer] = []
        self.logits: np.ndarray | None = None
        self.runs = 0

    def new_buffer(self) -> HostBuffer:
        self.buffers.append(HostBuffer())
        return self.buffers[-1]

    def bind(self, name: str, ptr: int, dtype: np.dtype, shape: tuple[int, ...], *, output: bool) -> None:
        assert dtype == np.float16, "the KV cache keeps the graph's dtype"
        self.bound[name] = (ptr, tuple(shape), output)

    def feed(self, name: str, array: np.ndarray) -> None:
        self.fed[name] = np.array(array)
        self.fed_log.append(name)

    def run(self) -> None:
        self.runs += 1
        feeds = dict(self.fed)
        for name, (ptr, shape, output) in self.bound.items():
            if not output:
                feeds[name] = host_array(ptr, np.float16, shape).copy()
        outs = self.m.forward(feeds)
        self.logits = outs[0]
        for name, val in zip(self.m.output_names[1:], outs[1:]):
            ptr, shape, output = self.bound[name]
            assert output and shape == val.shape
            host_array(ptr, np.float16, shape)[...] = val

    def last_logits(self) -> np.ndarray:
        return self.logits[:, -1, :].copy()


class ToyBackend:
    """The attributes LmStepper reads; ``binder`` is None for the host path."""

    def __init__(self, model: ToyLm, bound: bool) -> None:
        self.m = model
        self.input_names, self.output_names = model.input_names, model.output_names
        self.input_dtypes = {n: (np.dtype(np.float16) if n.startswith("past") else np.dtype(np.int64))
                             for n in model.input_names}
        self.binders: list[RecordingBinder] = []
        self.infer_calls = 0
        if not bound:
            self.binder = None

    def binder(self, info: ModelInfo) -> RecordingBinder:  # noqa: F811 - shadowed per instance when unbound
        self.binders.append(RecordingBinder(self.m))
        return self.binders[-1]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.infer_calls += 1
        return self.m.forward(feeds)


def _greedy(stepper: LmStepper, prompts: list[list[int]], n: int) -> np.ndarray:
    done = np.zeros(len(prompts), bool)
    return np.stack([t for t, _ in generate_ids(stepper, prompts, GenerationConfig(max_new_tokens=n), pad_id=0,
                                                done=done)], axis=1)


PROMPTS = [[3, 5, 7, 1], [2], [9, 9, 4]]


def test_bound_decode_matches_the_host_path_and_moves_no_kv_byte() -> None:
    m = ToyLm()
    host = ToyBackend(m, bound=False)
    ref = _greedy(LmStepper(host, _info(m)), PROMPTS, 12)
    assert host.infer_calls == 12
    bound = ToyBackend(m, bound=True)
    got = _greedy(LmStepper(bound, _info(m)), PROMPTS, 12)
    np.testing.assert_array_equal(got, ref)
    (b,) = bound.binders
    assert b.runs == 12 and bound.infer_calls == 0
    # the only host→device traffic is token ids, mask and positions; every past/present went by pointer
    assert set(b.fed_log) == HOST_INPUTS and len(b.fed_log) == 3 * 12
    kv = {n for n in m.input_names + m.output_names if n.startswith(("past_key_values.", "present."))}
    assert set(b.bound) == kv
    # two arenas, each allocated once for the whole generation, past and present at the same offsets
    assert [buf.allocations for buf in b.buffers] == [1, 1]
    arenas = [(buf.ptr, buf.capacity) for buf in b.buffers]
    for name in kv:
        ptr = b.bound[name][0]
        assert any(lo <= ptr < lo + size for lo, size in arenas), name


def test_arenas_are_reused_across_generations_and_grow_geometrically() -> None:
    m = ToyLm()
    be = ToyBackend(m, bound=True)
    stepper = LmStepper(be, _info(m))
    _greedy(stepper, PROMPTS, 20)
    (b,) = be.binders
    first = [buf.capacity for buf in b.buffers]
    _greedy(stepper, [[1, 2]], 5)  # smaller: same state, no allocation
    assert len(be.binders) == 1 and [buf.allocations for buf in b.buffers] == [1, 1]
    _greedy(stepper, PROMPTS, 40)  # longer: grows once, to at least double
    assert [buf.allocations for buf in b.buffers] == [2, 2]
    assert all(buf.capacity >= 2 * c for buf, c in zip(b.buffers, first))
    # two generations at once get two states; both return to the pool
    d1, d2 = stepper.decode(1, 4), stepper.decode(1, 4)
    assert len(be.binders) == 2
    d1.close(), d2.close()
    assert len(stepper._free) == 2
    stepper.close()
    assert all(buf.capacity == 0 for binder in be.binders for buf in binder.buffers)


def test_sampling_and_hooks_fetch_logits_lazily() -> None:
    m = ToyLm()
    be = ToyBackend(m, bound=True)
    stepper = LmStepper(be, _info(m))
    seen: list[np.ndarray] = []
    done = np.zeros(1, bool)
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.8, seed=1)
    toks = [t for t, _ in generate_ids(stepper, [[4, 2]], cfg, pad_id=0, done=done,
                                       on_logits=lambda get: seen.append(get()))]
    assert len(toks) == 6 and len(seen) == 6 and seen[0].shape == (1, m.vocab)
    host = ToyBackend(m, bound=False)
    ref = [t for t, _ in generate_ids(LmStepper(host, _info(m)), [[4, 2]], cfg, pad_id=0, done=np.zeros(1, bool))]
    np.testing.assert_array_equal(np.stack(toks), np.stack(ref))


def test_kv_cache_refuses_more_tokens_than_it_was_sized_for() -> None:
    m = ToyLm()
    stepper = LmStepper(ToyBackend(m, bound=True), _info(m))
    with stepper.decode(1, 3) as dec:
        ids = np.array([[1, 2, 3]])
        dec.run(ids, np.ones_like(ids), np.arange(3)[None])
        with pytest.raises(RuntimeErrorBase, match="cannot take 4"):
            dec.run(np.array([[1]]), np.ones((1, 4), np.int64), np.array([[3]]))


# -- the device-memory layer, over a stand-in CUDA runtime ------------------------------------------------
@pytest.fixture()
def fake_rt() -> FakeCudaRuntime:
    rt = FakeCudaRuntime(limit=1 << 30)
    old = cudart.use_runtime(rt)
    cudart.COPIES.reset()
    yield rt
    cudart.use_runtime(old)


def test_device_buffer_grows_geometrically_not_per_token(fake_rt: FakeCudaRuntime) -> None:
    """A cache growing one token at a time reallocates O(log n) times, not once per token (the old ensure)."""
    buf = cudart.DeviceBuffer()
    per_token = 2 * 3 * 64 * 2  # batch 2, 3 heads, head_dim 64, float16
    for t in range(1, 1025):
        buf.reserve(t * per_token)
    assert buf.allocations <= 12, buf.allocations
    assert buf.capacity >= 1024 * per_token and fake_rt.calls["cudaMalloc"] == buf.allocations
    ptr = buf.ptr
    buf.reserve(10)
    assert buf.ptr == ptr  # never shrinks
    buf.free()
    buf.free()  # idempotent
    assert fake_rt.mem == {} and fake_rt.calls["cudaFree"] == buf.allocations


def test_copies_round_trip_and_are_counted(fake_rt: FakeCudaRuntime) -> None:
    buf = cudart.DeviceBuffer(4 * 5 * 7 * 4)
    x = np.arange(4 * 5 * 7, dtype=np.float32).reshape(4, 5, 7)
    stream = cudart.Stream()
    cudart.copy_h2d(buf.ptr, x, tag="logits", stream=stream)
    stream.synchronize()
    last = np.empty((4, 7), np.float32)
    cudart.copy_rows_d2h(last, buf.ptr + 4 * 7 * 4, 5 * 7 * 4, tag="logits")
    np.testing.assert_array_equal(last, x[:, -1, :])
    back = cudart.copy_d2h(np.empty_like(x), buf.ptr, tag="check")
    np.testing.assert_array_equal(back, x)
    assert cudart.COPIES.host_copies("logits") == 2 and cudart.COPIES.host_bytes("logits") == x.nbytes + last.nbytes
    assert cudart.COPIES.host_copies("kv") == 0
    with pytest.raises(RuntimeErrorBase, match="wider than the pitch"):
        cudart.copy_rows_d2h(np.empty((2, 8), np.float32), buf.ptr, 16, tag="x")
    stream.destroy()
    buf.free()


def test_cuda_failures_are_typed_errors(fake_rt: FakeCudaRuntime) -> None:
    with pytest.raises(RuntimeErrorBase, match="cudaErrorMemoryAllocation"):
        cudart.DeviceBuffer(1 << 40)
    with pytest.raises(RuntimeErrorBase, match="cudaFree failed"):
        cudart.check(fake_rt.cudaFree(12345), "cudaFree")


def test_missing_cuda_bindings_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from edgeq.errors import BackendUnavailableError

    real_import = builtins.__import__

    def no_cuda(name: str, *a: Any, **k: Any) -> Any:
        if name.startswith("cuda"):
            raise ImportError("No module named 'cuda'")
        return real_import(name, *a, **k)

    old = cudart.use_runtime(None)
    monkeypatch.setattr(builtins, "__import__", no_cuda)
    try:
        with pytest.raises(BackendUnavailableError, match="cuda-bindings"):
            cudart.runtime()
    finally:
        cudart.use_runtime(old)


# -- the greedy graph ------------------------------------------------------------------------------------
def test_greedy_graph_is_the_one_documented() -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgeq.sdk.runtime.backends.ort_io import GREEDY_LAST_ONNX

    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", "vocab"])
    nxt = helper.make_tensor_value_info("next_tokens", TensorProto.INT64, ["batch", 1])

    def const(name: str, v: int) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [v]))

    nodes = [const("starts", -1), const("ends", 2**62), const("axes", 1),
             helper.make_node("Slice", ["logits", "starts", "ends", "axes"], ["last"]),
             helper.make_node("ArgMax", ["last"], ["next_tokens"], axis=2, keepdims=0)]
    m = helper.make_model(helper.make_graph(nodes, "edgeq_greedy_last", [logits], [nxt]),
                          opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeq")
    m.ir_version = 8
    onnx.checker.check_model(m)
    assert m.SerializeToString() == GREEDY_LAST_ONNX

    s = ort.InferenceSession(GREEDY_LAST_ONNX, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 5, 50)).astype(np.float32)
    x[1, -1, [7, 30]] = 100.0  # a tie: the first index wins, as numpy's argmax
    (got,) = s.run(None, {"logits": x})
    np.testing.assert_array_equal(got[:, 0], x[:, -1].argmax(-1))
    assert got.shape == (3, 1) and got[1, 0] == 7


def test_the_greedy_sampler_follows_the_batch_size_between_runs() -> None:
    """The sampler's host output is allocated at its first run; a later run of another batch size (a new
    generation reusing the binder) must rebind it, not fail on the shape (measured on the H200: batch 8 after
    batch 1 failed and greedy fell back to the host)."""
    from edgeq.sdk.runtime.backends.ort_io import GreedySampler, SamplerBinding

    sb = SamplerBinding(ort, GreedySampler(ort, ["CPUExecutionProvider"]), "cpu", 0)
    rng = np.random.default_rng(1)
    for batch, seq in ((1, 1), (8, 1), (3, 4), (3, 4), (1, 1)):
        x = np.ascontiguousarray(rng.standard_normal((batch, seq, 50)).astype(np.float32))
        np.testing.assert_array_equal(sb.run(x.shape, x.ctypes.data), x[:, -1].argmax(-1))
