"""The device runtime must not pull in the host toolchain."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "edgeq.converters", "tensorrt", "tensorrt_rtx_bindings")


@pytest.mark.parametrize("module", ["edgeq.sdk", "edgeq.sdk.runtime.runtime", "edgeq.sdk.health.monitor", "edgeq.sdk.runtime.backends"])
def test_sdk_import_is_light(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    bad = sorted(m for m in loaded if m.split(".")[0] in HEAVY or any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert bad == [], f"{module} imported {bad}"


def test_serving_from_a_store_stays_light(lm_store: "object") -> None:
    """Open a store, generate and run a canary in a fresh process: still no host toolchain imported."""
    code = (
        "import sys, json\n"
        "from edgeq.sdk.runtime.runtime import Runtime\n"
        "from edgeq.sdk.health.monitor import MonitorConfig\n"
        f"with Runtime.open({str(lm_store)!r}, 'tiny-llama', monitor=MonitorConfig(enabled=False)) as rt:\n"
        "    rt.generate('Python', max_new_tokens=3)\n"
        "    assert rt.check_health().ok\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    bad = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert bad == [], bad
