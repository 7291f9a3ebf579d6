"""The store's cache of artifacts derived on the device (engines built from a bundle's plan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.errors import ConfigError, NotInstalledError
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA


def _store(root: Path, keypair) -> Store:  # type: ignore[no-untyped-def]
    return Store(root, trusted_keys=[keypair.public_path], device=ADA, keep=1)


def test_put_read_and_record(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "s", keypair)
    s.install(make_bundle(1))
    assert s.read_derived("tiny", 1, "built.engine") is None
    s.put_derived("tiny", 1, "built.engine", b"ENGINE" * 100, {"event": "engine_built", "seconds": 1.5})
    assert s.read_derived("tiny", 1, "built.engine") == b"ENGINE" * 100
    ev = [e for e in s.events("tiny") if e["event"] == "derived_cached"]
    assert ev and ev[-1]["name"] == "built.engine" and ev[-1]["info"]["seconds"] == 1.5
    # a fresh Store object (a restart) sees the committed record
    assert _store(tmp_path / "s", keypair).read_derived("tiny", 1, "built.engine") == b"ENGINE" * 100


def test_damaged_cache_is_not_served(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "s", keypair)
    v = s.install(make_bundle(1))
    s.put_derived("tiny", 1, "built.engine", b"x" * 4096)
    f = v.path.parent.parent / "derived" / "1" / "built.engine"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 1
    f.write_bytes(bytes(raw))
    assert s.read_derived("tiny", 1, "built.engine") is None
    assert any(e["event"] == "derived_corrupt" for e in s.events("tiny"))
    f.unlink()
    assert s.read_derived("tiny", 1, "built.engine") is None


def test_goes_with_its_version_and_unrecorded_files_are_swept(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "s", keypair)
    s.install(make_bundle(1))
    s.put_derived("tiny", 1, "built.engine", b"v1")
    ddir = tmp_path / "s" / "models" / "tiny" / "derived"
    (ddir / "1" / "half-written.engine").write_bytes(b"crash leftover")  # written, never committed
    s.install(make_bundle(2))
    assert not (ddir / "1" / "half-written.engine").exists()
    s.install(make_bundle(3))  # keep=1: v1 pruned, its derived files go too
    s.recover()
    assert not (ddir / "1").exists()
    assert s.read_derived("tiny", 1, "built.engine") is None


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_bad_names(tmp_path, keypair, make_bundle, name):
    s = _store(tmp_path / "s", keypair)
    s.install(make_bundle(1))
    with pytest.raises(ConfigError):
        s.put_derived("tiny", 1, name, b"x")


def test_unknown_version(tmp_path, keypair, make_bundle):
    s = _store(tmp_path / "s", keypair)
    s.install(make_bundle(1))
    with pytest.raises(NotInstalledError):
        s.put_derived("tiny", 9, "e.engine", b"x")
