"""Bad input gives clear typed errors, and nothing is written."""

from __future__ import annotations

import dataclasses

import pytest

from edgeq.converters.quantize import get_config, quantize
from edgeq.errors import ConfigError, OutputExistsError, QuantizationError


def test_unknown_scheme(tiny_llama, tmp_path) -> None:
    with pytest.raises(ConfigError, match="valid: .*int4-awq"):
        quantize(tiny_llama, "int2", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_calibration_text_too_short(tiny_llama, tmp_path) -> None:
    with pytest.raises(QuantizationError, match="calibration text too short"):
        quantize(tiny_llama, "fp8", tmp_path / "o", calib_text="only a few words here")
    assert not (tmp_path / "o").exists()


def test_no_linear_layers(tiny_llama, tmp_path) -> None:
    with pytest.raises(QuantizationError, match="no linear layers"):
        quantize(tiny_llama, get_config("int8-wo", keep_fp16=("*",)), tmp_path / "o")


def test_block_size_cannot_fit(tiny_llama, tmp_path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=72, intermediate_size=144, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    odd = dataclasses.replace(tiny_llama, name="odd-llama", model=LlamaForCausalLM(cfg).eval())
    with pytest.raises(QuantizationError, match="block size 64 cannot fit .* input size 72"):
        quantize(odd, get_config("int4-rtn", block_size=64), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_output_exists(tiny_llama, tmp_path) -> None:
    (tmp_path / "o").mkdir()
    with pytest.raises(OutputExistsError):
        quantize(tiny_llama, "int8-wo", tmp_path / "o")


def test_unknown_compute_dtype(tiny_llama, tmp_path) -> None:
    with pytest.raises(ConfigError, match="compute_dtype"):
        quantize(tiny_llama, get_config("int8-wo", compute_dtype="bfloat16"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_budget_metric_must_fit_task(tiny_llama, tmp_path) -> None:
    with pytest.raises(ConfigError):
        quantize(tiny_llama, "int8-wo", tmp_path / "o", accuracy_budget="cosine>=0.99")
