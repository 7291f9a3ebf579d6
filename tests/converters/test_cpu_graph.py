"""The CPU graph of a GPU bundle (``converters.cpu_graph`` / ``cpu_check``) on the tiny Llama.

GPU bundles here are built for targets whose engine is built on the device (hopper-server: FP8 W8A8 in an
FP16 graph; jetson-orin: INT4 blocks in an FP16 graph), so no TensorRT is needed: the bundle carries the
QDQ ONNX + plan, and its CPU graph. The INT4 bundle is of the tiny Qwen3: the tiny Llama's near-flat random
logits flip 2 of its 128 canary positions between FP16 and FP32 compute (top1 0.758 < limit 0.758), which
the build's gate refuses, as it should. Each test checks what the runtime serves on a CPU and that it is the
bundle's model: same greedy tokens within the canaries' tolerance, canaries passing, bytes shared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq.converters.build import build
from edgeq.errors import DegradedError, IntegrityError, ValidationError
from edgeq.sdk.bundle.manifest import Manifest
from edgeq.sdk.runtime.runtime import Runtime
from tests.converters.test_build import FAST_QUANT


@pytest.fixture(scope="module")
def gpu_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-bundles")
    out = {}
    for target, model in (("hopper-server", "tiny-llama"), ("jetson-orin", "tiny-qwen3"), ("cpu-x86-64", "tiny-qwen3")):
        out[target] = root / target
        build(model, target, out=out[target], quant_overrides=FAST_QUANT)
    return out


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _greedy(sess, ids: np.ndarray, n: int) -> list[int]:
    from edgeq.sdk.bundle.graph_io import lm_feeds, past_names, present_indices, session_input_dtypes
    from edgeq.sdk.bundle.model_info import ModelInfo

    info = ModelInfo.from_bytes((Path(sess._model_path).parent / "edgeq_model.json").read_bytes())
    inputs = session_input_dtypes(sess)
    outs = [o.name for o in sess.get_outputs()]
    present, li = present_indices(past_names(inputs), outs), outs.index("logits")
    out, toks = sess.run(None, lm_feeds(ids, inputs, info)), []
    for _ in range(n):
        toks.append(int(out[li][0, -1].argmax()))
        out = sess.run(None, lm_feeds(np.array([[toks[-1]]]), inputs, info, [out[i] for i in present]))
    return toks


@pytest.mark.parametrize("target", ["hopper-server", "jetson-orin"])
def test_gpu_bundle_carries_a_checked_cpu_graph(gpu_bundles: dict[str, Path], target: str) -> None:
    bundle = gpu_bundles[target]
    m = Manifest.load(bundle)
    cpu = [e for e in m.engines if e.device == "cpu"]
    assert len(cpu) == 1 and cpu[0].flavour == "onnx" and m.engines[-1] is cpu[0]
    info = m.build["cpu_graph"]
    check = info["check"]
    assert check["ok"] and not check["breaches"]
    # the canaries' tolerance: no score more than max_quality_drop below the bundle graph's baseline
    for k, base in check["baseline"].items():
        assert check["scores"][k] >= base * (1 - 0.02), (k, check)
    assert check["greedy_agreement"] >= 0.9 and check["positions"] > 0
    assert info["rewrite"]["fp16_to_fp32"] > 0 and info["rewrite"]["fusions"]["RotaryEmbedding"] > 0
    if target == "hopper-server":  # FP8 W8A8: the activation QDQ goes, the FP8 weights become Cast*scale
        assert info["rewrite"]["activation_qdq_removed"] > 0 and info["rewrite"]["fp8_weights"] > 0
    # the large weights are the bundle graph's bytes, not a copy
    sizes = {f.path: f.size for f in m.files}
    assert info["rewrite"]["shared_bytes"] > 0
    own = sizes["model/model.cpu.onnx"] + sizes.get("model/model.cpu.onnx_data", 0)
    assert own < sizes["model/model.onnx_data"]
    # the CPU graph is FP32 end to end: the KV cache is float32, the bundle graph's is float16
    cpu_s, gpu_s = _session(bundle / "model/model.cpu.onnx"), _session(bundle / "model/model.onnx")
    assert {i.type for i in cpu_s.get_inputs() if i.name.startswith("past_")} == {"tensor(float)"}
    assert {i.type for i in gpu_s.get_inputs() if i.name.startswith("past_")} == {"tensor(float16)"}


def test_cpu_target_bundle_has_no_engine_and_a_cpu_graph(gpu_bundles: dict[str, Path]) -> None:
    m = Manifest.load(gpu_bundles["cpu-x86-64"])
    assert [(e.flavour, e.device, e.onnx) for e in m.engines] == [
        ("onnx", None, "model/model.onnx"), ("onnx", "cpu", "model/model.cpu.onnx")]
    assert not m.files_with_role("plan") and not m.files_with_role("engine")
    assert m.build["engine_mode"] == "none" and m.quant_config["compute_dtype"] == "float32"
    assert m.build["cpu_graph"]["check"]["greedy_agreement"] == 1.0  # an FP32 graph: only fusions change
    with Runtime.open(gpu_bundles["cpu-x86-64"]) as rt:
        assert "CPU graph" in rt.backend_name and rt.check_health().ok


def test_int4_cpu_graph_gives_the_bundle_graphs_greedy_tokens(gpu_bundles: dict[str, Path]) -> None:
    """INT4 weights are the same bytes in both graphs: only FP16 vs FP32 compute differs."""
    bundle = gpu_bundles["jetson-orin"]
    cpu_s, gpu_s = _session(bundle / "model/model.cpu.onnx"), _session(bundle / "model/model.onnx")
    ids = np.array([[1, 17, 99, 4, 250, 33, 7, 81]], dtype=np.int64)
    a, b = _greedy(gpu_s, ids, 12), _greedy(cpu_s, ids, 12)
    assert sum(x == y for x, y in zip(a, b)) >= 11, (a, b)


def test_runtime_serves_the_cpu_graph_and_its_canaries_pass(gpu_bundles: dict[str, Path]) -> None:
    for bundle in (gpu_bundles["hopper-server"], gpu_bundles["jetson-orin"]):
        with Runtime.open(bundle) as rt:
            assert "CPU graph model/model.cpu.onnx" in rt.backend_name
            verdict = rt.check_health()
            assert verdict is not None and verdict.ok, verdict
            assert len(rt.generate("hello", max_new_tokens=4).token_ids) >= 1


def test_cpu_graph_failing_its_canaries_is_refused(gpu_bundles: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's gate: a rewrite bug that costs canary quality raises instead of shipping."""
    from onnx import numpy_helper

    from edgeq.converters import cpu_graph
    from edgeq.converters.cpu_check import add_cpu_graph

    real = cpu_graph._fuse

    def broken(model, *a):  # a rewrite bug: the (tied) embedding / LM head scaled by 0.2
        model, fused = real(model, *a)
        for init in model.graph.initializer:
            if init.name.startswith(("lm_head", "model.embed_tokens")):
                arr = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((arr * 0.2).astype(arr.dtype), init.name))
        return model, fused

    bundle = tmp_path / "b"
    shutil.copytree(gpu_bundles["hopper-server"], bundle)
    monkeypatch.setattr(cpu_graph, "_fuse", broken)
    with pytest.raises(ValidationError, match="CPU graph fails the bundle's canaries"):
        add_cpu_graph(bundle / "model/model.onnx", num_heads=4, hidden_size=128, max_positions=512, health_dir=bundle)


def test_bundle_without_cpu_graph_runs_its_graph_as_written(gpu_bundles: dict[str, Path], tmp_path: Path) -> None:
    """An older bundle (no ``device`` entry): the CPU backend runs the bundle graph."""
    bundle = tmp_path / "b"
    shutil.copytree(gpu_bundles["jetson-orin"], bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["engines"] = [e for e in raw["engines"] if e.get("device") != "cpu"]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with Runtime.open(bundle) as rt:
        assert "CPU graph" not in rt.backend_name and rt.check_health().ok


def test_tampered_cpu_graph_is_refused(gpu_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(gpu_bundles["jetson-orin"], bundle)
    p = bundle / "model/model.cpu.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(DegradedError) as e:  # refused at load (hash); a bundle directory has no fallback
        Runtime.open(bundle)
    assert isinstance(e.value.__cause__, IntegrityError)


def test_manifest_without_engine_device_keeps_its_bytes() -> None:
    """Manifests written before ``EngineInfo.device`` existed re-serialise to the bytes their signature covers."""
    old = {"model_name": "m", "bundle_version": 1, "task": "text-generation", "target": "t", "precision": "fp16",
           "files": [{"path": "model/model.onnx", "size": 1, "sha256": "0" * 64, "role": "onnx"}],
           "engines": [{"flavour": "onnx", "path": None, "plan": None, "onnx": "model/model.onnx",
                        "compute_capabilities": [], "trt_version": None, "precision": "fp16"}]}
    m = Manifest.from_dict(json.loads(json.dumps(old)))
    assert "device" not in m.to_dict()["engines"][0]
    assert json.loads(m.canonical_bytes())["engines"] == old["engines"]


@pytest.mark.parametrize("fp8_as", ["int8", "float32"])
def test_fp8_weights_on_the_cpu(gpu_bundles: dict[str, Path], tmp_path: Path, fp8_as: str) -> None:
    """INT8 codes (new bytes, the default) or Cast*scale folded at load (the FP8 bytes shared): both pass."""
    import onnx

    from edgeq.converters.cpu_check import check_cpu_graph
    from edgeq.converters.cpu_graph import derive_cpu_graph

    bundle = tmp_path / "b"
    shutil.copytree(gpu_bundles["hopper-server"], bundle)
    out = bundle / "model/model.cpu.onnx"
    stats = derive_cpu_graph(bundle / "model/model.onnx", out, num_heads=4, hidden_size=128, fp8_as=fp8_as)
    assert stats.fp8_weights > 0 and stats.fp8_as == fp8_as
    m = onnx.load(str(out), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    fp8 = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    if fp8_as == "int8":
        assert not fp8 and any(i.data_type == onnx.TensorProto.INT8 for i in m.graph.initializer)
    else:
        assert fp8 and "Cast" in ops
    assert check_cpu_graph(bundle / "model/model.onnx", out, bundle).ok
