"""Shared fixtures. Tiny models are exported once per session; real models only under -m slow.

Tests marked ``trt_rtx`` need ``tensorrt_rtx_bindings`` (TensorRT-RTX builds engines on the CPU). Where it is
missing they are skipped, except when ``EDGEQ_REQUIRE_TRT_RTX=1`` (set by .ci/run): then a missing or
broken build extra is an error, so CI cannot go green without it.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TRT_RTX_MODULE = "tensorrt_rtx_bindings"
REQUIRE_TRT_RTX = "EDGEQ_REQUIRE_TRT_RTX"


@functools.cache
def trt_rtx_problem() -> str | None:
    """Why TensorRT-RTX cannot be used here, or None when its bindings import."""
    try:
        importlib.import_module(TRT_RTX_MODULE)
    except Exception as exc:  # ImportError, or OSError from a missing shared library: the extra is unusable
        return f"{type(exc).__name__}: {exc}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"trt_rtx: needs {TRT_RTX_MODULE}; skipped without it unless {REQUIRE_TRT_RTX}=1 makes that an error")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("trt_rtx") is None or (problem := trt_rtx_problem()) is None:
        return
    if os.environ.get(REQUIRE_TRT_RTX) == "1":
        pytest.fail(f"{REQUIRE_TRT_RTX}=1 but {TRT_RTX_MODULE} does not import ({problem}): "
                    "the build extra is broken (pip install 'edgeq[build]')", pytrace=False)
    pytest.skip(f"{TRT_RTX_MODULE} not importable ({problem}); set {REQUIRE_TRT_RTX}=1 to make this an error")


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
