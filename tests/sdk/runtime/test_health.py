"""Health data: schema round trip, the 2 % rule, NaN never passing, and the host producer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import BundleError, ConfigError
from edgeq.sdk.bundle.health import CANARIES_NPZ, HEALTH_JSON, HealthSpec, Thresholds
from edgeq.sdk.bundle.graph_io import session_input_dtypes


def _spec(**kw: object) -> HealthSpec:
    return HealthSpec(task="text-generation", metrics=("top1", "kl_quality"),
                      baseline={"top1": 0.9, "kl_quality": 0.99}, **kw)  # type: ignore[arg-type]


def test_limits_follow_the_two_percent_rule() -> None:
    spec = _spec()
    assert spec.limits() == pytest.approx({"top1": 0.9 * 0.98, "kl_quality": 0.99 * 0.98})
    assert spec.judge({"top1": 0.9 * 0.98 + 1e-9, "kl_quality": 0.99}, finite=True).ok
    v = spec.judge({"top1": 0.9 * 0.97, "kl_quality": 0.99}, finite=True)
    assert not v.ok and "top1" in v.breaches[0]


@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_nan_never_passes(bad: float) -> None:
    spec = _spec()
    assert not spec.judge({"top1": bad, "kl_quality": 1.0}, finite=True).ok
    assert not spec.judge({"top1": 1.0, "kl_quality": 1.0}, finite=True, drift=math.nan).ok
    assert not spec.judge({"top1": 1.0, "kl_quality": 1.0}, finite=False).ok
    assert not spec.judge({"kl_quality": 1.0}, finite=True).ok  # a missing metric is a breach


def test_uncalibrated_drift_keeps_the_fixed_relative_limit() -> None:
    spec = _spec(thresholds=Thresholds(max_drift=0.01))
    assert spec.drift_scale is None and spec.drift_limit() == 0.01
    assert spec.judge({"top1": 0.9, "kl_quality": 0.99}, finite=True, drift=0.009).ok
    assert not spec.judge({"top1": 0.9, "kl_quality": 0.99}, finite=True, drift=0.011).ok


def test_drift_is_judged_in_units_of_the_bundle_spread() -> None:
    good = {"top1": 0.9, "kl_quality": 0.99}
    spec = _spec(drift_scale=1e-6, thresholds=Thresholds(max_drift=0.5, max_drift_z=30.0))
    assert spec.drift_limit() == pytest.approx(3e-5)  # max_drift no longer applies
    v = spec.judge(good, finite=True, drift=2.9e-5)
    assert v.ok and v.scores["drift_z"] == pytest.approx(29.0) and v.limits["drift_z"] == 30.0
    v = spec.judge(good, finite=True, drift=3.1e-5)
    assert not v.ok and "31.0 x the healthy spread" in v.breaches[0]
    assert spec.judge(good, finite=True, drift=0.0).ok  # a deterministic backend repeats itself exactly
    # the same z limit on a model whose healthy spread is 100x larger allows 100x more drift
    assert _spec(drift_scale=1e-4).judge(good, finite=True, drift=2.9e-3).ok


def test_schema_one_bundles_still_read_and_drift_scale_is_checked() -> None:
    v2 = _spec(drift_scale=2e-7)
    old = {k: v for k, v in v2.to_dict().items() if k != "drift_scale"}
    old["schema_version"] = 1
    old["thresholds"] = {"max_quality_drop": 0.02, "max_drift": 0.002, "online_shift": 0.5}  # as v1 wrote them
    back = HealthSpec.from_dict(old)
    assert back.schema_version == 1 and back.drift_scale is None and back.drift_limit() == 0.002
    assert HealthSpec.from_bytes(v2.dumps().encode(), None).drift_scale == 2e-7
    for bad in ({**v2.to_dict(), "schema_version": 1}, {**v2.to_dict(), "drift_scale": 0.0},
                {**v2.to_dict(), "drift_scale": math.nan}, {**v2.to_dict(), "drift_scale": -1.0}):
        with pytest.raises(BundleError):
            HealthSpec.from_dict(bad)


def test_thresholds_validate() -> None:
    with pytest.raises(ConfigError):
        Thresholds(max_quality_drop=1.5)
    with pytest.raises(ConfigError):
        Thresholds(max_drift=0)
    with pytest.raises(ConfigError):
        Thresholds(max_drift_z=0)


def test_round_trip_and_refusals() -> None:
    spec = _spec(online_baseline={"entropy_mean": 2.0, "entropy_std": 0.5}, canary={"count": 4})
    back = HealthSpec.from_bytes(spec.dumps().encode(), None)
    assert back == spec
    with pytest.raises(BundleError):
        HealthSpec.from_bytes(b"{not json", None)
    with pytest.raises(BundleError):
        HealthSpec.from_dict({**spec.to_dict(), "schema_version": 99})
    with pytest.raises(BundleError):
        HealthSpec.from_dict({**spec.to_dict(), "baseline": {"top1": 1.0}})  # kl_quality missing


def test_lm_health_data_is_small_and_reproduces_its_baseline(tiny_llama_onnx: Path, tiny_q_dir: Path,
                                                             tmp_path: Path) -> None:
    import onnxruntime as ort

    from edgeq.converters.health import build_health_data
    from edgeq.sdk.health.canary import run_canary
    from edgeq.sdk.bundle.model_info import ModelInfo

    rels = build_health_data("text-generation", tiny_llama_onnx, tiny_q_dir, tmp_path, threads=1)
    assert rels == [(HEALTH_JSON, "health"), (CANARIES_NPZ, "health")]
    assert (tmp_path / CANARIES_NPZ).stat().st_size < 64 * 1024
    spec = HealthSpec.from_bytes((tmp_path / HEALTH_JSON).read_bytes(), (tmp_path / CANARIES_NPZ).read_bytes())
    assert spec.arrays["ref_topk_ids"].shape == (4, 32, 16)
    # edgeq's int8-wo on the tiny model agrees with its FP reference closely, but not perfectly
    assert 0.9 <= spec.baseline["top1"] <= 1.0 and 0.99 < spec.baseline["kl_quality"] < 1.0
    # the drift unit: the largest healthy spread; ONNX Runtime CPU repeats itself, so on an FP32 graph
    # it is one FP32 rounding of the logits (relative to the log-probs: below the unit roundoff)
    cal = spec.canary["drift_calibration"]
    assert cal["compute_dtype"] == "float32" and spec.drift_scale == cal["scale"]
    assert spec.drift_scale == max(cal["rounding_spread"], *cal["rerun_spread"].values())
    assert 0 < spec.drift_scale < cal["unit_roundoff"]
    assert set(cal["rerun_spread"]) == {f"threads={t},{b}" for t in (1, 2) for b in ("row_by_row", "batched")}
    s = ort.InferenceSession(str(tiny_q_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    info = ModelInfo.from_bytes((tiny_llama_onnx / "edgeq_model.json").read_bytes())
    res = run_canary(lambda f: dict(zip(names, s.run(None, f))), spec.arrays, session_input_dtypes(s), info)
    assert res.scores == pytest.approx(spec.baseline, abs=1e-5)
    assert spec.judge(res.scores, finite=res.finite).ok
    # the FP model itself scores perfectly against its own reference
    fp = ort.InferenceSession(str(tiny_llama_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    res_fp = run_canary(lambda f: dict(zip(names, fp.run(None, f))), spec.arrays, session_input_dtypes(fp), info)
    assert res_fp.scores["top1"] == 1.0 and res_fp.scores["kl_quality"] == pytest.approx(1.0, abs=1e-6)


def test_embedding_health_data(minilm_onnx: Path, tmp_path: Path) -> None:
    from edgeq.converters.health import build_health_data

    build_health_data("feature-extraction", minilm_onnx, minilm_onnx, tmp_path, count=3, threads=1)
    spec = HealthSpec.from_bytes((tmp_path / HEALTH_JSON).read_bytes(), (tmp_path / CANARIES_NPZ).read_bytes())
    ref = spec.arrays["ref_embeddings"]
    assert ref.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=-1), 1.0, rtol=1e-5)
    assert spec.baseline["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert spec.online_baseline["norm_mean"] > 0


def test_build_refuses_wrong_task(tiny_llama_onnx: Path, tmp_path: Path) -> None:
    from edgeq.converters.health import build_health_data

    with pytest.raises(ConfigError):
        build_health_data("feature-extraction", tiny_llama_onnx, tiny_llama_onnx, tmp_path)
    assert not (tmp_path / "health").exists()
