"""Fixtures for the quantizer tests: tiny models loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llama():
    from edgeq.converters.sources import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen3():
    from edgeq.converters.sources import load_model

    return load_model("tiny-qwen3")
