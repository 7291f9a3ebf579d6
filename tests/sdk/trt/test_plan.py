"""BuildPlan: JSON round trip, validation, and the equivalent trtexec / tensorrt_rtx command line."""

from __future__ import annotations

import dataclasses

import pytest

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.plan import BuildPlan, InputShape, OptimizationProfile

PROFILE = OptimizationProfile((
    InputShape("input_ids", (1, 1), (1, 128), (4, 2048)),
    InputShape("past_key_values.0.key", (1, 3, 0, 64), (1, 3, 512, 64), (4, 3, 4096, 64)),
    InputShape("static", (1, 8), (1, 8), (1, 8)),
))


def rtx_plan(**kw: object) -> BuildPlan:
    base = dict(flavour="tensorrt_rtx", onnx="model/model.onnx", engine="engine/model.engine", precision="fp8",
                profiles=(PROFILE,), compute_capabilities=("8.9",), workspace_bytes=2 << 30, target="rtx-ada")
    return BuildPlan(**{**base, **kw})


def trt_plan(**kw: object) -> BuildPlan:
    return rtx_plan(**{"flavour": "tensorrt", "compute_capabilities": (), **kw})


@pytest.mark.parametrize("plan", [rtx_plan(), trt_plan(hardware_compatibility="ampere_plus", version_compatible=True)])
def test_json_round_trip(plan: BuildPlan) -> None:
    assert BuildPlan.from_json(plan.to_json()) == plan


def test_rtx_command_line() -> None:
    line = rtx_plan().to_trtexec()
    assert line.startswith("tensorrt_rtx --onnx=model/model.onnx --saveEngine=engine/model.engine")
    assert "--minShapes=input_ids:1x1,past_key_values.0.key:1x3x0x64" in line
    assert "--maxShapes=input_ids:4x2048,past_key_values.0.key:4x3x4096x64" in line
    assert "static" not in line  # static inputs need no shape flags
    assert "--computeCapabilities=8.9" in line and "--memPoolSize=workspace:2048M" in line
    assert "--stronglyTyped" not in line  # TensorRT-RTX networks are always strongly typed


def test_trtexec_command_line() -> None:
    line = trt_plan(hardware_compatibility="ampere_plus", version_compatible=True).to_trtexec()
    assert line.startswith("trtexec ") and "--stronglyTyped" in line
    assert "--hardwareCompatibilityLevel=ampere+" in line and "--versionCompatible" in line
    assert "--builderOptimizationLevel=3" in line and "computeCapabilities" not in line


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: rtx_plan(flavour="onnxruntime"), "flavour"),
        (lambda: rtx_plan(hardware_compatibility="ampere_plus"), "compute_capabilities, not hardware"),
        (lambda: rtx_plan(timing_cache=True), "timing cache"),
        (lambda: trt_plan(compute_capabilities=("9.0",)), "TensorRT-RTX only"),
        (lambda: rtx_plan(profiles=()), "at least one"),
        (lambda: rtx_plan(strongly_typed=False), "strongly typed"),
        (lambda: rtx_plan(schema_version=99), "schema"),
        (lambda: InputShape("x", (2,), (1,), (4,)), "min <= opt <= max"),
        (lambda: BuildPlan.from_json("[1]"), "JSON object"),
        (lambda: BuildPlan.from_dict({"flavour": "tensorrt"}), "malformed"),
    ],
)
def test_invalid_plans_are_refused(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_plan_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        rtx_plan().precision = "fp16"  # type: ignore[misc]
