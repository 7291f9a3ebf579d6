"""Real-model checks (slow): SmolLM2-135M-Instruct served from a store answers a chat correctly and
its canaries reproduce the build-time baseline; MiniLM ranks related sentences first."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.sdk.health.monitor import MonitorConfig
from edgeq.sdk.runtime.runtime import Runtime
from tests.sdk.runtime.helpers import make_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeq.converters.export import export_onnx

    return export_onnx("smollm2-135m", tmp_path_factory.mktemp("smol") / "fp32").out_dir


def test_smollm2_chat_from_store(smollm2_onnx: Path, tmp_path: Path) -> None:
    from edgeq.sdk.store.store import Store

    bundle = make_bundle(smollm2_onnx, smollm2_onnx, tmp_path / "b", name="smollm2-135m", version=1,
                         task="text-generation")
    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(bundle)
    with Runtime.open(store.root, "smollm2-135m", monitor=MonitorConfig(enabled=False)) as rt:
        res = rt.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
        assert "Paris" in res.text, res.text
        assert res.finish_reason in ("eos", "length")
        v = rt.check_health()
        assert v is not None and v.ok and v.scores["top1"] == pytest.approx(1.0)
        batch = rt.generate(["The capital of France is", "1, 2, 3, 4,"], max_new_tokens=6)
        assert "Paris" in batch[0].text and "5" in batch[1].text
