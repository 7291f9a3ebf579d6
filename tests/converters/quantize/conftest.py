"""Fixtures for the quantizer tests: tiny models loaded once per session, and their quantizations made once
per session per (model, scheme, overrides), when a test first asks (several files check the same files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture(scope="session")
def tiny_llama():
    from edgeq.converters.sources import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen3():
    from edgeq.converters.sources import load_model

    return load_model("tiny-qwen3")


@pytest.fixture(scope="session")
def quantized_tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``quantized_tiny(model, scheme)``: the QuantizeResult of ``scheme`` at its defaults (INT4 in blocks of 64,
    the tiny models' width allows no more) on tiny-llama or tiny-qwen3, made once per session. Tests only read
    what it wrote."""
    from edgeq.converters.quantize import get_config, quantize

    root: Path = tmp_path_factory.mktemp("q-shared")
    fixtures = {"tiny-llama": "tiny_llama", "tiny-qwen3": "tiny_qwen3"}
    cache: dict[tuple[str, str], Any] = {}

    def get(model: str, scheme: str) -> Any:
        if (model, scheme) not in cache:
            # 1024 held-out tokens: these tests compare schemes on a random tiny model, not against a budget
            opts = {"block_size": 64} if scheme.startswith("int4") else {}
            cfg = get_config(scheme, holdout_tokens=1024, **opts)
            cache[model, scheme] = quantize(request.getfixturevalue(fixtures[model]), cfg, root / f"{model}-{scheme}")
        return cache[model, scheme]

    return get
