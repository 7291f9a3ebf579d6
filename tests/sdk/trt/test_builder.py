"""The one builder, run for real with TensorRT-RTX on the CPU (tiny hand-made QDQ graphs).

Also runs the *full TensorRT* code path (hardware/version compatibility instead of compute
capabilities) with TensorRT-RTX standing in for ``tensorrt``, which cannot be installed here.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.errors import BackendUnavailableError, ConfigError, EngineBuildError, OnnxParseError
from edgeq.sdk.engine import builder
from edgeq.sdk.engine.builder import build_engine, flavour_available
from edgeq.sdk.bundle.plan import BuildPlan, InputShape, OptimizationProfile
from tests.sdk.trt.graphs import K, qdq_matmul

pytestmark = pytest.mark.trt_rtx  # skipped without TensorRT-RTX, an error in CI (tests/conftest.py)

PROFILE = OptimizationProfile((InputShape("x", (1, 1, K), (1, 16, K), (2, 64, K)),))


def plan(flavour: str = "tensorrt_rtx", caps: tuple[str, ...] = ("8.9",), **kw: object) -> BuildPlan:
    return BuildPlan(flavour=flavour, onnx="model.onnx", engine="model.engine", precision="x",
                     profiles=(PROFILE,), compute_capabilities=caps, workspace_bytes=64 << 20, **kw)


# Every precision edgeq emits, for every RTX compute capability; FP8 needs sm89+.
CASES = [(kind, cc) for kind in ("fp16", "fp8", "int8", "int8-wo", "int4") for cc in ("8.6", "8.9", "12.0")
         if not (kind == "fp8" and cc == "8.6")]


@pytest.mark.parametrize("kind, cc", CASES)
def test_builds_real_engine(tmp_path: Path, kind: str, cc: str) -> None:
    onnx_path = qdq_matmul(kind, tmp_path / "model.onnx")
    built = build_engine(plan(caps=(cc,)), onnx_path)
    assert len(built.engine) == built.info.engine_size > 10_000
    assert built.info.flavour == "tensorrt_rtx" and built.info.library_version.startswith("1.")
    assert built.info.seconds > 0 and built.info.peak_rss_bytes > 10 << 20


def test_fp8_on_sm86_fails_inside_tensorrt_with_log_tail(tmp_path: Path) -> None:
    """What our capability check saves users from: TensorRT-RTX itself refuses FP8 for sm86."""
    onnx_path = qdq_matmul("fp8", tmp_path / "model.onnx")
    with pytest.raises(EngineBuildError) as e:
        build_engine(plan(caps=("8.6",)), onnx_path)
    first = e.value.message.splitlines()[0]
    assert first.startswith("engine build failed: ERROR") and "sm86" in first and "fp8" in first
    assert "builder log tail:" in e.value.message


def test_parser_errors_name_the_nodes(tmp_path: Path) -> None:
    onnx_path = qdq_matmul("fp16", tmp_path / "model.onnx", bad_node=True)
    with pytest.raises(OnnxParseError) as e:
        build_engine(plan(), onnx_path)
    assert "mystery_node" in e.value.message and "NoSuchOp" in e.value.message
    assert e.value.exit_code != 0


def test_profile_must_match_network_inputs(tmp_path: Path) -> None:
    onnx_path = qdq_matmul("fp16", tmp_path / "model.onnx")
    bad = dataclasses.replace(plan(), profiles=(OptimizationProfile((InputShape("input_ids", (1,), (1,), (2,)),)),))
    with pytest.raises(ConfigError, match=r"unknown inputs \['input_ids'\].*without shapes \['x'\]"):
        build_engine(bad, onnx_path)


def test_missing_onnx_and_unknown_compute_capability(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="not found"):
        build_engine(plan(), tmp_path / "nope.onnx")
    with pytest.raises(ConfigError, match="cannot build for compute capability 8.7"):
        build_engine(plan(caps=("8.7",)), qdq_matmul("fp16", tmp_path / "model.onnx"))


@pytest.fixture
def tensorrt_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the full-TensorRT flavour at TensorRT-RTX: same API, so the same code path runs."""
    fl = builder.FLAVOURS["tensorrt"]
    monkeypatch.setitem(builder.FLAVOURS, "tensorrt", dataclasses.replace(fl, module="tensorrt_rtx_bindings"))


def test_full_tensorrt_path_with_rtx_standing_in(tmp_path: Path, tensorrt_stand_in: None) -> None:
    onnx_path = qdq_matmul("int8", tmp_path / "model.onnx")
    built = build_engine(plan(flavour="tensorrt", caps=()), onnx_path)
    assert built.info.flavour == "tensorrt" and len(built.engine) > 10_000


def test_full_tensorrt_version_compatible_reaches_the_library(tmp_path: Path, tensorrt_stand_in: None) -> None:
    """The TensorRT-only switch is really set: TensorRT-RTX has no lean runtime to embed and fails."""
    onnx_path = qdq_matmul("fp16", tmp_path / "model.onnx")
    with pytest.raises(EngineBuildError, match="lean"):
        build_engine(plan(flavour="tensorrt", caps=(), version_compatible=True), onnx_path)


def test_missing_library_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fl = builder.FLAVOURS["tensorrt"]
    monkeypatch.setitem(builder.FLAVOURS, "tensorrt", dataclasses.replace(fl, module="edgeq_no_such_tensorrt"))
    assert not flavour_available("tensorrt")
    with pytest.raises(BackendUnavailableError, match="edgeq_no_such_tensorrt"):
        build_engine(plan(flavour="tensorrt", caps=()), qdq_matmul("fp16", tmp_path / "model.onnx"))


def test_builder_module_imports_no_torch_and_no_tensorrt() -> None:
    code = ("import sys, edgeq.sdk.engine.builder, edgeq.sdk.bundle.plan; "
            "print([m for m in ('torch','transformers','optimum','onnx','tensorrt_rtx_bindings','edgeq.converters') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
