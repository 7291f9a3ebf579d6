"""SmolLM2-135M (offline) quantized by edgeq with calibrated AWQ and written as an AutoAWQ GEMM checkpoint: it
loads in transformers (here on CPU through compressed-tensors' AutoAWQ converter, since transformers' own AWQ
path needs a GPU kernel package) and decodes the same greedy tokens as edgeq's ONNX of the same weights; the
compressed-tensors W4A16 checkpoint of the same plans loads in transformers directly and does too.

    pytest -m slow tests/converters/test_hf_checkpoint_slow.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edgeq.converters.hf_checkpoint.api import hf_config_for, quantize_to_hf, write_checkpoint
from edgeq.converters.hf_checkpoint.greedy import torch_greedy
from edgeq.converters.quantize import get_config

# AWQ calibration dominates; the limit leaves room for a heavily shared machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _greedy_matches(ckpt: Path, record: dict) -> list[bool]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    return [torch_greedy(model, row["prompt_ids"], record["new_tokens"]) == row["greedy_ids"] for row in record["prompts"]]


def test_smollm2_awq_checkpoint_matches_onnx_greedy(tmp_path: Path) -> None:
    from compressed_tensors.entrypoints.convert.convert_checkpoint import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    # block 64: every SmolLM2 input size (576, 1536) takes it, and AutoAWQ stores one group size; a coarser
    # search than the defaults (n_grid 20, clip_steps 10) keeps the calibration to a few minutes on 2 cores
    cfg = get_config("int4-awq", block_size=64, n_grid=10, clip_steps=5, calib_tokens=2048)
    res = quantize_to_hf("smollm2-135m", cfg, tmp_path / "awq",
                         hf=hf_config_for("hf-awq", new_tokens=24))
    assert res.quantized.report["validation"]["passed"]
    record = json.loads((res.out_dir / "edgeq_greedy.json").read_text())
    qc = json.loads((res.out_dir / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["group_size"] == 64
    converted = tmp_path / "awq-converted"
    convert_checkpoint(str(res.out_dir), str(converted), AutoAWQConverter.from_autoawq_config(qc))
    assert _greedy_matches(converted, record) == [True] * len(record["prompts"])

    ct = tmp_path / "ct"  # the same plans as compressed-tensors W4A16
    ct.mkdir()
    write_checkpoint(res.quantized.loaded, res.quantized.plans, ct, hf_config_for("hf"))
    assert _greedy_matches(ct, record) == [True] * len(record["prompts"])
    shutil.rmtree(tmp_path, ignore_errors=True)
