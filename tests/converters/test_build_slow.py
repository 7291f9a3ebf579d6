"""Real-model builds (SmolLM2-135M): minutes each on 2 cores, so only under ``-m slow``."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.converters.build import build
from edgeq.sdk.bundle.manifest import Manifest

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.mark.parametrize("target, precision, engine", [
    ("rtx-ampere", "int4-awq", True),
    ("rtx-ada", "fp8", True),
    ("jetson-orin", "int4-awq", False),
])
def test_smollm2_bundle(tmp_path: Path, target: str, precision: str, engine: bool) -> None:
    result = build("smollm2-135m", target, out=tmp_path / "b")
    m = Manifest.load(tmp_path / "b")
    assert result.precision == m.precision == precision  # the profile default
    assert (tmp_path / "b/engine/model.engine").is_file() is engine
    assert (tmp_path / "b/plan/build_plan.json").is_file()
    assert m.build["accuracy"]["passed"] is True
    if engine:
        assert m.build["engine_build"]["seconds"] > 0 and m.engines[0].compute_capabilities
