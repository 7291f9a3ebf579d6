"""Mixture of experts (tiny-qwen3-moe): the dense export formulation, routing-faithful export, per-expert
quantization with the router left alone, and calibration that reaches experts the text never routes to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeq.converters.moe import DenseMoe, dense_moe, moe_blocks, record_routing, router_names
from edgeq.converters.sources import load_model

MODEL = "tiny-qwen3-moe"
EXPERTS, TOP_K, LAYERS = 8, 2, 2
FAST_QUANT = {"calib_tokens": 128, "calib_seq_len": 32, "holdout_tokens": 64}
SCHEMES = ("fp8", "int8", "int8-wo", "int4-awq", "int4-rtn")
#: a coarser AWQ search: these tests check where scales go, not how well AWQ searches them
FAST_SCHEME = {"int4-awq": {"n_grid": 5, "clip_steps": 4}}
REPEATED = "the " * 400  # calibration text that routes to a few experts only


@pytest.fixture(scope="module")
def loaded() -> Any:
    return load_model(MODEL)


@pytest.fixture(scope="module")
def moe_onnx(tmp_path_factory: pytest.TempPathFactory, loaded: Any) -> Path:
    """The tiny MoE saved as a Hugging Face directory and exported with the CLI, as the issue's user did
    (`edgeq export --model DIR` failed with "unsupported architecture 'qwen3_moe'")."""
    from edgeq.cli import main

    root = tmp_path_factory.mktemp("moe")
    loaded.model.save_pretrained(root / "hf")
    loaded.tokenizer.save_pretrained(root / "hf")
    assert main(["export", "--model", str(root / "hf"), "--out", str(root / "onnx")]) == 0
    return root / "onnx"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, loaded: Any) -> dict[str, Any]:
    """One quantized tiny MoE per scheme, made when a test first asks for it."""
    from edgeq.converters.quantize import get_config, quantize

    root = tmp_path_factory.mktemp("moe-q")
    cache: dict[str, Any] = {}

    def get(scheme: str, **extra: Any) -> Any:
        key = scheme + json.dumps(extra, sort_keys=True)
        if key not in cache:
            calib = extra.pop("calib_text", None)
            cache[key] = quantize(loaded, get_config(scheme, **FAST_QUANT, **extra), root / f"q{len(cache)}",
                                  calib_text=calib)
        return cache[key]

    return {"get": get}


def _topk(loaded: Any, ids: torch.Tensor) -> list[set[tuple[int, ...]]]:
    """Per MoE layer, the set of top-k expert tuples the tokens of ``ids`` are routed to."""
    with record_routing(loaded.model) as log, torch.no_grad():
        loaded.model(input_ids=ids, use_cache=False)
    return [{tuple(sorted(r.tolist())) for r in calls[0]} for calls in log.calls.values()]


# -- the formulation ------------------------------------------------------------------------------------
def test_dense_block_equals_hf_block_and_is_swapped_back(loaded: Any) -> None:
    blocks = moe_blocks(loaded.model)
    assert len(blocks) == LAYERS and all(type(b).__name__ == "Qwen3MoeSparseMoeBlock" for b in blocks.values())
    hf = blocks["model.layers.0.mlp"]
    x = torch.randn(2, 9, loaded.model.config.hidden_size)
    with torch.no_grad():
        ref, ref_logits = hf(x)
        with dense_moe(loaded.model) as swapped:
            dense = loaded.model.get_submodule("model.layers.0.mlp")
            assert isinstance(dense, DenseMoe) and swapped["model.layers.0.mlp"] is dense
            assert dense.experts is hf.experts and dense.router.gate is hf.gate  # shared, not copied
            got, logits = dense(x)
    assert loaded.model.get_submodule("model.layers.0.mlp") is hf
    assert torch.equal(logits, ref_logits)
    assert float((got - ref).abs().max()) <= 1e-6


def test_router_names_point_at_the_router_linears(loaded: Any) -> None:
    assert router_names(loaded.model) == {f"model.layers.{i}.mlp.gate" for i in range(LAYERS)}
    with dense_moe(loaded.model):
        assert router_names(loaded.model) == {f"model.layers.{i}.mlp.router.gate" for i in range(LAYERS)}


def test_calibration_walks_the_decoder_layers_not_an_expert_list(loaded: Any) -> None:
    """A MoE layer's expert list (8) is longer than the decoder's layer list (2) and lives inside it."""
    from edgeq.converters.quantize.calibrate import find_blocks

    assert find_blocks(loaded.model)[0] == "model.layers"


# -- export ---------------------------------------------------------------------------------------------
def test_export_has_kv_cache_static_routing_ops_and_passes_validation(moe_onnx: Path) -> None:
    model = onnx.load(moe_onnx / "model.onnx", load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert "NonZero" not in ops and "ScatterND" not in ops and "TopK" in ops  # what TensorRT-RTX 1.7 refuses
    inputs = {i.name for i in model.graph.input}
    assert {"past_key_values.0.key", "past_key_values.1.value"} <= inputs
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert {f"/model/layers.{i}/mlp/experts.{e}/{p}/MatMul" for i in range(LAYERS) for e in range(EXPERTS)
            for p in ("gate_proj", "up_proj", "down_proj")} <= matmuls
    report = json.loads((moe_onnx / "validation.json").read_text())
    assert report["passed"] and {d["case"] for d in report["diffs"]} >= {"b1_new1_past8", "b2_new5_past7"}
    routing = report["routing"]
    assert routing["distinct_topk_sets"] >= 2
    for counts in routing["tokens_per_expert"].values():
        assert len(counts) == EXPERTS and sum(c > 0 for c in counts) > TOP_K


def test_graph_follows_the_router_on_inputs_routed_to_different_experts(loaded: Any, moe_onnx: Path) -> None:
    """Two prompts whose tokens go to different experts: the ONNX matches PyTorch on both, prefill and decode."""
    import onnxruntime as ort

    from edgeq.converters.validate import TOLERANCES, lm_feeds

    a = torch.tensor([[5, 9, 17, 33, 65, 129, 200]])
    rng = np.random.default_rng(1)
    b = None
    for _ in range(50):  # a second prompt whose first-layer top-k sets differ from a's
        cand = torch.from_numpy(rng.integers(3, loaded.model.config.vocab_size, size=(1, 7)))
        if _topk(loaded, cand)[0] != _topk(loaded, a)[0]:
            b = cand
            break
    assert b is not None
    assert _topk(loaded, a)[0] != _topk(loaded, b)[0] and _topk(loaded, a)[1] != _topk(loaded, b)[1]
    sess = ort.InferenceSession(str(moe_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    kv_heads, head_dim = loaded.model.config.num_key_value_heads, loaded.model.config.head_dim
    names = [o.name for o in sess.get_outputs()]
    tol = TOLERANCES["text-generation"]

    def close(got: np.ndarray, ref: np.ndarray) -> bool:
        return float(np.abs(got - ref).max()) <= tol["atol"] + tol["rtol"] * float(np.abs(ref).max())

    for ids in (a, b):
        with torch.no_grad():
            full = loaded.model(input_ids=ids, use_cache=False).logits.numpy()
            pre = loaded.model(input_ids=ids[:, :-1], use_cache=True)
            step = loaded.model(input_ids=ids[:, -1:], past_key_values=pre.past_key_values, use_cache=True).logits.numpy()
        assert close(sess.run(["logits"], lm_feeds(sess, ids.numpy(), [], kv_heads, head_dim))[0], full)
        # decode the last token on the ONNX's own KV cache of the prefix
        outs = dict(zip(names, sess.run(None, lm_feeds(sess, ids[:, :-1].numpy(), [], kv_heads, head_dim))))
        kv = [(outs[f"present.{i}.key"], outs[f"present.{i}.value"]) for i in range(LAYERS)]
        assert close(sess.run(["logits"], lm_feeds(sess, ids[:, -1:].numpy(), kv, kv_heads, head_dim))[0], step)


def test_validation_fails_when_the_inputs_show_one_routing_only() -> None:
    from edgeq.converters.validate import OutputDiff, ValidationReport

    ok = [OutputDiff("c", "logits", 0.0, 0.0, 1.0, 1.0, True)]
    one = ValidationReport("text-generation", 1e-3, 1e-4, list(ok), routing={"distinct_topk_sets": 1})
    two = ValidationReport("text-generation", 1e-3, 1e-4, list(ok), routing={"distinct_topk_sets": 2})
    assert not one.passed and two.passed


# -- quantization ---------------------------------------------------------------------------------------
def _dq_scale_of(graph: Any, matmul: str) -> np.ndarray | None:
    """The weight DequantizeLinear scale the named MatMul reads (None: it reads an FP weight)."""
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    node = next(n for n in graph.node if n.name == matmul)
    dq = producers.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    return numpy_helper.to_array(inits[dq.input[1]])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_quantizes_each_expert_with_its_own_scales_and_keeps_the_router(
        scheme: str, quantized: dict[str, Any]) -> None:
    res = quantized["get"](scheme, **FAST_SCHEME.get(scheme, {}))
    report = res.report
    assert report["validation"]["passed"], report["validation"]
    routers = {f"model.layers.{i}.mlp.gate" for i in range(LAYERS)}
    assert routers <= set(report["kept_fp16"]) and not routers & set(report["layers"])
    g = onnx.load(str(res.onnx_path)).graph
    for i in range(LAYERS):
        assert _dq_scale_of(g, f"/model/layers.{i}/mlp/router/gate/MatMul") is None  # FP weight, no DQ
        for proj in ("gate_proj", "up_proj", "down_proj"):
            scales = [_dq_scale_of(g, f"/model/layers.{i}/mlp/experts.{e}/{proj}/MatMul") for e in range(EXPERTS)]
            assert all(s is not None for s in scales), (scheme, i, proj)
            assert len({s.tobytes() for s in scales}) == EXPERTS  # one scale tensor per expert, none shared
            assert f"model.layers.{i}.mlp.experts.7.{proj}" in report["layers"]
    if scheme in ("fp8", "int8"):  # W8A8: every linear, attention and experts, got a calibrated input range
        assert all("act_scale" in layer for layer in report["layers"].values())
    moe = report["scheme_stats"]["moe_calibration"]
    assert moe["tokens_seen_per_expert"] == report["calibration"]["sequences"] * report["calibration"]["seq_len"]
    for counts in moe["routed_tokens_per_expert"].values():
        assert sum(counts) == TOP_K * moe["tokens_seen_per_expert"]


def test_calibration_reaches_experts_the_text_never_routes_to(quantized: dict[str, Any]) -> None:
    """FP8 activation scales are calibrated for experts that no calibration token is routed to."""
    res = quantized["get"]("fp8", calib_text=REPEATED)
    moe = res.report["scheme_stats"]["moe_calibration"]
    never = moe["never_routed"]
    assert never and all(never.values())  # the repeated text leaves experts unrouted in every layer
    for block, experts in never.items():
        for e in experts:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                layer = res.report["layers"][f"{block}.experts.{e}.{proj}"]
                assert layer["act_amax"] is not None and layer["act_amax"] > 1e-3, (block, e, proj, layer)
                assert "act_scale" in layer


def test_awq_folds_a_scale_into_each_experts_up_projection(quantized: dict[str, Any]) -> None:
    res = quantized["get"]("int4-awq", **FAST_SCHEME["int4-awq"])
    groups = res.report["scheme_stats"]["awq_groups"]
    folded = {m for grp in groups if "ratio" in grp for m in grp["group"]}
    assert {f"model.layers.{i}.mlp.experts.{e}.down_proj" for i in range(LAYERS) for e in range(EXPERTS)} <= folded
    assert not any("skipped" in grp and "experts" in grp["group"][0] for grp in groups)
