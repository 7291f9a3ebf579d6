"""FP16 compute graphs (what GPU engines run) and quantized LM heads, tied to the embedding or not."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.converters.quantize import get_config, quantize
from edgeq.converters.quantize.half import to_float16
from edgeq.converters.validate import lm_feeds

SMALL = {"calib_tokens": 256, "calib_seq_len": 64, "holdout_tokens": 128}


def _session(path: Path) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _logits(path: Path, ids: np.ndarray) -> np.ndarray:
    s = _session(path)
    return s.run(["logits"], lm_feeds(s, ids, [], 2, 32))[0]


@pytest.fixture(scope="module")
def halves(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("half")
    out = {}
    for scheme, dtype in [("fp16", "float32"), ("fp16", "float16"), ("int4-awq", "float16"), ("fp8", "float16")]:
        cfg = get_config(scheme, compute_dtype=dtype, **SMALL)
        out[f"{scheme}-{dtype}"] = quantize(tiny_llama, cfg, root / f"{scheme}-{dtype}").onnx_path
    return out


def test_fp16_graph_interface_and_islands(halves) -> None:
    g = onnx.load(str(halves["fp16-float16"])).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output]}
    assert types["past_key_values.0.key"] == types["present.1.value"] == TensorProto.FLOAT16
    assert types["logits"] == TensorProto.FLOAT and types["input_ids"] == TensorProto.INT64
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(halves["fp16-float16"])), strict_mode=True).graph
    vi = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    nodes = {n.name: n for n in inferred.node}
    # RMSNorm squares in FP32; the projections after it compute in FP16
    assert vi[nodes["/model/layers.0/input_layernorm/Pow"].output[0]] == TensorProto.FLOAT
    assert vi[nodes["/model/layers.0/self_attn/q_proj/MatMul"].output[0]] == TensorProto.FLOAT16
    assert vi[nodes["/model/rotary_emb/MatMul"].output[0]] == TensorProto.FLOAT
    fp16_weights = [t for t in g.initializer if t.data_type == TensorProto.FLOAT16 and len(t.dims) == 2]
    assert fp16_weights and not [t for t in g.initializer if t.data_type == TensorProto.FLOAT and t.dims == [128, 128]]


def test_fp16_graph_matches_fp32_in_onnxruntime(halves) -> None:
    ids = np.arange(3, 67, dtype=np.int64)[None]
    ref, got = _logits(halves["fp16-float32"], ids), _logits(halves["fp16-float16"], ids)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.95


def test_quantized_fp16_graphs_use_fp16_dq_scales(halves) -> None:
    for key in ("int4-awq-float16", "fp8-float16"):
        g = onnx.load(str(halves[key])).graph
        inits = {t.name: t.data_type for t in g.initializer}
        scales = [n.input[1] for n in g.node if n.op_type in ("DequantizeLinear", "QuantizeLinear")]
        assert scales and all(inits[s] == TensorProto.FLOAT16 for s in scales), key
        s = _session(halves[key])  # and ONNX Runtime runs it
        out = s.run(["logits"], lm_feeds(s, np.arange(3, 19, dtype=np.int64)[None], [], 2, 32))[0]
        assert np.isfinite(out).all()


def _tiny_graph(const: np.ndarray, scale: np.ndarray) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "wq")
    s = numpy_helper.from_array(scale.astype(np.float32), "ws")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(const.astype(np.float32)), name="/m/Constant"),
        helper.make_node("Add", ["x", "c"], ["xc"], name="/m/Add"),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1, name="/m/proj/weight_DequantizeLinear"),
        helper.make_node("MatMul", ["xc", "w"], ["y"], name="/m/proj/MatMul"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, s])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_constants_saturate_and_tiny_scales_stay_fp32() -> None:
    m = _tiny_graph(np.array([0.0, -3.4e38, 1.0, 2.0]), np.array([1e-6, 1e-2, 1e-2, 1e-2]))
    stats = to_float16(m)
    const = next(n for n in m.graph.node if n.op_type == "Constant")
    val = numpy_helper.to_array(const.attribute[0].t)
    assert val.dtype == np.float16 and np.isfinite(val).all() and val[1] == -65504
    assert stats.saturated_values == 1 and stats.fp32_scale_dqs == ["/m/proj/weight_DequantizeLinear"]
    # the DQ kept its FP32 scale and its output is cast for the FP16 MatMul
    inits = {t.name: t.data_type for t in m.graph.initializer}
    assert inits["ws"] == TensorProto.FLOAT
    assert collections.Counter(n.op_type for n in m.graph.node)["Cast"] >= 2
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones((1, 4), np.float32)})[0]
    assert y.dtype == np.float32 and np.isfinite(y).all()


def test_tied_head_is_quantized_and_the_embedding_stays(tmp_path, tiny_qwen3) -> None:
    assert tiny_qwen3.model.config.tie_word_embeddings
    emb_before = tiny_qwen3.model.get_input_embeddings().weight.detach().clone()
    res = quantize(tiny_qwen3, get_config("int4-rtn", block_size=32, quantize_lm_head=True, **SMALL), tmp_path / "q")
    assert "lm_head" in res.report["layers"] and "lm_head" not in res.report["kept_fp16"]
    g = onnx.load(str(res.onnx_path)).graph
    producers = {o: n for n in g.node for o in n.output}
    head = next(n for n in g.node if n.name == "/lm_head/MatMul")
    assert producers[head.input[1]].op_type == "DequantizeLinear"
    gather = next(n for n in g.node if n.op_type == "Gather" and n.name.endswith("embed_tokens/Gather"))
    table = next(t for t in g.initializer if t.name == gather.input[0])
    assert table.data_type == TensorProto.FLOAT and list(table.dims) == [512, 128]
    assert not [n for n in g.node if n.op_type == "Transpose" and n.input[0] == gather.input[0]]
    assert res.report["validation"]["passed"]
    assert np.array_equal(tiny_qwen3.model.get_input_embeddings().weight.detach(), emb_before)


def test_simulation_of_a_tied_head_leaves_the_embedding(tiny_qwen3) -> None:
    import torch

    from edgeq.converters.quantize.int4 import int4_plan
    from edgeq.converters.quantize.simulate import simulated

    model = tiny_qwen3.model
    emb = model.get_input_embeddings().weight
    before = emb.detach().clone()
    plan = int4_plan("lm_head", model.lm_head.weight.detach(), 32)
    with simulated(model, {"lm_head": plan}):
        assert torch.equal(model.get_input_embeddings().weight, before)
        assert not torch.equal(model.lm_head.weight, before)
    assert model.lm_head.weight is emb
