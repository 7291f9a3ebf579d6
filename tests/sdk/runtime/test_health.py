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


def test_drift_limit() -> None:
    spec = _spec(thresholds=Thresholds(max_drift=0.01))
    assert spec.judge({"top1": 0.9, "kl_quality": 0.99}, finite=True, drift=0.009).ok
    assert not spec.judge({"top1": 0.9, "kl_quality": 0.99}, finite=True, drift=0.011).ok


def test_thresholds_validate() -> None:
    with pytest.raises(ConfigError):
        Thresholds(max_quality_drop=1.5)
    with pytest.raises(ConfigError):
        Thresholds(max_drift=0)


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
    # an int8-weight tiny model agrees with its FP reference closely, but not perfectly
    assert 0.9 <= spec.baseline["top1"] <= 1.0 and 0.99 < spec.baseline["kl_quality"] < 1.0
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
