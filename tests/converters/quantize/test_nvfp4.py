"""NVFP4: E2M1 rounding and packing as ONNX specifies them, the two-level scales, a numpy reference of the
quantize-dequantize, the emitted graph (checker, ops, opset 23), the torch simulation equal to the graph run by
onnx's reference evaluator, the target checks and the CLI."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from edgeq.converters.quantize import get_config, handler_named, quantize
from edgeq.converters.quantize import nvfp4
from edgeq.converters.quantize.nvfp4_qdq import DYNQ_OP, TRT_DOMAIN, pack_e2m1

SMALL = {"calib_tokens": 256, "calib_seq_len": 64, "holdout_tokens": 128}


def test_round_e2m1_matches_ml_dtypes_cast() -> None:
    """Every midpoint (ties go to the even code), both signs, values past +-6 (saturate) and a dense sweep."""
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    x = np.concatenate([ties, -ties, np.linspace(-8, 8, 4001, dtype=np.float32), [7.0, 100.0, -1e9, 0.0]]).astype(np.float32)
    want = x.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    got = nvfp4.round_e2m1(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    assert got[0] == 0.0 and got[1] == 1.0 and got[4] == 2.0  # 0.25 -> 0, 0.75 -> 1, 2.5 -> 2: the even codes


def test_packing_nibble_order_and_round_trip() -> None:
    """Two values a byte, the first in the low nibble (ONNX's 4-bit layout, TensorRT's too); odd sizes pad."""
    vals = np.array([1.0, -6.0, 0.5, 3.0, -0.5], np.float32)  # codes 0x2, 0xF, 0x1, 0x5, 0x9
    t = numpy_helper.from_array(pack_e2m1(vals), "w")
    assert t.data_type == TensorProto.FLOAT4E2M1
    assert t.raw_data == bytes([0xF2, 0x51, 0x09])
    np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.float32), vals)


def test_scales_two_level() -> None:
    """s2 = amax / (6 * 448); the block holding amax gets E4M3 448 exactly; a zero block stays zero."""
    w = torch.zeros(2, 32)
    w[0, :16] = torch.linspace(-3.0, 3.0, 16)  # block amax 3 = tensor amax
    w[0, 16:] = 0.5  # block amax 0.5
    plan = nvfp4.weight_plan("l", w)
    s2 = np.float32(3.0) / np.float32(6 * 448)
    assert plan.global_scale == pytest.approx(float(s2), rel=1e-7)
    s8 = plan.scale.float()
    assert s8[0, 0] == 448.0
    assert s8[0, 1] == float(np.float32((0.5 / 6) / s2).astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    assert torch.all(s8[1] == 0) and torch.all(plan.q[1] == 0) and torch.all(plan.dequant()[1] == 0)


def _numpy_nvfp4(w: np.ndarray) -> np.ndarray:
    """An independent quantize-dequantize with ml_dtypes casts (ModelOpt's NVFP4 recipe)."""
    s2 = np.float32(np.abs(w).max() / np.float32(6 * 448))
    wb = w.reshape(w.shape[0], -1, 16)
    s8 = np.minimum((np.abs(wb).max(-1) / np.float32(6)) / s2, 448).astype(ml_dtypes.float8_e4m3fn)
    scale = s8.astype(np.float32) * s2
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale[..., None] > 0, wb / scale[..., None], 0).astype(ml_dtypes.float4_e2m1fn)
    return (q.astype(np.float32) * scale[..., None]).reshape(w.shape)


def test_quant_dequant_equals_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 128)) * np.exp(rng.standard_normal((48, 1)))).astype(np.float32)
    w[3, 16:32] = 0.0
    plan = nvfp4.weight_plan("l", torch.from_numpy(w))
    np.testing.assert_array_equal(plan.dequant().numpy(), _numpy_nvfp4(w))


def test_activation_fake_quant_per_block() -> None:
    """W4A4's activations: blocks of 16 along the last axis, each block's E4M3 scale from its own amax."""
    x = torch.randn(2, 3, 64)
    s2 = float(nvfp4.global_scale(x.abs().amax()))
    got = nvfp4.fake_quant_act(x, s2)
    want = _numpy_nvfp4(x.reshape(-1, 64).numpy()).reshape(x.shape)  # the same per-16 recipe, row by row
    np.testing.assert_array_equal(got.numpy(), want)


class _DynQuant:
    """TRT_FP4DynamicQuantize for onnx's reference evaluator: per-16 block scales along the last axis,
    E4M3 over the tensor scale, values cast to E2M1 (numpy, independent of nvfp4.py)."""

    @staticmethod
    def op():
        from onnx.reference.op_run import OpRun

        class TRT_FP4DynamicQuantize(OpRun):  # noqa: N801 (the op's name)
            op_domain = TRT_DOMAIN

            def _run(self, x, s2, axis=-1, block_size=16, scale_type=None):  # noqa: ANN001
                xb = x.astype(np.float32).reshape(*x.shape[:-1], -1, block_size)
                s8 = np.minimum((np.abs(xb).max(-1) / np.float32(6)) / np.float32(s2), 448).astype(ml_dtypes.float8_e4m3fn)
                scale = s8.astype(np.float32) * np.float32(s2)
                with np.errstate(divide="ignore", invalid="ignore"):
                    q = np.where(scale[..., None] > 0, xb / scale[..., None], 0).astype(ml_dtypes.float4_e2m1fn)
                return q.reshape(x.shape), s8

        return TRT_FP4DynamicQuantize


@pytest.fixture(scope="module")
def quantized(tiny_llama, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nvfp4")
    return {(s, cd): quantize(tiny_llama, get_config(s, compute_dtype=cd, **SMALL), root / f"{s}-{cd}")
            for s in ("nvfp4-wo", "nvfp4") for cd in ("float32", "float16")}


@pytest.mark.parametrize("scheme", ["nvfp4-wo", "nvfp4"])
@pytest.mark.parametrize("cd", ["float32", "float16"])
def test_graph_passes_checker(quantized, scheme: str, cd: str) -> None:
    res = quantized[(scheme, cd)]
    model = onnx.load(str(res.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain or "", o.version) for o in model.opset_import} >= {("", 23)}
    inits = {t.name: t for t in model.graph.initializer}
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    n_layers = len(res.report["layers"])
    fp4 = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
           and inits[n.input[0]].data_type == TensorProto.FLOAT4E2M1]
    assert len(fp4) == n_layers and all(json.loads(json.dumps(res.report["layers"][k]))["block_size"] == 16
                                        for k in res.report["layers"])
    # the weight's block scales: E4M3 dequantized by one FP32 tensor scale (kept FP32 in the FP16 graph too)
    producers = {o: n for n in model.graph.node for o in n.output}
    for dq in fp4:
        first = producers[dq.input[1]]
        assert inits[first.input[0]].data_type == TensorProto.FLOAT8E4M3FN
        assert inits[first.input[1]].data_type == TensorProto.FLOAT and list(inits[first.input[1]].dims) == []
        if cd == "float16":
            assert next(a.i for a in first.attribute if a.name == "output_dtype") == TensorProto.FLOAT16
    nonstandard = {op for op in ops if op[0] not in ("", "ai.onnx")}
    assert nonstandard == ({(TRT_DOMAIN, DYNQ_OP)} if scheme == "nvfp4" else set())
    assert res.report["validation"]["passed"] and "torch simulation" in res.report["validation"]["method"]
    assert res.report["sizes"]["quantized_onnx_bytes"] < res.report["sizes"]["fp_onnx_bytes"] / 2


@pytest.mark.parametrize("scheme", ["nvfp4-wo", "nvfp4"])
def test_simulation_equals_onnx_graph(quantized, tiny_llama, scheme: str) -> None:
    """The FP32 graph run by onnx's reference evaluator gives the logits of the torch simulation: the quality
    numbers measured through the simulation are the graph's."""
    from onnx.reference import ReferenceEvaluator

    from edgeq.converters.quantize.simulate import simulated

    res = quantized[(scheme, "float32")]
    info = json.loads((res.out_dir / "edgeq_model.json").read_text())
    ids = torch.randint(0, 100, (1, 12))
    sess = ReferenceEvaluator(str(res.onnx_path), new_ops=[_DynQuant.op()])
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, 12), np.int64),
             "position_ids": np.arange(12, dtype=np.int64)[None]}
    for i in range(info["num_hidden_layers"] if "num_hidden_layers" in info else 2):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, info["num_key_value_heads"], 0, info["head_dim"]), np.float32)
    names = {i.name for i in sess.proto_.graph.input}
    got = sess.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]
    with simulated(tiny_llama.model, res.plans), torch.no_grad():
        want = tiny_llama.model(input_ids=ids, use_cache=False).logits.float().numpy()
    with torch.no_grad():
        fp = tiny_llama.model(input_ids=ids, use_cache=False).logits.float().numpy()
    err = np.abs(got - want).max()
    assert err < 1e-3 * np.abs(want).max(), err
    assert np.abs(fp - want).max() > 20 * err  # the check sees quantization: FP logits differ far more


@pytest.mark.parametrize("target", ["rtx-blackwell", "jetson-thor", "dgx-spark"])
def test_blackwell_targets_offer_nvfp4(target: str) -> None:
    from edgeq.converters.build_checks import check_precision, target_profile

    profile = target_profile(target)
    for scheme in ("nvfp4", "nvfp4-wo"):
        check_precision(profile, scheme, "text-generation")


@pytest.mark.parametrize("target", ["rtx-ada", "rtx-ampere", "hopper-server", "jetson-orin"])
def test_other_targets_refuse_nvfp4(target: str) -> None:
    from edgeq.converters.build_checks import check_precision, target_profile
    from edgeq.errors import UnsupportedPrecisionError

    profile = target_profile(target)
    with pytest.raises(UnsupportedPrecisionError, match="Blackwell FP4 tensor cores"):
        check_precision(profile, "nvfp4", "text-generation")


def test_weight_bits_and_config() -> None:
    assert handler_named("nvfp4").weight_bits(get_config("nvfp4")) == 4.5
    assert get_config("nvfp4").to_dict()["scheme"] == "nvfp4"
    assert get_config("nvfp4-wo").needs_calibration is False and get_config("nvfp4").needs_calibration is True


def test_cli_quantize_nvfp4(tmp_path, capsys) -> None:
    from edgeq.cli import main

    out = tmp_path / "q"
    rc = main(["quantize", "--model", "tiny-llama", "--scheme", "nvfp4", "--out", str(out),
               "--set", "calib_tokens=256", "--set", "calib_seq_len=64", "--set", "holdout_tokens=128"])
    assert rc == 0, capsys.readouterr()
    assert json.loads((out / "quantize_report.json").read_text())["scheme"] == "nvfp4"
    assert main(["build", "--model", "tiny-llama", "--target", "rtx-ada", "--precision", "nvfp4",
                 "--out", str(tmp_path / "b")]) != 0
    assert "Blackwell FP4 tensor cores" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
