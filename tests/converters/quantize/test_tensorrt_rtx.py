"""The emitted QDQ ONNX parses (strongly typed) and builds in TensorRT-RTX for sm89 on this CPU-only host."""

from __future__ import annotations

import pytest

from edgeq.converters.quantize import get_config, quantize

from .trt_helpers import build_rtx

pytestmark = pytest.mark.trt_rtx  # skipped without TensorRT-RTX, an error in CI (tests/conftest.py)


@pytest.mark.parametrize("scheme", ["int4-awq", "fp8", "int8"])
def test_builds_for_sm89(quantized_tiny, scheme: str) -> None:
    res = quantized_tiny("tiny-llama", scheme)  # the files test_quantize_tiny checks
    ok, log = build_rtx(res.out_dir, "SM89")
    assert ok, log


@pytest.mark.parametrize("asymmetric", [True, False])
def test_int4_offset_correction_builds_fp16(tiny_llama, tmp_path, asymmetric: bool) -> None:
    """Asymmetric INT4's correction term (block-sum and offset MatMuls) builds in an FP16-compute engine;
    the symmetric file has none of those nodes."""
    import onnx

    cfg = get_config("int4-awq", block_size=32, asymmetric=asymmetric, compute_dtype="float16")
    res = quantize(tiny_llama, cfg, tmp_path / "q")
    nodes = onnx.load(str(res.onnx_path), load_external_data=False).graph.node
    n_offsets = sum(n.name.endswith("/Offset_MatMul") for n in nodes)
    assert n_offsets == (len(res.report["layers"]) if asymmetric else 0)
    ok, log = build_rtx(res.out_dir, "SM89")
    assert ok, log


@pytest.mark.parametrize("scheme", ["nvfp4", "nvfp4-wo"])
def test_nvfp4_builds_for_sm120_only(tiny_llama, tmp_path, scheme: str) -> None:
    """NVFP4 (opset-23 FP4 DequantizeLinear; W4A4 with TRT_FP4DynamicQuantize) builds for Blackwell sm120 in the
    FP16-compute graph GPU targets get, and TensorRT-RTX itself refuses it for Ada (sm89)."""
    cfg = get_config(scheme, compute_dtype="float16", calib_tokens=256, calib_seq_len=64, holdout_tokens=128)
    res = quantize(tiny_llama, cfg, tmp_path / scheme)
    ok, log = build_rtx(res.out_dir, "SM120")
    assert ok, log
    ok, log = build_rtx(res.out_dir, "SM89")
    assert not ok and "HW-specific datatypes: fp4_e2m1" in log, log
