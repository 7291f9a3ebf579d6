"""Key files, key ids, signature checks; the device probe and compatibility rules."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest

from edgeq.errors import ConfigError, IncompatibleBundleError, SignatureError
from edgeq.sdk.device import DeviceInfo, check_engine, normalize_cc, same_trt_version
from edgeq.sdk.bundle.manifest import EngineInfo
from edgeq.converters.signing import generate_keypair, sign
from edgeq.sdk.bundle.signing import TrustedKeys, key_id, load_public_key, raw_public_bytes, verify


def test_keypair_files_and_key_id(tmp_path):
    kp = generate_keypair(tmp_path, "k")
    assert stat.S_IMODE(os.stat(kp.private_path).st_mode) == 0o600
    pub = load_public_key(kp.public_path)
    assert kp.key_id == hashlib.sha256(raw_public_bytes(pub)).hexdigest() == key_id(pub)
    # the same key read as raw bytes or hex has the same id
    assert key_id(load_public_key(raw_public_bytes(pub))) == kp.key_id
    assert key_id(load_public_key(raw_public_bytes(pub).hex().encode())) == kp.key_id
    with pytest.raises(ConfigError):
        load_public_key(b"not a key")


def test_sign_verify(tmp_path):
    kp, other = generate_keypair(tmp_path, "a"), generate_keypair(tmp_path, "b")
    sig = sign(b"payload", kp.private_path)
    assert verify(b"payload", sig, TrustedKeys([kp.public_path, other.public_path])) == kp.key_id
    for data, trusted, match in [(b"payloaD", [kp.public_path], "does not verify"),
                                 (b"payload", [other.public_path], "does not trust"),
                                 (b"payload", [], "does not trust")]:
        with pytest.raises(SignatureError, match=match):
            verify(data, sig, TrustedKeys(trusted))
    with pytest.raises(SignatureError, match="malformed"):
        verify(b"payload", b"{", TrustedKeys([kp.public_path]))


def test_compute_capability_forms():
    assert {normalize_cc(x) for x in ("8.9", "89", "sm89", "sm_89", "SM_89")} == {"8.9"}
    assert normalize_cc("120") == "12.0" and normalize_cc("sm_120") == "12.0"
    with pytest.raises(ConfigError):
        normalize_cc("ada")
    assert same_trt_version("1.7.1", "1.7.1.116") and not same_trt_version("1.7.0", "1.7.1.116")


def test_engine_checks_name_both_values():
    dev = DeviceInfo("sm89", {"tensorrt_rtx": "1.7.1.116"})
    check_engine(EngineInfo(flavour="tensorrt_rtx", path="e", compute_capabilities=("8.9",), trt_version="1.7.1"), dev)
    check_engine(EngineInfo(flavour="onnx", onnx="m.onnx"), DeviceInfo(None))
    cases = [
        (EngineInfo(flavour="tensorrt_rtx", path="e", compute_capabilities=("12.0",), trt_version="1.7.1"), ("12.0", "8.9")),
        (EngineInfo(flavour="tensorrt_rtx", path="e", compute_capabilities=("8.9",), trt_version="1.8.0"), ("1.8.0", "1.7.1.116")),
        (EngineInfo(flavour="tensorrt", path="e", compute_capabilities=("8.9",), trt_version="10.3.0"), ("tensorrt", "not installed")),
    ]
    for engine, needles in cases:
        with pytest.raises(IncompatibleBundleError) as ei:
            check_engine(engine, dev)
        assert all(n in str(ei.value) for n in needles), str(ei.value)


def test_probe_reads_metadata_without_importing_engine_libraries():
    code = ("import sys; from edgeq.sdk.device import probe; d = probe(); "
            "assert not any(m.split('.')[0].startswith('tensorrt') for m in sys.modules), sorted(sys.modules); "
            "print(d.cpu_only, d.trt_versions)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # on this CPU-only CI host: no GPU, TensorRT-RTX installed as a package
    print("probe:", out.stdout.strip())
