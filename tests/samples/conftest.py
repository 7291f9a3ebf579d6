"""Bundles for the sample tests: quantized tiny-llama (v1, v2) and MiniLM (built-in encoder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sdk.runtime.helpers import make_bundle, qdq_int8_weights


@pytest.fixture(scope="session")
def chat_bundles(tiny_llama_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("sample-bundles")
    q = root / "q"
    qdq_int8_weights(tiny_llama_onnx, q)
    return {v: make_bundle(tiny_llama_onnx, q, root / f"v{v}", name="tiny-llama", version=v,
                           task="text-generation") for v in (1, 2)}


@pytest.fixture(scope="session")
def minilm_bundle(minilm_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample-minilm")
    return make_bundle(minilm_onnx, minilm_onnx, root / "b", name="minilm-l6", version=1, task="feature-extraction")
