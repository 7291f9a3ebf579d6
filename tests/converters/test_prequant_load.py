"""Pre-quantized checkpoints in: each format, written by code edgeq does not share, loads on this CPU-only host;
the dequantized weights equal the format's reference dequantization bit for bit, and the published codes,
scales and zero points are kept as stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeq.converters.sources import load_model
from edgeq.errors import CorruptWeightsError, UnsupportedArchitectureError

from .prequant_writers import write_awq_gemm, write_compressed_tensors, write_fp8_block



@pytest.fixture(scope="module")
def base():
    return load_model("tiny-llama")


def _file_tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def _weights(loaded) -> dict[str, torch.Tensor]:
    return {k: v for k, v in loaded.model.state_dict().items()}


def test_fp8_block_loads_and_equals_reference_dequant(base, tmp_path: Path) -> None:
    """Before the pre-quantized path, this checkpoint failed with "corrupt or truncated weights" (transformers
    refuses FP8 without a GPU)."""
    from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import FP8BlockDequantizer

    d = write_fp8_block(base, tmp_path / "fp8")
    loaded = load_model(str(d))
    assert loaded.published is not None and loaded.published.format.name == "fp8"
    files, ours = _file_tensors(d), _weights(loaded)
    ref32 = FP8BlockDequantizer(weight_block_size=(128, 128), dtype=torch.float32)
    ref16 = FP8BlockDequantizer(weight_block_size=(128, 128), dtype=torch.bfloat16)
    assert len(loaded.published.linears) == 14
    for name, p in loaded.published.linears.items():
        q, s = files[f"{name}.weight"], files[f"{name}.weight_scale_inv"]
        assert torch.equal(p.q.view(torch.uint8), q.view(torch.uint8)) and torch.equal(p.scale, s) and p.scale.dtype == s.dtype
        w = ours[f"{name}.weight"]
        assert torch.equal(w, ref32._create_dequantized_weight(q, s)), name
        assert torch.equal(w.to(torch.bfloat16), ref16._create_dequantized_weight(q, s)), name
    # the unquantized tensors are the checkpoint's, widened exactly
    assert torch.equal(ours["model.norm.weight"], files["model.norm.weight"].float())
    assert torch.equal(ours["lm_head.weight"], files["lm_head.weight"].float())


def test_fp8_partial_blocks_match_reference() -> None:
    """Shapes that 128 does not divide (ceil-sized scales) dequantize like the reference."""
    from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import FP8BlockDequantizer

    from edgeq.converters.prequant.formats import PublishedLinear

    g = torch.Generator().manual_seed(0)
    q = (torch.randn(200, 300, generator=g) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(2, 3, generator=g) * 1e-2 + 1e-4
    ref = FP8BlockDequantizer(weight_block_size=(128, 128), dtype=torch.float32)._create_dequantized_weight(q, s)
    assert torch.equal(PublishedLinear("x", "fp8", q, s, (128, 128)).dequant(), ref)


def test_awq_gemm_codes_and_dequant_match_compressed_tensors_converter(base, tmp_path: Path) -> None:
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    d = write_awq_gemm(base, tmp_path / "awq")
    loaded = load_model(str(d))
    assert loaded.published.format.name == "awq"
    files, ours = _file_tensors(d), _weights(loaded)
    conv = AutoAWQConverter(group_size=128)
    args = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=128, symmetric=False)
    for name, p in loaded.published.linears.items():
        q_ref, s_ref, z_ref = conv._convert_gemm_module(files[f"{name}.qweight"], files[f"{name}.scales"],
                                                        files[f"{name}.qzeros"])
        assert torch.equal(p.q, q_ref.to(torch.int8)) and torch.equal(p.zero, z_ref.to(torch.int8)), name
        assert torch.equal(p.scale, s_ref) and p.scale.dtype == torch.float16
        w = ours[f"{name}.weight"]
        assert torch.equal(w, dequantize(q_ref, s_ref.float(), z_ref, args)), name  # exact in FP32
        assert torch.equal(w.half(), dequantize(q_ref, s_ref, z_ref, args)), name  # AWQ's own FP16 arithmetic


@pytest.mark.parametrize("kind,symmetric", [("int4", False), ("int4", True), ("fp8", True), ("fp8-block", True)])
def test_compressed_tensors_matches_its_decompressor(base, tmp_path: Path, kind: str, symmetric: bool) -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    d = write_compressed_tensors(base, tmp_path / f"ct-{kind}", kind, symmetric=symmetric)
    loaded = load_model(str(d))
    fmt = loaded.published.format
    assert fmt.name == ("compressed-tensors/pack-quantized" if kind == "int4" else "compressed-tensors/float-quantized")
    files, ours = _file_tensors(d), _weights(loaded)
    qc = QuantizationConfig.model_validate(json.loads((d / "config.json").read_text())["quantization_config"])
    scheme = qc.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(qc.format)
    names = compressor.compression_param_names(scheme)
    def decompress(module: dict[str, torch.Tensor]) -> torch.Tensor:
        if kind == "fp8-block":  # 0.17.1's float-quantized decompress drops the args, so block scales fail there:
            return dequantize(module["weight"], module["weight_scale"], args=scheme.weights)  # its dequantize, with them
        return compressor.decompress(module, scheme)["weight"]

    for name, p in loaded.published.linears.items():
        module = {n: files[f"{name}.{n}"] for n in names if f"{name}.{n}" in files}
        native = decompress(dict(module))  # in the scales' dtype (bf16), as published
        wide = decompress({n: v.float() if n.endswith("_scale") else v for n, v in module.items()})  # in FP32
        w = ours[f"{name}.weight"]
        assert native.dtype == torch.bfloat16 and wide.dtype == torch.float32
        assert torch.equal(w, wide), name
        assert torch.equal(w.to(torch.bfloat16), native), name
        assert (p.zero is None) == (symmetric or kind.startswith("fp8"))
        assert torch.equal(p.scale, files[f"{name}.weight_scale"]) and p.scale.dtype == torch.bfloat16
        if kind == "fp8":
            assert p.act_scale == float(files[f"{name}.input_scale"].float()[0])
        if kind == "fp8-block":
            assert p.block == (128, 128) and p.act_scale is None
    assert len(loaded.published.linears) == 14


def test_unsupported_method_is_refused(base, tmp_path: Path) -> None:
    d = write_fp8_block(base, tmp_path / "gptq")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="gptq"):
        load_model(str(d))


def test_missing_scale_is_corrupt(base, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    d = write_awq_gemm(base, tmp_path / "awq-cut")
    t = _file_tensors(d)
    del t["model.layers.1.mlp.up_proj.scales"]
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CorruptWeightsError, match="up_proj.scales"):
        load_model(str(d))
