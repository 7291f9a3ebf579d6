"""CI cannot go green without TensorRT-RTX: with EDGEQ_REQUIRE_TRT_RTX=1 (.ci/run sets it) the bindings must
import, and a ``trt_rtx`` test whose bindings are missing is an error, not a skip (the hook in tests/conftest.py).
The hook is checked in child pytest runs with the module hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_TRT_RTX, TRT_RTX_MODULE

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).relative_to(ROOT).as_posix()


def test_required_tensorrt_rtx_imports_and_makes_a_builder() -> None:
    if os.environ.get(REQUIRE_TRT_RTX) != "1":
        pytest.skip(f"{REQUIRE_TRT_RTX} is not 1: TensorRT-RTX is optional here")
    import tensorrt_rtx_bindings as trt

    assert trt.__version__.startswith("1.")
    assert trt.Builder(trt.Logger(trt.Logger.ERROR)) is not None  # the libraries load, not just the module


@pytest.mark.trt_rtx
def test_a_trt_rtx_test() -> None:
    """What every trt_rtx-marked test relies on (run by the checks below)."""
    import tensorrt_rtx_bindings  # noqa: F401


def _child(test: str, require: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on one test of this file, in a child whose ``import tensorrt_rtx_bindings`` fails."""
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_TRT_RTX}
    env["PYTHONPATH"] = str(ROOT)
    if require is not None:
        env[REQUIRE_TRT_RTX] = require
    code = (f"import sys; sys.modules[{TRT_RTX_MODULE!r}] = None; import pytest; "
            f"raise SystemExit(pytest.main(['-q', '-p', 'no:cacheprovider', {HERE + '::' + test!r}]))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_missing_bindings_are_an_error_when_required_and_a_skip_otherwise() -> None:
    required = _child("test_a_trt_rtx_test", "1")
    assert required.returncode == 1, required.stdout + required.stderr
    assert "1 error" in required.stdout and f"{REQUIRE_TRT_RTX}=1 but {TRT_RTX_MODULE} does not import" in required.stdout
    optional = _child("test_a_trt_rtx_test", None)
    assert optional.returncode == 0 and "1 skipped" in optional.stdout, optional.stdout + optional.stderr
    direct = _child("test_required_tensorrt_rtx_imports_and_makes_a_builder", "1")
    assert direct.returncode == 1 and "1 failed" in direct.stdout, direct.stdout + direct.stderr
