"""Bundles and servers for the serving tests: tiny-llama (FP, with health data) and MiniLM (no health data).

Servers run uvicorn in-process on 127.0.0.1, port 0, in a daemon thread, and are stopped by the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeq.sdk import BackgroundServer, MonitorConfig, Runtime, ServeConfig
from tests.sdk.runtime.helpers import bundle_files, make_bundle

QUIET = MonitorConfig(enabled=False)
LM = "tiny-llama"
ENC = "minilm-l6"


@pytest.fixture(scope="session")
def lm_bundle(tiny_llama_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama served unquantized (its own health reference), as a bundle directory."""
    root = tmp_path_factory.mktemp("serve-lm")
    return make_bundle(tiny_llama_onnx, tiny_llama_onnx, root / "b", name=LM, version=1, task="text-generation")


@pytest.fixture(scope="session")
def enc_bundle(minilm_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM without health data (the encoder tests need no canaries; building them costs seconds)."""
    from edgeq.converters.bundle import BundleContents, write_bundle
    from edgeq.sdk.bundle.manifest import EngineInfo

    contents = BundleContents(model_name=ENC, bundle_version=1, task="feature-extraction", target="cpu",
                              precision="fp32", files=bundle_files(minilm_onnx, minilm_onnx, []),
                              engines=(EngineInfo(flavour="onnx", onnx="model/model.onnx"),))
    return write_bundle(contents, tmp_path_factory.mktemp("serve-enc") / "b")


@pytest.fixture(scope="module")
def lm_rt(lm_bundle: Path) -> Iterator[Runtime]:
    with Runtime.open(lm_bundle, monitor=QUIET) as rt:
        yield rt


@pytest.fixture(scope="module")
def enc_rt(enc_bundle: Path) -> Iterator[Runtime]:
    with Runtime.open(enc_bundle, monitor=QUIET) as rt:
        yield rt


@pytest.fixture(scope="module")
def server(lm_rt: Runtime, enc_rt: Runtime) -> Iterator[BackgroundServer]:
    with BackgroundServer([lm_rt, enc_rt], ServeConfig(port=0)) as s:
        yield s


def client(url: str, **kw: Any) -> Any:
    """The real OpenAI client, no retries (a 429 must show as a 429), short timeouts."""
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=kw.pop("timeout", 30), **kw)


def count_fed_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Token ids per row of every run that reaches ONNX Runtime, bound or through infer (in order)."""
    from edgeq.sdk.runtime.backends.ort_io import OrtBinder

    seen: list[int] = []
    feed = OrtBinder.feed

    def counted(self: OrtBinder, name: str, array: Any) -> None:
        if name == "input_ids":
            seen.append(int(array.shape[1]))
        feed(self, name, array)

    monkeypatch.setattr(OrtBinder, "feed", counted)
    return seen
