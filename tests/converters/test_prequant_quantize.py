"""Pre-quantized checkpoints through the quantizer and the build: the QDQ ONNX holds the published codes,
scales and zero points exactly; a target that runs the format keeps them, one that does not (FP8 on Jetson
Orin) re-quantizes and the build summary says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.converters.quantize import get_config, quantize
from edgeq.converters.sources import load_model

from .prequant_writers import write_awq_gemm, write_compressed_tensors, write_fp8_block

WRITERS = {
    "fp8-block": lambda base, d: write_fp8_block(base, d),
    "awq": lambda base, d: write_awq_gemm(base, d),
    "ct-int4-asym": lambda base, d: write_compressed_tensors(base, d, "int4", symmetric=False),
    "ct-fp8-channel": lambda base, d: write_compressed_tensors(base, d, "fp8"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = load_model("tiny-llama")
    root = tmp_path_factory.mktemp("prequant")
    return {k: fn(base, root / k) for k, fn in WRITERS.items()}


def _inits(onnx_path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_qdq_onnx_keeps_published_codes_scales_zeros(checkpoints, tmp_path: Path, fmt: str) -> None:
    import ml_dtypes

    loaded = load_model(str(checkpoints[fmt]))
    res = quantize(loaded, "prequantized", tmp_path / "q")
    assert res.report["validation"]["passed"], res.report["validation"]
    stats = res.report["scheme_stats"]["prequantized"]
    assert stats["kept_exactly"] == 14 and stats["not_published"] == ["lm_head"]  # the writers leave the head FP
    inits = _inits(res.onnx_path)
    for name, p in loaded.published.linears.items():
        base = name.replace(".", "_")
        wq, ws = inits[f"{base}_wq"], inits[f"{base}_wscale"]
        if p.kind == "int4":
            assert wq.dtype == ml_dtypes.int4
            assert np.array_equal(wq.astype(np.int8), p.q.T.numpy()), name  # the published codes, as stored
            assert np.array_equal(ws, p.scale.float().T.numpy()), name  # the published scales, widened exactly
            if p.zero is not None:
                off = inits[f"{base}_woffset"]  # [blocks, out]
                assert np.array_equal(-off / ws, p.zero.T.numpy().astype(np.float32)), name  # zero points exact
            else:
                assert f"{base}_woffset" not in inits
        else:
            assert wq.dtype == ml_dtypes.float8_e4m3fn
            assert np.array_equal(wq.view(np.uint8), p.q.T.contiguous().view(torch.uint8).numpy()), name
            full = p.expanded(p.scale.float())  # [out, in]: each weight's published scale
            if p.block[1] >= p.q.shape[1]:  # per channel: one DQ scale per output
                assert np.array_equal(ws, full[:, 0].numpy()), name
            else:  # 1-D blocks along the input: the scale of each (row, block), repeated over the block's rows
                assert np.array_equal(np.repeat(ws, p.block[1], axis=0), full.T.numpy()), name


def test_fp8_activations_follow_the_weight_scales(checkpoints, tmp_path: Path) -> None:
    """Layers whose FP8 DequantizeLinear is blocked stay weight-only (TensorRT-RTX builds no FP8 GEMM on blocked
    weights); per-channel ones get static activation scales, the checkpoint's own ``input_scale`` where it has one."""
    blocked = quantize(str(checkpoints["fp8-block"]), "prequantized", tmp_path / "blk").report["layers"]
    # tiny Llama: the 128-input layers have one 128-block per row (per channel); down_proj (256 inputs) has two
    assert {n for n, p in blocked.items() if "block_size" in p} == {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)}
    assert all(("act_scale" in p) == ("block_size" not in p) for p in blocked.values())
    channel = quantize(str(checkpoints["ct-fp8-channel"]), "prequantized", tmp_path / "ch").report["layers"]
    loaded = load_model(str(checkpoints["ct-fp8-channel"]))
    assert {n: p["act_scale"] for n, p in channel.items()} == {n: p.act_scale for n, p in loaded.published.linears.items()}


def test_prequantized_needs_a_prequantized_model(tmp_path: Path) -> None:
    from edgeq.errors import QuantizationError

    with pytest.raises(QuantizationError, match="not a pre-quantized checkpoint"):
        quantize("tiny-llama", get_config("prequantized", validate=False), tmp_path / "q")


@pytest.mark.parametrize("fmt,target,precision,keep", [
    ("fp8-block", "rtx-ada", "fp8", True),
    ("fp8-block", "jetson-orin", "int4-awq", False),
    ("awq", "jetson-orin", "int4-awq", True),
])
def test_build_keeps_or_requantizes(checkpoints, tmp_path: Path, fmt: str, target: str, precision: str, keep: bool) -> None:
    from edgeq.converters.build import build

    res = build(str(checkpoints[fmt]), target, out=tmp_path / "b", health=False)
    assert res.precision == precision
    rows = dict(res.summary_rows())
    assert rows["weights"] == res.weights_note
    info = res.manifest.build["prequantized"]
    assert info["keep"] is keep and info["precision"] == precision
    if keep:
        assert "kept the checkpoint's" in res.weights_note and res.manifest.quant_config["scheme"] == "prequantized"
        # the published weights are the reference: no budget, and the summary says why rather than "none"
        assert res.manifest.build["accuracy_budget"] is None and rows["accuracy budget"].startswith("not applied")
    else:
        assert "sm87 has no FP8" in res.weights_note and "re-quantized to int4-awq" in res.weights_note
        assert res.manifest.quant_config["scheme"] == "int4-awq"
        assert res.manifest.build["accuracy_budget"]["budget"]["text"] == "ppl+1.5%"  # re-quantized: jetson-orin's
    if target == "rtx-ada":
        assert res.engine_mode == "built"  # TensorRT-RTX took the blocked FP8 DequantizeLinear (sm89, built here)
