"""The runtime on onnxruntime-gpu's CUDA provider: the same tokens as the CPU on the same FP16-compute graph,
the KV cache never through the host, canaries, and fallback under concurrent load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeq.sdk.health.monitor import MonitorConfig
from edgeq.sdk.runtime.backends import BackendOptions, cudart
from edgeq.sdk.runtime.decode import GenerationConfig, generate_ids
from edgeq.sdk.runtime.runtime import Runtime
from tests.sdk.runtime.faults import Load, lm_feeds, nan_in_logits, wait_for, wrap_outputs

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("ort_gpu")]
GPU = BackendOptions(prefer=("onnxruntime-gpu",))
CPU = BackendOptions(prefer=("onnxruntime-cpu",), intra_op_threads=2)
OFF = MonitorConfig(enabled=False)
PROMPTS = ["Python was created in the early", "a", "Guido remains Python's principal author"]
#: FP16 accumulation differs between the CUDA kernels and ONNX Runtime's CPU ones: logits agree to this
#: fraction of their largest magnitude until the first step whose top two the difference can swap.
REL_TOL = 2e-2
WAIT_S = 60.0  # a GPU first start (CUDA context, kernels) takes longer than the CPU tests wait


def _greedy_with_logits(rt: Runtime, prompts: list[str], n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    h = rt._current
    ids = [h.tokenizer.encode(p) for p in prompts]
    seen: list[np.ndarray] = []
    done = np.zeros(len(ids), bool)
    toks = [t for t, _ in generate_ids(h.stepper, ids, GenerationConfig(max_new_tokens=n), pad_id=h.pad_id,
                                       done=done, on_logits=lambda get: seen.append(get().copy()))]
    return np.stack(toks, axis=1), seen


@pytest.mark.parametrize("bundle", ["tiny-llama-fp16-v1", "tiny-llama-int8-wo-v2", "tiny-qwen3-fp16-v1"])
@pytest.mark.parametrize("batch", [1, 3])
def test_gpu_greedy_matches_cpu_on_the_same_fp16_graph(gpu_bundles: dict[str, Path], bundle: str, batch: int) -> None:
    prompts = PROMPTS[:batch]
    with Runtime.open(gpu_bundles[bundle], backend=GPU, monitor=OFF) as gpu:
        assert "CUDAExecutionProvider" in gpu.backend_name and gpu._current.backend.device == "cuda"
        assert gpu._current.stepper.past_dtype == np.float16  # the FP16-compute graph's KV cache
        g_tok, g_log = _greedy_with_logits(gpu, prompts, 24)
        state = gpu._current.stepper._free[0]
        assert state.binder._sampler_io is not None, "greedy did not run on the device"
        # the device's greedy tokens equal the argmax of the logits it returned
        assert (np.stack([lg.argmax(-1) for lg in g_log], axis=1) == g_tok).all()
    with Runtime.open(gpu_bundles[bundle], backend=CPU, monitor=OFF) as cpu:
        c_tok, c_log = _greedy_with_logits(cpu, prompts, 24)
    for r in range(batch):
        diverged = next((s for s in range(24) if g_tok[r, s] != c_tok[r, s]), None)
        upto = 24 if diverged is None else diverged + 1
        for s in range(upto):  # once the tokens differ the sequences differ: compare up to the first divergence
            a, b = g_log[s][r], c_log[s][r]
            scale = max(float(np.abs(b).max()), 1.0)
            assert float(np.abs(a - b).max()) <= REL_TOL * scale, (bundle, r, s, float(np.abs(a - b).max()), scale)
        if diverged is not None:
            top2 = np.sort(c_log[diverged][r])[-2:]
            assert top2[1] - top2[0] <= 2 * REL_TOL * max(float(np.abs(c_log[diverged][r]).max()), 1.0), \
                f"{bundle} row {r} diverged at step {diverged} without a near-tie on the CPU"


def test_device_greedy_survives_a_change_of_batch_size(gpu_bundles: dict[str, Path]) -> None:
    """One runtime, generations of batch 1, 3, 1: the reused binder keeps sampling on the device."""
    with Runtime.open(gpu_bundles["tiny-llama-fp16-v1"], backend=GPU, monitor=OFF) as gpu:
        for batch in (1, 3, 1):
            toks, logits = _greedy_with_logits(gpu, PROMPTS[:batch], 6)
            (state,) = gpu._current.stepper._free
            assert state.binder._sampler_io is not None, f"greedy left the device at batch {batch}"
            assert (np.stack([lg.argmax(-1) for lg in logits], axis=1) == toks).all()


def test_no_kv_byte_crosses_to_the_host(gpu_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = gpu_bundles["tiny-llama-fp16-v1"]
    with Runtime.open(bundle, backend=GPU, monitor=OFF) as rt:
        h = rt._current
        cudart.COPIES.reset()
        done = np.zeros(2, bool)
        ids = [h.tokenizer.encode(p) for p in PROMPTS[:2]]
        n = 16
        list(generate_ids(h.stepper, ids, GenerationConfig(max_new_tokens=n), pad_id=h.pad_id, done=done))
        tags = dict(cudart.COPIES.count)
        assert not [k for k in tags if k[1].startswith(("past_key_values", "present"))], tags
        # per step: ids, mask and positions in (ONNX Runtime copies the CPU-bound inputs), one token per row out
        assert tags[("h2d", "input_ids")] == tags[("d2h", "next_tokens")] == n
        assert cudart.COPIES.bytes[("d2h", "next_tokens")] == n * 2 * 8
        assert ("d2h", "logits") not in tags  # greedy with no hook asking: no logits left the device
        (state,) = h.stepper._free
        assert [a.allocations for a in state.kv.arenas] == [1, 1]
        list(generate_ids(h.stepper, ids, GenerationConfig(max_new_tokens=n), pad_id=h.pad_id, done=np.zeros(2, bool)))
        assert [a.allocations for a in state.kv.arenas] == [1, 1]  # reused, not reallocated
    # ONNX Runtime's own copies: no Memcpy node in its profile takes a KV-shaped tensor
    prof = tmp_path / "ort"
    with Runtime.open(bundle, backend=BackendOptions(prefer=("onnxruntime-gpu",), profile_prefix=str(prof)),
                      monitor=OFF) as rt:
        h = rt._current
        list(generate_ids(h.stepper, [h.tokenizer.encode("Python")], GenerationConfig(max_new_tokens=6),
                          pad_id=h.pad_id, done=np.zeros(1, bool)))
        trace = json.loads(Path(h.backend.end_profiling()).read_text())
        kv_heads, head_dim = h.info.num_key_value_heads, h.info.head_dim
    nodes = [e for e in trace if e.get("cat") == "Node" and "op_name" in e.get("args", {})]

    def kv_shaped(e: dict[str, Any]) -> bool:
        return any(len(s) == 4 and s[1] == kv_heads and s[3] == head_dim
                   for entry in e["args"].get("input_type_shape", []) for s in entry.values())

    assert sum(map(kv_shaped, nodes)) > 0, "the profile shows no node reading the KV cache: the check would be blind"
    memcpy = [e for e in nodes if e["args"]["op_name"] in ("MemcpyToHost", "MemcpyFromHost")]
    assert [e["name"] for e in memcpy if kv_shaped(e)] == []


def test_tensorrt_ep_is_not_asked_for_without_libnvinfer(gpu_bundles: dict[str, Path], capfd: pytest.CaptureFixture) -> None:
    from edgeq.sdk.runtime.backends import providers as eps

    import onnxruntime as ort

    why = eps.provider_problem(ort, eps.TRT_EP)
    assert why is not None and "libnvinfer" in why, why  # this machine has no TensorRT
    capfd.readouterr()
    with Runtime.open(gpu_bundles["tiny-llama-fp16-v1"], backend=GPU, monitor=OFF) as rt:
        assert "TensorrtExecutionProvider" not in rt.backend_name
        rt.generate("Python", max_new_tokens=2)
    err = capfd.readouterr().err
    assert "EP Error" not in err and "libnvinfer" not in err, err[-2000:]


def test_canaries_pass_on_the_gpu(gpu_bundles: dict[str, Path]) -> None:
    for name in ("tiny-llama-fp16-v1", "tiny-llama-int8-wo-v2", "tiny-qwen3-fp16-v1"):
        with Runtime.open(gpu_bundles[name], backend=GPU, monitor=OFF) as rt:
            v = rt.check_health()
            assert v is not None and v.ok, (name, v)
            v2 = rt.check_health()  # the second is also judged for drift against the first
            assert v2.ok and "CUDAExecutionProvider" in rt.backend_name, (name, v2)


def test_fallback_under_concurrent_load_on_the_gpu(gpu_bundles: dict[str, Path], tmp_path: Path) -> None:
    from edgeq.sdk.store.store import Store

    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(gpu_bundles["tiny-llama-fp16-v1"])
    store.install(gpu_bundles["tiny-llama-int8-wo-v2"])
    events: list[dict[str, Any]] = []
    cfg = MonitorConfig(every_requests=10, every_seconds=0, max_overhead=1.0)
    with Runtime.open(store.root, "tiny-llama", backend=GPU, monitor=cfg, on_event=events.append) as rt:
        assert rt.version == 2 and "CUDAExecutionProvider" in rt.backend_name
        assert wait_for(lambda: rt._current.fingerprint is not None, WAIT_S), "first canary never ran"
        with Load(rt, lm_feeds(rt), threads=4, generate_every=3, tokens=6) as load:
            assert wait_for(lambda: load.completed > 40, WAIT_S)
            wrap_outputs(rt, nan_in_logits)  # v2 starts returning NaN logits to every caller
            assert wait_for(lambda: rt.version == 1, WAIT_S), rt.status()
            done_at_switch = load.completed
            assert wait_for(lambda: load.completed > done_at_switch + 40, WAIT_S)  # serving goes on, on v1
        assert load.errors == [] and load.completed == load.issued, load.errors[:3]
        assert 2 in load.versions and load.versions[-1] == 1
        assert "CUDAExecutionProvider" in rt.backend_name and rt.status().fallbacks == 1
        assert [e["event"] for e in events].count("fallback") == 1
