"""The device store: install, activation, rollback, pruning, downgrade floor, verified reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.errors import (
    DowngradeError,
    IncompatibleBundleError,
    IntegrityError,
    NotInstalledError,
    SignatureError,
    StoreError,
)
from edgeq.converters.pack import pack
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA, CPU, ENGINE, ONNX, tree_snapshot


def _store(root: Path, keypair, **kw) -> Store:  # type: ignore[no-untyped-def]
    return Store(root, trusted_keys=[keypair.public_path], device=kw.pop("device", ADA), **kw)


def test_install_activate_rollback_and_verified_reads(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "store", keypair)
    v1 = s.install(make_bundle(1))
    assert v1.active and v1.key_id is not None
    v2 = s.install(pack(make_bundle(2), tmp_path / "b2.edgeq.tar"))  # archive form
    assert s.active("tiny").version == 2
    assert s.previous_usable("tiny").version == 1
    data = s.read_verified("tiny", 2, ENGINE)
    assert data == (v2.path / ENGINE).read_bytes()
    assert s.verified_path("tiny", 2, ONNX) == v2.path / ONNX
    assert s.rollback("tiny").version == 1 and s.active("tiny").version == 1
    # a version number is installed once; different content under the same number is refused
    with pytest.raises(StoreError, match="already installed"):
        s.install(make_bundle(1, seed=99))
    assert s.install(make_bundle(3)).version == 3
    s.remove("tiny", 1)
    with pytest.raises(DowngradeError, match="floor v3"):  # the floor outlives the removed versions
        s.install(make_bundle(1, seed=7))
    kinds = [e["event"] for e in s.events("tiny")]
    assert kinds == ["install", "install", "rollback", "install", "remove"]


def test_config_and_floor_survive_restart(tmp_path, keypair, make_bundle):
    root = tmp_path / "store"
    s = _store(root, keypair, keep=1)
    s.install(make_bundle(5))
    s2 = Store(root, device=ADA)  # no keys passed: the trust set and keep come from disk
    assert s2.keep == 1 and len(s2.trusted_keys()) == 1
    with pytest.raises(DowngradeError):
        s2.install(make_bundle(4))
    assert s2.install(make_bundle(4), allow_downgrade=True).version == 4
    assert s2.floor("tiny") == 5


def test_keep_prunes_oldest_and_bad_first(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "store", keypair, keep=2)
    for v in (1, 2, 3):
        s.install(make_bundle(v))
    s.mark_bad("tiny", 2, "drift")
    s.install(make_bundle(4))  # keeps active 4 + two others; bad v2 goes first
    assert [v.version for v in s.versions("tiny")] == [1, 3, 4]
    assert sorted(p.name for p in (s.root / "models/tiny/versions").iterdir()) == ["1", "3", "4"]
    s.mark_bad("tiny", 3, "drift")
    assert s.previous_usable("tiny").version == 1
    with pytest.raises(StoreError, match="marked bad"):
        s.activate("tiny", 3)
    assert s.rollback("tiny").version == 1


def test_rollback_reverifies_hashes(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "store", keypair)
    s.install(make_bundle(1))
    s.install(make_bundle(2))
    eng = s.version("tiny", 1).path / ENGINE
    raw = bytearray(eng.read_bytes())
    raw[10] ^= 1
    eng.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="SHA-256"):
        s.rollback("tiny")
    assert s.active("tiny").version == 2
    with pytest.raises(IntegrityError):
        s.read_verified("tiny", 1, ENGINE)
    with pytest.raises(IntegrityError):
        s.verified_path("tiny", 1, ENGINE)
    # an installed manifest edited on disk is caught too
    mf = s.version("tiny", 2).path / "manifest.json"
    mf.write_text(mf.read_text().replace('"int8"', '"fp16"', 1))
    with pytest.raises(IntegrityError, match="manifest was changed"):
        s.active("tiny")


def test_remove_keeps_floor(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "store", keypair)
    s.install(make_bundle(1))
    s.install(make_bundle(2))
    with pytest.raises(StoreError, match="active"):
        s.remove("tiny", 2)
    assert s.remove("tiny", 1) == [1]
    assert s.remove("tiny") == [2]
    assert s.models() == []
    with pytest.raises(NotInstalledError):
        s.active("tiny")
    with pytest.raises(DowngradeError):
        s.install(make_bundle(1, seed=5))


def test_unsigned_policy(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "store", keypair)
    unsigned = make_bundle(1, sign=False)
    with pytest.raises(SignatureError, match="not signed"):
        s.install(unsigned)
    assert s.install(unsigned, allow_unsigned=True).key_id is None
    s2 = Store(tmp_path / "store2", allow_unsigned=True, device=ADA)
    assert Store(tmp_path / "store2").allow_unsigned is True  # persisted
    # a signature that is present must verify even when unsigned bundles are allowed
    with pytest.raises(SignatureError, match="does not trust"):
        s2.install(make_bundle(2))


def test_compatibility_refused_before_extraction_with_both_values(tmp_path, keypair, make_bundle):
    cases = [
        (make_bundle(1, onnx=False, cc="8.6"), ADA, ["8.6", "8.9"]),
        (make_bundle(1, onnx=False, trt="1.6.0"), ADA, ["1.6.0", "1.7.1.116"]),
        (make_bundle(1, onnx=False), CPU, ["8.9", "CPU-only"]),
    ]
    for i, (bundle, device, needles) in enumerate(cases):
        s = _store(tmp_path / f"store{i}", keypair, device=device)
        before = tree_snapshot(s.root)
        with pytest.raises(IncompatibleBundleError) as ei:
            s.install(bundle)
        for n in needles:
            assert n in str(ei.value)
        assert tree_snapshot(s.root) == before
    print(f"incompatible-engine cases refused: {len(cases)}")


def test_onnx_only_bundle_installs_on_cpu_device(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "store", keypair, device=CPU)
    assert s.install(make_bundle(1, engine=False)).version == 1
    # an engine+onnx bundle is also usable on CPU through its ONNX entry
    assert s.install(make_bundle(2)).version == 2


def test_real_tiny_llama_onnx_round_trips(tmp_path, keypair, tiny_llama_onnx):
    import onnx

    from edgeq.converters.bundle import BundleContents, write_bundle
    from edgeq.sdk.bundle.manifest import EngineInfo

    files = {}
    for p in sorted(Path(tiny_llama_onnx).iterdir()):
        if p.is_file():
            role = "onnx" if p.name == "model.onnx" else ("onnx_data" if p.suffix == ".data" else "other")
            files[f"model/{p.name}" if role.startswith("onnx") else f"tokenizer/{p.name}"] = (p, role)
    contents = BundleContents(model_name="tiny-llama", bundle_version=1, task="text-generation", target="cpu",
                              precision="fp32", files=files, engines=(EngineInfo(flavour="onnx", onnx="model/model.onnx"),))
    bundle = write_bundle(contents, tmp_path / "bundle", signing_key=keypair.private_path)
    s = _store(tmp_path / "store", keypair, device=CPU)
    v = s.install(pack(bundle, tmp_path / "b.edgeq.tar"))
    raw = s.read_verified("tiny-llama", 1, "model/model.onnx")
    assert raw == (Path(tiny_llama_onnx) / "model.onnx").read_bytes()
    model = onnx.load(str(s.verified_path("tiny-llama", 1, "model/model.onnx")))
    assert [i.name for i in model.graph.input][:1] == ["input_ids"]
    assert len(v.manifest.files) == len(files)
