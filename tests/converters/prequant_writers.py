"""Tiny random models written in each pre-quantized format by code that shares nothing with edgeq's reader.

compressed-tensors checkpoints are written by compressed-tensors itself (its QuantizationConfig, qparam
calculation and ModelCompressor, as llm-compressor drives them). Fine-grained FP8 and AutoAWQ GEMM are
hand-packed here per their published layouts (DeepSeek-V3's ``weight_scale_inv`` blocks; AutoAWQ's
``WQLinear_GEMM.from_linear`` packing order 0, 2, 4, 6, 1, 3, 5, 7).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _linears(model: Any) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]


def _save(loaded: Any, out: Path, tensors: dict[str, torch.Tensor], qc: dict[str, Any], dtype: str) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    loaded.tokenizer.save_pretrained(out)
    cfg = loaded.model.config.to_dict()
    cfg["quantization_config"] = qc
    cfg["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _plain_state(loaded: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    if getattr(loaded.model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # a tied head is not stored (transformers saves it once)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def write_fp8_block(loaded: Any, out: Path, block: tuple[int, int] = (128, 128),
                    scale_dtype: torch.dtype = torch.bfloat16) -> Path:
    """Fine-grained FP8 as DeepSeek-V3 / Qwen3-*-FP8 publish it: E4M3 weights, one inverse scale per block."""
    sd = _plain_state(loaded, torch.bfloat16)
    bo, bi = block
    for name in _linears(loaded.model):
        w = loaded.model.get_submodule(name).weight.detach().float()
        out_f, in_f = w.shape
        pr, pc = -(-out_f // bo) * bo, -(-in_f // bi) * bi
        wp = torch.nn.functional.pad(w, (0, pc - in_f, 0, pr - out_f))
        blocks = wp.reshape(pr // bo, bo, pc // bi, bi)
        scale = (blocks.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-12).to(scale_dtype)
        full = scale.float().repeat_interleave(bo, 0).repeat_interleave(bi, 1)[:out_f, :in_f]
        sd[f"{name}.weight"] = (w / full).clamp(-448, 448).to(torch.float8_e4m3fn)
        sd[f"{name}.weight_scale_inv"] = scale
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(block)}
    return _save(loaded, out, sd, qc, "bfloat16")


def _awq_pack(codes: torch.Tensor) -> torch.Tensor:
    """AutoAWQ GEMM packing of unsigned codes ``[rows, cols]`` -> int32 ``[rows, cols / 8]``."""
    rows, cols = codes.shape
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32)
    c = codes.to(torch.int32)
    for col in range(cols // 8):
        for i in range(8):
            packed[:, col] |= c[:, col * 8 + AWQ_PACK_ORDER[i]] << (i * 4)
    return packed


def write_awq_gemm(loaded: Any, out: Path, group: int = 128) -> Path:
    """AutoAWQ GEMM: asymmetric 4-bit, FP16 scales, zeros rounded onto [0, 15] (AutoAWQ's pseudo-quantizer)."""
    sd = _plain_state(loaded, torch.float16)
    for name in _linears(loaded.model):
        w = loaded.model.get_submodule(name).weight.detach().float()
        out_f, in_f = w.shape
        wg = w.reshape(out_f, in_f // group, group)
        mx, mn = wg.amax(-1), wg.amin(-1)
        scales = ((mx - mn).clamp(min=1e-5) / 15).to(torch.float16)
        zeros = (-mn / scales.float()).round().clamp(0, 15)
        q = (torch.round(wg / scales.float().unsqueeze(-1)) + zeros.unsqueeze(-1)).clamp(0, 15).reshape(out_f, in_f)
        del sd[f"{name}.weight"]
        sd[f"{name}.qweight"] = _awq_pack(q.T.contiguous())  # [in, out/8]
        sd[f"{name}.qzeros"] = _awq_pack(zeros.T.contiguous())  # [in/g, out/8]
        sd[f"{name}.scales"] = scales.T.contiguous()  # [in/g, out]
    qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
          "modules_to_not_convert": None}
    return _save(loaded, out, sd, qc, "float16")


def write_compressed_tensors(loaded: Any, out: Path, kind: str, symmetric: bool = False, group: int = 64) -> Path:
    """compressed-tensors' own writer: ``int4`` (pack-quantized, group strategy), ``fp8`` (float-quantized,
    per-channel weights + static per-tensor input scale) or ``fp8-block`` (float-quantized 128x128 blocks,
    dynamic activations: llm-compressor's FP8_BLOCK preset), on a bf16 copy of the model."""
    import copy

    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs, QuantizationConfig, QuantizationScheme, apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = copy.deepcopy(loaded.model).to(torch.bfloat16)
    if kind == "int4":
        wargs = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=group, symmetric=symmetric)
        iargs, fmt = None, "pack-quantized"
    elif kind == "fp8":
        wargs = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
        iargs = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True, dynamic=False)
        fmt = "float-quantized"
    else:
        wargs = QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure=[128, 128], symmetric=True)
        iargs = QuantizationArgs(num_bits=8, type="float", strategy="group", group_size=128, symmetric=True, dynamic=True)
        fmt = "float-quantized"
    qcfg = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=wargs,
                                                                           input_activations=iargs)},
                              ignore=["lm_head"])
    apply_quantization_config(model, qcfg)
    g = torch.Generator().manual_seed(1)
    for _name, m in model.named_modules():
        if not hasattr(m, "quantization_scheme"):
            continue
        w = m.weight.data
        if kind == "int4":
            wb = w.reshape(w.shape[0], -1, group)
            s, z = calculate_qparams(wb.amin(-1), wb.amax(-1), wargs)
        elif kind == "fp8-block":
            o, i = w.shape
            pw = torch.nn.functional.pad(w, (0, -i % 128, 0, -o % 128)).reshape(-(-o // 128), 128, -(-i // 128), 128)
            s, z = calculate_qparams(pw.amin(dim=(1, 3)), pw.amax(dim=(1, 3)), wargs)
        else:
            s, z = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), wargs)
            m.input_scale.data.copy_(torch.rand(1, generator=g) * 0.02 + 0.01)
        m.weight_scale.data.copy_(s)
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data.copy_(z)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    loaded.tokenizer.save_pretrained(out)
    return out
