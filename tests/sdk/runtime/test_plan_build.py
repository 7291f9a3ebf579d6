"""First start on a `build_on = "device"` target: the runtime builds the engine from the bundle's plan with the
builder it carries, caches it in the store with its hash, records the event, and reuses it on the next start.

TensorRT-RTX stands in for JetPack's TensorRT (the same builder API); the engine is built, not run (no GPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.sdk.device import DeviceInfo
from edgeq.sdk.store.store import Store
from edgeq.sdk.engine import builder
from edgeq.sdk.store.versions import StoreVersion

pytestmark = pytest.mark.trt_rtx  # skipped without TensorRT-RTX, an error in CI (tests/conftest.py)


@pytest.fixture
def tensorrt_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    fl = builder.FLAVOURS["tensorrt"]
    monkeypatch.setitem(builder.FLAVOURS, "tensorrt", type(fl)(fl.name, "tensorrt_rtx_bindings", fl.configure, fl.install_hint))


@pytest.fixture(scope="module")
def jetson_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeq.converters.build import build

    out = tmp_path_factory.mktemp("jetson") / "bundle"
    build("tiny-llama", "jetson-orin", precision="int4-rtn", out=out, health=False,
          quant_overrides={"calib_tokens": 256, "calib_seq_len": 64, "holdout_tokens": 128})
    return out


def test_engine_built_from_plan_is_cached_and_reused(
    jetson_bundle: Path, tmp_path: Path, tensorrt_stand_in: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeq.sdk.runtime.backends.trt import build_from_plan

    orin = DeviceInfo(compute_capability="8.7", trt_versions={"tensorrt": "10.3.0"})
    store = Store(tmp_path / "store", allow_unsigned=True, device=orin)
    iv = store.install(jetson_bundle)
    engine = iv.manifest.engines[0]
    assert engine.flavour == "tensorrt" and engine.path is None and engine.plan
    version = StoreVersion(store, iv.model, iv.version, iv.manifest)

    first = build_from_plan(version, engine)
    assert len(first) > 100_000
    cached = [e for e in store.events(iv.model) if e["event"] == "derived_cached"]
    assert len(cached) == 1 and cached[0]["info"]["event"] == "engine_built"
    assert store.read_derived(iv.model, iv.version, cached[0]["name"]) == first

    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("rebuilt although the store holds a verified engine")

    monkeypatch.setattr(builder, "build_engine", no_build)
    assert build_from_plan(StoreVersion(Store(tmp_path / "store", device=orin), iv.model, iv.version, iv.manifest),
                           engine) == first
