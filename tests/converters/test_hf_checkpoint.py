"""Quantized HF checkpoints out, checked by third-party loaders: compressed-tensors' decompressors and its
AutoAWQ/FP8 converters, and transformers (through compressed-tensors) on this CPU. Each checkpoint holds the
same weights as the QDQ ONNX written beside it, and transformers' greedy tokens equal the ONNX's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeq.converters.hf_checkpoint.api import hf_config_for, quantize_to_hf
from edgeq.converters.hf_checkpoint.greedy import onnx_greedy, torch_greedy
from edgeq.converters.quantize import get_config
from edgeq.converters.sources import load_model

from .prequant_writers import write_awq_gemm

#: calibrated AWQ at settings small enough for the default suite
AWQ_FAST = dict(block_size=64, n_grid=4, clip_steps=4, calib_tokens=1024, holdout_tokens=256)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from edgeq.converters.hf_checkpoint.api import write_checkpoint

    root = tmp_path_factory.mktemp("hf")
    ct = quantize_to_hf(tiny, get_config("int4-awq", **AWQ_FAST), root / "ct-int4", hf=hf_config_for("hf"))
    # the same calibrated plans as AutoAWQ GEMM (both formats snap alike: FP16 scales, integer zero points)
    (root / "awq").mkdir()
    write_checkpoint(ct.quantized.loaded, ct.quantized.plans, root / "awq", hf_config_for("hf-awq"))
    awq = type(ct)(out_dir=root / "awq", onnx_dir=ct.onnx_dir, hf=hf_config_for("hf-awq"), quantized=ct.quantized)
    (root / "awq" / "edgeq_greedy.json").write_text((ct.out_dir / "edgeq_greedy.json").read_text())
    return {
        "ct-int4": ct,
        "awq": awq,
        "ct-fp8": quantize_to_hf(tiny, "fp8", root / "ct-fp8", hf=hf_config_for("hf")),
        "fp8-block": quantize_to_hf(tiny, "fp8-block", root / "fp8-block", hf=hf_config_for("hf-fp8")),
        "ct-fp8-dynamic": quantize_to_hf(tiny, "fp8-dynamic", root / "ct-fp8-dynamic", hf=hf_config_for("hf")),
    }


def _files(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def _onnx_inits(d: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(d / "model.onnx")).graph.initializer}


def _transformers_greedy_matches(res) -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(res.out_dir, dtype=torch.float32)
    record = json.loads((res.out_dir / "edgeq_greedy.json").read_text())
    assert len(record["prompts"]) == 3
    for row in record["prompts"]:
        assert torch_greedy(model, row["prompt_ids"], record["new_tokens"]) == row["greedy_ids"], row["text"]


def test_compressed_tensors_int4_is_the_onnx_weights(written) -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig

    res = written["ct-int4"]
    qc = QuantizationConfig.model_validate(json.loads((res.out_dir / "config.json").read_text())["quantization_config"])
    scheme, files, inits = qc.config_groups["group_0"], _files(res.out_dir), _onnx_inits(res.onnx_dir)
    assert qc.format == "pack-quantized" and not scheme.weights.symmetric and scheme.weights.group_size == 64
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    plans = res.quantized.plans
    assert len(plans) == 14
    for name, plan in plans.items():
        base = name.replace(".", "_")
        module = {k: files[f"{name}.{k}"] for k in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")}
        codes = unpack_from_int32(module["weight_packed"], 4, module["weight_shape"])
        assert np.array_equal(inits[f"{base}_wq"].astype(np.int8), codes.T.numpy()), name  # one set of codes
        assert np.array_equal(inits[f"{base}_wscale"], module["weight_scale"].float().T.numpy()), name
        wide = {k: v.float() if k == "weight_scale" else v for k, v in module.items()}
        w_ct = compressor.decompress(wide, scheme)["weight"]  # compressed-tensors' dequantization, in FP32
        assert torch.equal(w_ct, plan.dequant()), name  # = q*s + offset of the ONNX, exactly
    _transformers_greedy_matches(res)


def test_compressed_tensors_fp8_is_the_onnx_weights(written) -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    res = written["ct-fp8"]
    qc = QuantizationConfig.model_validate(json.loads((res.out_dir / "config.json").read_text())["quantization_config"])
    scheme, files = qc.config_groups["group_0"], _files(res.out_dir)
    assert scheme.weights.strategy == "channel" and scheme.input_activations.strategy == "tensor"
    compressor = BaseCompressor.get_value_from_registry("float-quantized")
    for name, plan in res.quantized.plans.items():
        module = {k: files[f"{name}.{k}"] for k in ("weight", "weight_scale")}
        assert torch.equal(compressor.decompress(module, scheme)["weight"], plan.dequant()), name
        assert files[f"{name}.input_scale"].numpy()[0] == np.float32(plan.act_scale)  # the ONNX's FP32 scale
    _transformers_greedy_matches(res)  # transformers fake-quantizes the inputs with the same static scales


def test_awq_gemm_unpacks_with_compressed_tensors_converter_and_loads(written, tmp_path: Path) -> None:
    """compressed-tensors' AutoAWQ converter (independent unpacking code) reads edgeq's qweight/qzeros/scales
    back to the ONNX's codes and zero points; the converted checkpoint loads in transformers and decodes the
    same greedy tokens."""
    import shutil

    from compressed_tensors.entrypoints.convert.convert_checkpoint import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    res = written["awq"]
    qc = json.loads((res.out_dir / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
                  "modules_to_not_convert": ["lm_head"]}
    files, inits = _files(res.out_dir), _onnx_inits(res.onnx_dir)
    conv = AutoAWQConverter.from_autoawq_config(qc)
    for name in res.quantized.plans:
        base = name.replace(".", "_")
        q, s, zp = conv._convert_gemm_module(files[f"{name}.qweight"], files[f"{name}.scales"], files[f"{name}.qzeros"])
        assert np.array_equal(inits[f"{base}_wq"].astype(np.int8), q.T.numpy()), name
        assert np.array_equal(inits[f"{base}_wscale"], s.float().T.numpy()), name
        assert np.array_equal(-inits[f"{base}_woffset"] / inits[f"{base}_wscale"], zp.T.float().numpy()), name
    ct = tmp_path / "awq-as-ct"
    convert_checkpoint(str(res.out_dir), str(ct), conv)
    for extra in ("edgeq_greedy.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (res.out_dir / extra).is_file() and not (ct / extra).is_file():
            shutil.copy(res.out_dir / extra, ct / extra)
    _transformers_greedy_matches(type(res)(out_dir=ct, onnx_dir=res.onnx_dir, hf=res.hf, quantized=res.quantized))


def test_fine_grained_fp8_matches_the_fp8_block_dequantizer(written) -> None:
    from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import FP8BlockDequantizer

    res = written["fp8-block"]
    qc = json.loads((res.out_dir / "config.json").read_text())["quantization_config"]
    # tiny-llama's k/v projections have 64 outputs: 128x128 blocks would split them, which vLLM's fused QKV refuses
    assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == [64, 64] and qc["activation_scheme"] == "dynamic"
    files = _files(res.out_dir)
    ref = FP8BlockDequantizer(weight_block_size=(64, 64), dtype=torch.float32)
    for name, plan in res.quantized.plans.items():
        q, s = files[f"{name}.weight"], files[f"{name}.weight_scale_inv"]
        assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
        assert torch.equal(ref._create_dequantized_weight(q, s), plan.dequant()), name
    # transformers' fine-grained FP8 loader needs a GPU (benchmarks/gpu_fp8_loader_check.py runs it on one)
    import transformers

    with pytest.raises(RuntimeError, match="GPU"):
        transformers.AutoModelForCausalLM.from_pretrained(res.out_dir)


def test_fp8_block_plans_as_compressed_tensors_blocks(written, tmp_path: Path) -> None:
    """The same block plans as compressed-tensors float-quantized, strategy block (llm-compressor's FP8_BLOCK)."""
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    from edgeq.converters.hf_checkpoint.api import write_checkpoint

    res = written["fp8-block"]
    write_checkpoint(res.quantized.loaded, res.quantized.plans, tmp_path, hf_config_for("hf"))
    qc = QuantizationConfig.model_validate(json.loads((tmp_path / "config.json").read_text())["quantization_config"])
    files = _files(tmp_path)
    for group in qc.config_groups.values():
        assert group.weights.strategy == "block" and group.weights.block_structure == [64, 64]
        acts = group.input_activations  # the ONNX's activations: dynamic, per token and 64 channels
        assert acts.dynamic is True and acts.strategy == "group" and acts.group_size == 64
    args = next(iter(qc.config_groups.values())).weights
    for name, plan in res.quantized.plans.items():
        w = dequantize(files[f"{name}.weight"], files[f"{name}.weight_scale"], args=args)
        assert torch.equal(w, plan.dequant()), name
    for extra in ("edgeq_greedy.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / extra).write_bytes((res.out_dir / extra).read_bytes())
    # compressed-tensors quantizes the inputs per token group at run time, as the ONNX does
    _transformers_greedy_matches(type(res)(out_dir=tmp_path, onnx_dir=res.onnx_dir, hf=res.hf, quantized=res.quantized))


def test_fp8_dynamic_is_llm_compressors_fp8_dynamic(written) -> None:
    """``fp8-dynamic`` as compressed-tensors: per-channel weights, activations dynamic per token (vLLM's
    FP8_DYNAMIC); transformers (compressed-tensors' forward on this CPU) decodes the ONNX's greedy tokens."""
    from compressed_tensors.quantization import QuantizationConfig

    res = written["ct-fp8-dynamic"]
    qc = QuantizationConfig.model_validate(json.loads((res.out_dir / "config.json").read_text())["quantization_config"])
    (group,) = qc.config_groups.values()
    assert group.weights.strategy == "channel" and not group.weights.dynamic
    assert group.input_activations.strategy == "token" and group.input_activations.dynamic is True
    files = _files(res.out_dir)
    assert not [k for k in files if k.endswith("input_scale")]  # nothing static to store
    ops = {n.op_type for n in __import__("onnx").load(str(res.onnx_dir / "model.onnx")).graph.node}
    assert "Cast" in ops and "QuantizeLinear" not in ops
    _transformers_greedy_matches(res)


def test_prequantized_awq_round_trips_bit_exact(tiny, tmp_path: Path) -> None:
    """An AWQ checkpoint read by edgeq and written back out as AWQ has the very same qweight/qzeros/scales."""
    src = write_awq_gemm(tiny, tmp_path / "src")
    res = quantize_to_hf(str(src), "prequantized", tmp_path / "out", hf=hf_config_for("hf-awq"))
    a, b = _files(src), _files(res.out_dir)
    quant = [k for k in a if k.endswith((".qweight", ".qzeros", ".scales"))]
    assert len(quant) == 42
    for k in quant:
        assert torch.equal(a[k], b[k]), k
    assert res.quantized.report["scheme_stats"]["hf_checkpoint"]["int4_codes_rerounded"] == 0


def test_greedy_record_is_the_onnx_decoding(written) -> None:
    res = written["ct-int4"]
    row = json.loads((res.out_dir / "edgeq_greedy.json").read_text())["prompts"][0]
    assert onnx_greedy(res.onnx_dir / "model.onnx", row["prompt_ids"], len(row["greedy_ids"])) == row["greedy_ids"]


def test_quantize_cli_format_hf(tmp_path: Path, capsys) -> None:
    from edgeq.cli import main

    out = tmp_path / "ckpt"
    rc = main(["quantize", "--model", "tiny-llama", "--scheme", "int4-rtn", "--block-size", "64", "--out", str(out),
               "--format", "hf-awq"])
    assert rc == 0, capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    assert (out / "onnx" / "model.onnx").is_file() and (out / "edgeq_greedy.json").is_file()
    back = load_model(str(out))  # edgeq reads its own checkpoint back as a pre-quantized one
    assert back.published.format.name == "awq" and len(back.published.linears) == 14
    assert main(["quantize", "--model", "tiny-llama", "--scheme", "int4-rtn", "--out", str(tmp_path / "x"),
                 "--format", "safetensors"]) == 2
    assert "unknown --format" in capsys.readouterr().err and not (tmp_path / "x").exists()
