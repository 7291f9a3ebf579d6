"""write_bundle: plan validation, atomic output, hashes of the written bytes, signature."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.converters.bundle import BundleContents, write_bundle
from edgeq.errors import ConfigError, OutputExistsError, SignatureError
from edgeq.sdk.bundle.verify import verify_bundle
from edgeq.sdk.bundle.manifest import EngineInfo, Manifest, sha256_file
from edgeq.converters.signing import generate_keypair
from edgeq.sdk.bundle.signing import TrustedKeys, key_id, load_public_key


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    (d / "e.engine").write_bytes(b"\x01" * 4096)
    (d / "health.json").write_text('{"metrics": []}')
    (d / "tok.json").write_text("{}")
    return d


def _contents(src: Path, **kw) -> BundleContents:  # type: ignore[no-untyped-def]
    files = {"engine/m.engine": (src / "e.engine", "engine"), "health/health.json": (src / "health.json", "health"),
             "tokenizer/tokenizer.json": (src / "tok.json", "tokenizer")}
    base = dict(model_name="m", bundle_version=3, task="text-generation", target="rtx-ada", precision="fp8",
                files=files, engines=(EngineInfo(flavour="tensorrt_rtx", path="engine/m.engine",
                                                 compute_capabilities=("8.9",), trt_version="1.7.1.116"),),
                quant_config={"scheme": "fp8"}, model_id="org/m", build={"builder": "test"})
    base.update(kw)
    return BundleContents(**base)


def test_write_sign_verify(tmp_path, src):
    kp = generate_keypair(tmp_path / "k")
    out = write_bundle(_contents(src), tmp_path / "b", signing_key=kp.private_path)
    m = Manifest.load(out)
    assert m.file("engine/m.engine").sha256 == sha256_file(src / "e.engine")
    assert m.file("engine/m.engine").size == 4096
    assert m.health == "health/health.json" and m.build["builder"] == "test" and m.build_host and m.created_at
    assert key_id(load_public_key(kp.public_path)) == verify_bundle(out, TrustedKeys([kp.public_path])).key_id
    with pytest.raises(SignatureError):
        verify_bundle(out, TrustedKeys([generate_keypair(tmp_path / "k2").public_path]))
    with pytest.raises(OutputExistsError):
        write_bundle(_contents(src), out)
    write_bundle(_contents(src, bundle_version=4), out, overwrite=True)
    assert Manifest.load(out).bundle_version == 4
    assert not (out / "manifest.sig").exists()


@pytest.mark.parametrize("bad", [
    {"files": {"/abs/x": ("e.engine", "engine")}},
    {"files": {"../x": ("e.engine", "engine")}},
    {"files": {"a//b": ("e.engine", "engine")}},
    {"files": {"x": ("e.engine", "weights")}},
    {"files": {"manifest.json": ("e.engine", "other")}},
    {"files": {"a": ("e.engine", "other"), "a/b": ("tok.json", "other")}},
    {"engines": (EngineInfo(flavour="onnx", onnx="model/missing.onnx"),)},
    {"bundle_version": 0},
])
def test_bad_plans_refused_before_writing(tmp_path, src, bad):
    if "files" in bad:
        bad = {"files": {k: (src / v[0], v[1]) for k, v in bad["files"].items()}, "engines": ()}
    with pytest.raises(ConfigError):
        write_bundle(_contents(src, **bad), tmp_path / "b")
    assert list(tmp_path.iterdir()) == [src]


def test_missing_source_leaves_nothing(tmp_path, src):
    (src / "tok.json").unlink()
    with pytest.raises(ConfigError, match="not a file"):
        write_bundle(_contents(src), tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
