"""The ORT backend keeps serving when the graph optimizer rejects a QDQ graph (ORT 1.30 with FP8)."""

from __future__ import annotations

import types

import onnxruntime as ort
import pytest

from edgeq.sdk.runtime.backends.ort import OrtCpuBackend


class InvalidGraph(Exception):  # the name ORT's pybind exception carries
    pass


def _fake_ort(reject_above_basic: bool) -> types.SimpleNamespace:
    opened: list[object] = []

    def session(path: str, so: ort.SessionOptions, providers: list[str]) -> str:
        if reject_above_basic and so.graph_optimization_level not in (
            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ):
            raise InvalidGraph("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Type 'tensor(float8e4m3fn)' ... MatMulIntegerToFloat")
        opened.append(so.graph_optimization_level)
        return "session"

    return types.SimpleNamespace(InferenceSession=session, GraphOptimizationLevel=ort.GraphOptimizationLevel,
                                 get_available_providers=lambda: ["CPUExecutionProvider"], __version__="1.30.0",
                                 opened=opened)


def test_falls_back_to_basic_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    fake = _fake_ort(reject_above_basic=True)
    b = OrtCpuBackend.__new__(OrtCpuBackend)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert b._session_with_fallback(fake, "m.onnx", so, ["CPUExecutionProvider"]) == "session"
    assert fake.opened == [ort.GraphOptimizationLevel.ORT_ENABLE_BASIC]
    assert b.optimization_fallback and "INVALID_GRAPH" in b.optimization_fallback
    assert "basic optimizations" in caplog.text


def test_no_fallback_needed() -> None:
    fake = _fake_ort(reject_above_basic=False)
    b = OrtCpuBackend.__new__(OrtCpuBackend)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    b._session_with_fallback(fake, "m.onnx", so, ["CPUExecutionProvider"])
    assert fake.opened == [ort.GraphOptimizationLevel.ORT_ENABLE_ALL] and b.optimization_fallback is None


def test_other_errors_propagate() -> None:
    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("file not found")

    fake = types.SimpleNamespace(InferenceSession=broken, GraphOptimizationLevel=ort.GraphOptimizationLevel,
                                 get_available_providers=lambda: ["CPUExecutionProvider"])
    b = OrtCpuBackend.__new__(OrtCpuBackend)
    with pytest.raises(RuntimeError, match="file not found"):
        b._session_with_fallback(fake, "m.onnx", ort.SessionOptions(), ["CPUExecutionProvider"])
