"""Fixtures for the store tests: a signing key, a factory of tiny signed bundles, fake devices."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeq.converters.bundle import BundleContents, write_bundle
from edgeq.sdk.device import DeviceInfo
from edgeq.sdk.bundle.manifest import EngineInfo
from edgeq.converters.signing import KeyPair, generate_keypair

ADA = DeviceInfo("8.9", {"tensorrt_rtx": "1.7.1.116"}, gpu_name="fake RTX 4090")
CPU = DeviceInfo(None, {})
ENGINE = "engine/model.engine"
ONNX = "model/model.onnx"


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("keys"), "publisher")


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("keys2"), "intruder")


MakeBundle = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, keypair: KeyPair) -> MakeBundle:
    """make_bundle(version, *, model="tiny", engine=True, onnx=True, cc="8.9", trt="1.7.1.116", sign=True, seed=0)."""
    counter = iter(range(10_000))

    def make(version: int, *, model: str = "tiny", engine: bool = True, onnx: bool = True, cc: str = "8.9",
             trt: str = "1.7.1.116", sign: bool | Path = True, seed: int | None = None, extra_files: int = 2) -> Path:
        n = next(counter)
        src = tmp_path / f"src-{model}-{version}-{n}"
        src.mkdir()
        rnd = hashlib.sha256(f"{model}-{version}-{seed if seed is not None else n}".encode()).digest()
        files: dict[str, tuple[Path, str]] = {}
        engines: list[EngineInfo] = []
        if engine:
            (src / "e.engine").write_bytes(rnd * 64)
            files[ENGINE] = (src / "e.engine", "engine")
            engines.append(EngineInfo(flavour="tensorrt_rtx", path=ENGINE, compute_capabilities=(cc,), trt_version=trt,
                                      precision="int8"))
        if onnx:
            (src / "m.onnx").write_bytes(b"ONNX" + rnd * 8)
            files[ONNX] = (src / "m.onnx", "onnx")
            engines.append(EngineInfo(flavour="onnx", onnx=ONNX))
        for i in range(extra_files):
            (src / f"t{i}.json").write_text(f'{{"v": {version}, "i": {i}}}')
            files[f"tokenizer/t{i}.json"] = (src / f"t{i}.json", "tokenizer")
        contents = BundleContents(model_name=model, bundle_version=version, task="text-generation", target="rtx-ada",
                                  precision="int8", files=files, engines=tuple(engines))
        key = None if sign is False else (sign if isinstance(sign, Path) else keypair.private_path)
        return write_bundle(contents, tmp_path / f"bundle-{model}-{version}-{n}", signing_key=key)

    return make


def tree_snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256 or 'dir'} of everything under root (the lock file's PID text excluded)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            out[rel] = "lock" if rel == ".lock" else hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out
