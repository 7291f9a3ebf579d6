"""Fixtures: quantized tiny-llama bundles (v1, v2) and a fresh store with both installed per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sdk.runtime.helpers import make_bundle, qdq_int8_weights

MODEL = "tiny-llama"


@pytest.fixture(scope="session")
def tiny_q_dir(tiny_llama_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "tiny-llama-int8"
    qdq_int8_weights(tiny_llama_onnx, out)
    return out


@pytest.fixture(scope="session")
def lm_bundles(tiny_llama_onnx: Path, tiny_q_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(tiny_llama_onnx, tiny_q_dir, root / f"v{v}", name=MODEL, version=v,
                           task="text-generation") for v in (1, 2)}


@pytest.fixture()
def lm_store(lm_bundles: dict[int, Path], tmp_path: Path) -> Path:
    """A store with v1 and v2 installed (v2 active)."""
    from edgeq.sdk.store.store import Store

    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(lm_bundles[1])
    store.install(lm_bundles[2])
    return store.root
