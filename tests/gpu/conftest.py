"""GPU tests (marker ``gpu``, deselected by default; run with ``pytest -m gpu tests/gpu``).

They need an NVIDIA GPU, onnxruntime-gpu and cuda-bindings, and they fail (never skip) without them: a
GPU run that silently did nothing would read as a pass. The bundles they serve come from
``EDGEQ_GPU_PAYLOAD`` (``benchmarks/gpu_payload.py --only tests`` writes them; the GPU machine has no
exporter), or are built here when the host toolchain is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BUNDLES = ("tiny-llama-fp16-v1", "tiny-llama-int8-wo-v2", "tiny-qwen3-fp16-v1")


@pytest.fixture(scope="session")
def gpu_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    env = os.environ.get("EDGEQ_GPU_PAYLOAD")
    if env:
        root = Path(env)
    else:
        from benchmarks.gpu_payload import test_bundles

        root = tmp_path_factory.mktemp("gpu-bundles")
        test_bundles(root)
    missing = [b for b in BUNDLES if not (root / b / "manifest.json").is_file()]
    if missing:
        pytest.fail(f"GPU test bundles missing under {root}: {missing}")
    return {b: root / b for b in BUNDLES}


@pytest.fixture(scope="session")
def cuda_device() -> None:
    """A CUDA device through cuda-bindings (the device-memory layer's own tests need nothing more)."""
    from edgeq.sdk.runtime.backends import cudart

    if cudart.device_count() < 1:
        pytest.fail("the GPU tests need a CUDA device visible to cuda-bindings")


@pytest.fixture(scope="session")
def ort_gpu(cuda_device: None) -> None:
    """onnxruntime-gpu whose CUDA provider loads here."""
    from edgeq.sdk.runtime.backends.ort import OrtGpuBackend

    why = OrtGpuBackend.available()
    if why is not None:
        pytest.fail(f"the GPU tests need onnxruntime-gpu with a loadable CUDA provider: {why}")
