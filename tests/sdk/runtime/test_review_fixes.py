"""Runtime behaviours pinned after review: canaries fit any engine profile, closed runtimes refuse work,
bundle directories do not pretend to check signatures, fallback skips excluded versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import ConfigError, RuntimeErrorBase
from edgeq.sdk.health.monitor import MonitorConfig
from edgeq.sdk.runtime.runtime import Runtime
from edgeq.sdk.store.store import Store
from edgeq.sdk.store.versions import StoreCatalog
from tests.sdk.runtime.conftest import MODEL

OFF = MonitorConfig(enabled=False)


def test_canary_runs_within_a_batch_one_profile(lm_store: Path) -> None:
    """An engine whose profile allows batch 1 only (RTX/Jetson allow 2; canaries have 4 rows) still passes."""
    from edgeq.sdk.health.canary import run_canary

    with Runtime.open(lm_store, MODEL, monitor=OFF) as rt:
        h = rt._current
        arrays = h.spec.arrays
        assert len(arrays["input_ids"]) > 1  # the case that used to go out of profile

        def batch_one_only(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            batch = len(next(iter(feeds.values())))
            if batch != 1:
                raise RuntimeErrorBase(f"shape outside the profile: batch {batch}")
            return dict(zip(h.output_names, h.backend.infer(feeds)))

        res = run_canary(batch_one_only, arrays, h.backend.input_dtypes, h.info)
        whole = run_canary(lambda f: dict(zip(h.output_names, h.backend.infer(f))), arrays, h.backend.input_dtypes, h.info)
        assert res.finite and res.scores["top1"] == pytest.approx(whole.scores["top1"])
        assert rt.check_health().ok


def test_closed_runtime_refuses_requests(lm_store: Path) -> None:
    rt = Runtime.open(lm_store, MODEL, monitor=OFF)
    rt.close()
    with pytest.raises(RuntimeErrorBase, match="closed"):
        rt.generate("hello", max_new_tokens=2)
    rt.close()  # idempotent


def test_bundle_dir_refuses_trust_options(lm_bundles: dict[int, Path]) -> None:
    with pytest.raises(ConfigError, match="bundle directory"):
        Runtime.open(lm_bundles[1], MODEL, trusted_keys=[b"x" * 32])


def test_opening_a_runtime_does_not_change_the_install_policy(lm_store: Path) -> None:
    before = (lm_store / "store.json").read_bytes()
    with Runtime.open(lm_store, MODEL, monitor=OFF):
        pass
    assert (lm_store / "store.json").read_bytes() == before
    with pytest.raises(TypeError):
        Runtime.open(lm_store, MODEL, allow_unsigned=True)  # type: ignore[call-arg]


def test_previous_usable_skips_excluded_versions(lm_bundles: dict[int, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "s", allow_unsigned=True, keep=3)
    for v in (1, 2):
        store.install(lm_bundles[v])
    cat = StoreCatalog(store, MODEL)
    assert cat.previous_usable().version == 1
    assert cat.previous_usable(exclude={1}) is None
