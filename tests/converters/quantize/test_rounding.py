"""Asymmetric INT4 (grid, exact offset correction in the emitted graph) and GPTQ rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.converters.quantize.gptq import gram, int4_block_gptq, int8_channel_gptq
from edgeq.converters.quantize.numerics import LinearPlan, int4_block_dequant, int4_block_quant, int8_channel_quant
from edgeq.converters.quantize.qdq import emit_qdq


def _err(w: torch.Tensor, wq: torch.Tensor, g: torch.Tensor) -> float:
    d = wq - w
    return float(((d @ g) * d).sum())


def test_asymmetric_int4_is_exact_on_an_offset_grid() -> None:
    """A block already on a 16-level grid that does not straddle zero (a GGUF Q4_1 block) comes back
    exactly asymmetric; symmetric blocks lose it."""
    torch.manual_seed(0)
    lo, step = torch.rand(8, 4, 1) * 0.5 + 0.1, torch.rand(8, 4, 1) * 0.01 + 0.001
    w = (lo + step * torch.randint(0, 16, (8, 4, 32)).float()).reshape(8, 128)
    w[:, ::32] = (lo + 0 * step).reshape(8, 4)  # every block uses both ends of its grid
    w[:, 1::32] = (lo + 15 * step).reshape(8, 4)
    q, s, o = int4_block_quant(w, 32, asymmetric=True)
    assert o is not None and int(q.min()) >= -8 and int(q.max()) <= 7
    assert torch.allclose(int4_block_dequant(q, s, 32, o), w, atol=1e-6)
    q2, s2, o2 = int4_block_quant(w, 32)
    assert o2 is None and (int4_block_dequant(q2, s2, 32) - w).abs().max() > 1e-3


def _matmul_graph(path: Path, weights: dict[str, np.ndarray], in_f: int) -> None:
    """x -> MatMul(x, W_a) and MatMul(x, W_b): two linears reading one input, named as the exporter names them."""
    nodes, outs, inits = [], [], []
    for name, w in weights.items():
        nodes.append(helper.make_node("MatMul", ["x", f"{name}.weight"], [f"y_{name}"],
                                      name=f"/model/layers.0/mlp/{name}/MatMul"))
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        outs.append(helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [2, 5, w.shape[1]]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, in_f])], outs, inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_emitted_offset_correction_is_exact_in_onnxruntime(tmp_path) -> None:
    torch.manual_seed(1)
    in_f, block = 128, 32
    ws = {"gate_proj": torch.randn(48, in_f) * 0.05 + 0.02, "up_proj": torch.randn(40, in_f) * 0.05 - 0.03}
    plans = {}
    for name, w in ws.items():
        q, s, o = int4_block_quant(w, block, asymmetric=True)
        plans[f"model.layers.0.mlp.{name}"] = LinearPlan(f"model.layers.0.mlp.{name}", "int4", q, s, block_size=block, offset=o)
    src = tmp_path / "fp.onnx"
    _matmul_graph(src, {n: w.T.contiguous().numpy() for n, w in ws.items()}, in_f)
    res = emit_qdq(src, plans, tmp_path / "q.onnx")
    assert not res["unmatched"]
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    assert sum(n.name.endswith("BlockSums_MatMul") for n in graph.node) == 1  # shared by both consumers
    assert not any(len(n.input) > 2 for n in graph.node if n.op_type == "DequantizeLinear")  # no zero points
    x = np.random.default_rng(0).standard_normal((2, 5, in_f)).astype(np.float32) * 3
    opts = ort.SessionOptions()  # ORT's default int4 fusion quantizes activations to int8 (accuracy level 4)
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for (name, _), y in zip(ws.items(), got):
        want = x @ plans[f"model.layers.0.mlp.{name}"].dequant().T.numpy()
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def correlated_layer() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    in_f = 256
    mix = torch.randn(in_f, in_f) / in_f ** 0.5
    x = torch.randn(2048, in_f) @ (torch.eye(in_f) + mix) * (torch.rand(in_f) * 3)
    return torch.randn(96, in_f) * 0.05, gram(x)


def test_gptq_lowers_the_layer_output_error(correlated_layer) -> None:
    """On correlated inputs GPTQ's rounding must beat nearest rounding on the same grid (same scales for INT8)."""
    w, g = correlated_layer
    q, s = int8_channel_quant(w)
    q_g, s_g = int8_channel_gptq(w, g, 0.01)
    assert torch.equal(s, s_g)
    assert _err(w, q_g.float() * s_g[:, None], g) < 0.8 * _err(w, q.float() * s[:, None], g)
    for asym in (False, True):
        q, s, o = int4_block_quant(w, 64, asymmetric=asym)
        q_g, s_g, o_g = int4_block_gptq(w, g, 64, 0.01, asym)
        assert (o_g is None) == (not asym)
        assert _err(w, int4_block_dequant(q_g, s_g, 64, o_g), g) < 0.8 * _err(w, int4_block_dequant(q, s, 64, o), g)
