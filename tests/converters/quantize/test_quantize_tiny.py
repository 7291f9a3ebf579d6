"""Every scheme end to end on tiny-llama and tiny-qwen3: loads in ORT, matches the FP reference within the
scheme's tolerance, the file shrinks, only standard-domain opset-21 QDQ ops, the report is complete."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeq.converters import evaluate
from edgeq.converters.quantize import QUANT_CONFIG, QUANT_REPORT, QuantConfig, quantize

SCHEMES = ["fp16", "fp8", "int8", "int8-wo", "int4-rtn", "int4-awq"]
#: element type of the quantized weight initializers per scheme
WEIGHT_TYPE = {"fp8": onnx.TensorProto.FLOAT8E4M3FN, "int8": onnx.TensorProto.INT8,
               "int8-wo": onnx.TensorProto.INT8, "int4-rtn": onnx.TensorProto.INT4, "int4-awq": onnx.TensorProto.INT4}
W8A8 = {"fp8", "int8"}


@pytest.fixture(scope="module")
def outputs(quantized_tiny) -> dict:
    """Every scheme on both models (shared with test_tensorrt_rtx, which builds the same files)."""
    return {(model, scheme): quantized_tiny(model, scheme) for model in ("tiny-llama", "tiny-qwen3") for scheme in SCHEMES}


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen3"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_end_to_end(outputs, model: str, scheme: str) -> None:
    res = outputs[(model, scheme)]
    out = Path(res.out_dir)
    for name in ("model.onnx", QUANT_CONFIG, QUANT_REPORT, "edgeq_model.json", "tokenizer.json", "config.json"):
        assert (out / name).is_file(), name
    assert QuantConfig.from_dict(json.loads((out / QUANT_CONFIG).read_text())) == res.config
    report = json.loads((out / QUANT_REPORT).read_text())
    assert report["validation"]["passed"], report["validation"]
    assert report["validation"]["mean_kl"] <= res.config.max_kl

    m = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(m)
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [21]
    ops = collections.Counter(n.op_type for n in m.graph.node)
    sizes = report["sizes"]
    if scheme == "fp16":
        assert ops["DequantizeLinear"] == 0 and not report["layers"]
        return
    n_layers = len(report["layers"])
    assert n_layers == 14  # 2 blocks x 7 linears; lm_head kept
    assert "lm_head" in report["kept_fp16"]
    assert ops["DequantizeLinear"] >= n_layers
    assert (ops["QuantizeLinear"] > 0) == (scheme in W8A8)
    inits = {t.name: t for t in m.graph.initializer}
    wq = [inits[n.input[0]] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("weight_DequantizeLinear")]
    assert len(wq) == n_layers and all(t.data_type == WEIGHT_TYPE[scheme] for t in wq)
    if scheme.startswith("int4"):
        blocks = {a.i for n in m.graph.node if n.name.endswith("weight_DequantizeLinear") for a in n.attribute if a.name == "block_size"}
        assert blocks == {64}
        assert all(layer["block_size"] == 64 for layer in report["layers"].values())
    # the file really shrinks: quantized linears dominate the non-embedding weights
    assert sizes["quantized_onnx_bytes"] < 0.75 * sizes["fp_onnx_bytes"]


def test_int4_smaller_than_int8(outputs) -> None:
    s4 = outputs[("tiny-llama", "int4-rtn")].report["sizes"]["quantized_onnx_bytes"]
    s8 = outputs[("tiny-llama", "int8-wo")].report["sizes"]["quantized_onnx_bytes"]
    assert s4 < s8


def test_ort_fuses_int4(outputs, tmp_path) -> None:
    """ORT CPU must turn DQ(int4, block_size) -> MatMul into its MatMulNBits kernels (no DQ left for weights)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(outputs[("tiny-llama", "int4-awq")].onnx_path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["MatMulNBits"] == 14 and ops["DequantizeLinear"] == 0


def test_awq_not_worse_than_rtn(outputs) -> None:
    for model in ("tiny-llama", "tiny-qwen3"):
        awq = outputs[(model, "int4-awq")].report["validation"]["mean_kl"]
        rtn = outputs[(model, "int4-rtn")].report["validation"]["mean_kl"]
        assert awq <= rtn * 1.05, (model, awq, rtn)


def test_int8_wo_closer_than_int4(outputs) -> None:
    a = outputs[("tiny-llama", "int8-wo")].report["validation"]["mean_kl"]
    b = outputs[("tiny-llama", "int4-rtn")].report["validation"]["mean_kl"]
    assert a < b


def test_fp16_matches_reference_exactly(outputs, tiny_llama) -> None:
    # the fp16 scheme is the unquantized reference: its held-out KL is numerically zero
    assert outputs[("tiny-llama", "fp16")].report["validation"]["mean_kl"] < 1e-6


def test_awq_reports_groups_and_leaves_caller_model(outputs, tiny_llama) -> None:
    from edgeq.converters.sources import load_model

    groups = outputs[("tiny-llama", "int4-awq")].report["scheme_stats"]["awq_groups"]
    assert any("ratio" in g for g in groups)
    fresh = load_model("tiny-llama").model.state_dict()
    for k, v in tiny_llama.model.state_dict().items():  # scale folding ran on a copy
        assert np.array_equal(v.numpy(), fresh[k].numpy()), k


def test_evaluate_api(outputs) -> None:
    ref = outputs[("tiny-llama", "fp16")].out_dir
    cand = outputs[("tiny-llama", "int4-rtn")].out_dir
    ppl = evaluate.perplexity(ref, num_tokens=512, window=256)
    assert ppl.tokens == 510 and ppl.ppl > 1
    same = evaluate.compare_lm(ref, ref, num_tokens=512, window=256)
    assert same.mean_kl < 1e-9 and same.top1_agreement == 1.0
    diff = evaluate.compare_lm(cand, ref, num_tokens=512, window=256)
    assert diff.mean_kl > 1e-5 and abs(diff.ppl_reference - ppl.ppl) < 1e-6 * ppl.ppl


def test_accepts_exported_dir(tiny_llama_onnx, tmp_path) -> None:
    res = quantize(tiny_llama_onnx, "int8-wo", tmp_path / "from-dir")
    assert res.report["model"] == "tiny-llama" and res.report["validation"]["passed"]


def test_fp8_mse_range_is_searched_per_input_and_beats_max(tiny_llama) -> None:
    """``act_calib="mse"`` searches one clipped range per input tensor against the linears' output error: it is
    no wider than the max, shared by the linears reading one tensor, and its output error is no larger."""
    import torch

    from edgeq.converters.quantize import get_config
    from edgeq.converters.quantize.calibrate import make_calib_data, quantizable_linears
    from edgeq.converters.quantize.fp8 import _fp8_dq, calibrated_act_amax
    from edgeq.converters.quantize.numerics import act_amax, fake_quant_act
    from edgeq.converters.quantize.registry import QuantContext

    linears, _ = quantizable_linears(tiny_llama, (), False)
    calib = make_calib_data(tiny_llama, None, tokens=512, seq_len=128, holdout=128)
    amax = {m: calibrated_act_amax(QuantContext(tiny_llama, get_config("fp8", act_calib=m), linears, calib), _fp8_dq)
            for m in ("max", "mse")}
    assert all(amax["mse"][n] <= amax["max"][n] * (1 + 1e-6) for n in linears)
    assert any(amax["mse"][n] < amax["max"][n] * 0.999 for n in linears), "the search never clipped: it did nothing"
    p = "model.layers.0.self_attn."
    assert amax["mse"][p + "q_proj"] == amax["mse"][p + "k_proj"] == amax["mse"][p + "v_proj"]
    with pytest.raises(ValueError, match="mse_act_amax"):
        act_amax(torch.ones(4), "mse", 99.9)
    # on the calibration inputs of the first block's q/k/v the searched range has no more output error than the max
    from edgeq.converters.quantize.calibrate import iterate_blocks

    _, _, _, collect, _ = next(iterate_blocks(tiny_llama, calib.calib))
    x = collect()[p + "q_proj"].float()
    ws = [linears[p + f"{c}_proj"].weight.detach().float() for c in "qkv"]

    def err(m: str) -> float:  # what the search minimises (on a sample of rows): the summed relative output MSE
        xq = fake_quant_act(x, amax[m][p + "q_proj"] / 448.0, "fp8")
        return sum(float((xq @ _fp8_dq(w).T - x @ w.T).pow(2).mean() / (x @ w.T).pow(2).mean()) for w in ws)

    assert err("mse") <= err("max") * 1.02, (err("mse"), err("max"))


def test_dynamic_fp8_graph_is_the_simulation(tiny_llama, tmp_path) -> None:
    """``fp8-dynamic``'s written-out per-token quantizer computes in ONNX Runtime what the torch simulation computes
    (the budget and the checkpoints' checks rely on it), differs from weight-only FP8, and is refused in FP16 graphs
    (no TensorRT builds it; only float32 graphs carry it)."""
    import torch

    from edgeq.converters.quantize import get_config
    from edgeq.converters.quantize.simulate import simulated
    from edgeq.converters.validate import lm_feeds
    from edgeq.errors import QuantizationError

    res = quantize(tiny_llama, get_config("fp8-dynamic"), tmp_path / "dyn")
    assert all(p.act_group == p.q.shape[1] and p.act_scale is None for p in res.plans.values())
    graph = onnx.load(str(tmp_path / "dyn" / "model.onnx")).graph
    casts = [n for n in graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT8E4M3FN]
    assert len(casts) == 2 * 4  # per layer: one for q/k/v's shared input, o, gate/up's shared input, down
    ids = np.arange(3, 40, dtype=np.int64)[None]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "dyn" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], lm_feeds(sess, ids, [], 2, 32))[0][0]
    with simulated(res.loaded.model, res.plans), torch.no_grad():
        want = res.loaded.model(input_ids=torch.tensor(ids), use_cache=False).logits[0].float().numpy()
        for p in res.plans.values():
            p.act_group = None
        weight_only = res.loaded.model(input_ids=torch.tensor(ids), use_cache=False).logits[0].float().numpy()
    assert np.abs(got - want).max() < 1e-3 < np.abs(got - weight_only).max()
    with pytest.raises(QuantizationError, match="float32"):
        quantize(tiny_llama, get_config("fp8-dynamic", compute_dtype="float16", validate=False), tmp_path / "half")
