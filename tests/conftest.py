"""Shared fixtures. Tiny models are exported once per session; real models only under -m slow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_llama_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeq.converters.export import export_onnx

    return export_onnx("tiny-llama", tmp_path_factory.mktemp("export") / "tiny-llama").out_dir


@pytest.fixture(scope="session")
def tiny_qwen3_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeq.converters.export import export_onnx

    return export_onnx("tiny-qwen3", tmp_path_factory.mktemp("export") / "tiny-qwen3").out_dir


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeq.converters.export import export_onnx

    return export_onnx("minilm-l6", tmp_path_factory.mktemp("export") / "minilm-l6").out_dir
