"""Real TensorRT-RTX engines, built on the CPU, for every RTX target at every precision it supports.

The tiny Llama is quantized once per precision with the real quantizer; each target's engine is then
built from that QDQ ONNX with the same plan code `edgeq build` uses (the full pipeline runs in
test_build.py). FP8 for sm86 is refused by our check, before TensorRT would fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.converters.build_checks import check_precision
from edgeq.converters.build_plan import fit_shapes, make_plan
from edgeq.errors import EngineBuildError, UnsupportedPrecisionError
from edgeq.sdk.engine.builder import build_engine
from edgeq.targets import get_profile

pytestmark = pytest.mark.trt_rtx  # skipped without TensorRT-RTX, an error in CI (tests/conftest.py)

TASK = "text-generation"
RTX = ("rtx-ampere", "rtx-ada", "rtx-blackwell")
PRECISIONS = sorted({p for t in RTX for p in get_profile(t).precisions[TASK]})
CASES = [(t, p) for t in RTX for p in get_profile(t).precisions[TASK]]
TINY_POSITIONS = 512


@pytest.fixture(scope="session")
def quantized_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeq.converters.quantize import get_config, quantize
    from edgeq.converters.sources import load_model

    loaded = load_model("tiny-llama")
    root = tmp_path_factory.mktemp("quantized")
    (dtype,) = {get_profile(t).compute_dtype for t in RTX}  # what `edgeq build` asks the quantizer for
    # small calibration/holdout: the tiny model needs no more, and the suite stays fast
    cfg = {"calib_tokens": 256, "calib_seq_len": 64, "holdout_tokens": 128, "compute_dtype": dtype}
    return {p: quantize(loaded, get_config(p, **cfg), root / p).onnx_path for p in PRECISIONS}


def test_every_rtx_precision_is_covered() -> None:
    assert len(CASES) == 16 and ("rtx-ampere", "fp8") not in CASES
    assert {t for t, p in CASES if p.startswith("nvfp4")} == {"rtx-blackwell"}  # FP4 tensor cores: sm120 only


def test_engines_are_built_from_fp16_compute_graphs(quantized_tiny_llama: dict[str, Path]) -> None:
    import onnx

    for precision, path in quantized_tiny_llama.items():
        g = onnx.load(str(path)).graph
        kv = {i.name: i.type.tensor_type.elem_type for i in g.input if i.name.startswith("past_key_values.")}
        assert set(kv.values()) == {onnx.TensorProto.FLOAT16}, precision
        matmul_inputs = {n.input[1] for n in g.node if n.op_type == "MatMul"}
        dq_scales = [n.input[1] for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] in matmul_inputs]
        inits = {t.name: t.data_type for t in g.initializer}
        made = {n.output[0]: n for n in g.node}

        def scale_dtype(name: str) -> int:
            if name in inits:
                return inits[name]
            # NVFP4's two-level scale: the E4M3 block scales are dequantized (by the FP32 tensor scale) to this
            out_dtype = {a.name: a.i for a in made[name].attribute}.get("output_dtype")
            assert made[name].op_type == "DequantizeLinear" and out_dtype is not None, (precision, name)
            return out_dtype

        assert all(scale_dtype(s) == onnx.TensorProto.FLOAT16 for s in dq_scales), precision


@pytest.mark.parametrize("target, precision", CASES)
def test_rtx_engine_builds_on_cpu(target: str, precision: str, quantized_tiny_llama: dict[str, Path]) -> None:
    profile = get_profile(target)
    check_precision(profile, precision, TASK)
    onnx_path = quantized_tiny_llama[precision]
    plan, planned = make_plan(profile, TASK, onnx_path, precision, max_positions=TINY_POSITIONS)
    assert plan.compute_capabilities == (profile.compute_capability,)
    built = build_engine(plan, onnx_path)
    assert built.info.flavour == "tensorrt_rtx" and built.info.engine_size == len(built.engine) > 100_000
    assert built.info.peak_rss_bytes > 0 and built.info.seconds > 0


def test_fp8_on_sm86_is_refused_by_our_check_before_tensorrt(quantized_tiny_llama: dict[str, Path]) -> None:
    ampere = get_profile("rtx-ampere")
    with pytest.raises(UnsupportedPrecisionError, match="sm86 has no FP8 tensor cores"):
        check_precision(ampere, "fp8", TASK)
    # ...and TensorRT-RTX would indeed have failed, later and less clearly:
    onnx_path = quantized_tiny_llama["fp8"]
    plan, _ = make_plan(ampere, TASK, onnx_path, "fp8", planned=fit_shapes(ampere.shapes[TASK], TINY_POSITIONS))
    with pytest.raises(EngineBuildError, match="sm86"):
        build_engine(plan, onnx_path)
