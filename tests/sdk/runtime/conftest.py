"""Fixtures: tiny-llama and tiny-qwen3 quantized by edgeq's quantizer (INT8 weight-only, GPTQ rounding: the
scheme's default) and bundled with health data against their FP32 exports, once per session; a fresh store
with tiny-llama v1 and v2 installed per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sdk.runtime.helpers import make_bundle, make_bundles, quantize_export

MODEL = "tiny-llama"
SCHEME = "int8-wo"


@pytest.fixture(scope="session")
def tiny_q_dir(tiny_llama_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_export(tiny_llama_onnx, tmp_path_factory.mktemp("q") / f"tiny-llama-{SCHEME}", SCHEME)


@pytest.fixture(scope="session")
def tiny_qwen3_q_dir(tiny_qwen3_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_export(tiny_qwen3_onnx, tmp_path_factory.mktemp("q") / f"tiny-qwen3-{SCHEME}", SCHEME)


@pytest.fixture(scope="session")
def lm_bundles(tiny_llama_onnx: Path, tiny_q_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return make_bundles(tiny_llama_onnx, tiny_q_dir, tmp_path_factory.mktemp("bundles"), name=MODEL, versions=(1, 2),
                        task="text-generation")


@pytest.fixture(scope="session")
def qwen3_bundle(tiny_qwen3_onnx: Path, tiny_qwen3_q_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tiny_qwen3_onnx, tiny_qwen3_q_dir, tmp_path_factory.mktemp("bundles") / "qwen3", name="tiny-qwen3",
                       version=1, task="text-generation")


@pytest.fixture()
def lm_store(lm_bundles: dict[int, Path], tmp_path: Path) -> Path:
    """A store with v1 and v2 installed (v2 active)."""
    from edgeq.sdk.store.store import Store

    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(lm_bundles[1])
    store.install(lm_bundles[2])
    return store.root
