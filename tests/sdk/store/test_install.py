"""The install state machine (``edgeq.sdk.store.install``): each byte hashed once, free space checked first."""

from __future__ import annotations

import collections
import errno
import hashlib
import shutil
from pathlib import Path

import pytest

from edgeq.converters.pack import pack
from edgeq.errors import BundleError, DiskFullError, StoreError, StoreFullError
from edgeq.sdk.bundle import verify
from edgeq.sdk.bundle.archive import ArchiveLimits
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from edgeq.sdk.store import install
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA, tree_snapshot


def _store(root: Path, keypair) -> Store:  # type: ignore[no-untyped-def]
    return Store(root, trusted_keys=[keypair.public_path], device=ADA)


@pytest.mark.parametrize("form", ["dir", "archive"])
def test_install_hashes_each_file_once(tmp_path, keypair, make_bundle, monkeypatch, form):
    bundle = make_bundle(1)
    if form == "archive":
        bundle = pack(bundle, tmp_path / "b.edgeq.tar")
    store = _store(tmp_path / "store", keypair)
    computed: collections.Counter[str] = collections.Counter()
    real_sha256 = hashlib.sha256

    class CountingSha256:
        """hashlib.sha256 that counts each digest it produces (a file's digest = one full pass over it)."""

        def __init__(self, data: bytes = b"", **kw: object) -> None:
            self._h = real_sha256(data, **kw)

        def update(self, data: bytes) -> None:
            self._h.update(data)

        def hexdigest(self) -> str:
            d = self._h.hexdigest()
            computed[d] += 1
            return d

        def digest(self) -> bytes:
            computed[self._h.hexdigest()] += 1
            return self._h.digest()

    monkeypatch.setattr(hashlib, "sha256", CountingSha256)
    v = store.install(bundle)
    monkeypatch.undo()
    passes = {f.path: computed[f.sha256] for f in v.manifest.files}
    assert passes == {f.path: 1 for f in v.manifest.files}, passes
    store.verify("tiny", 1)  # and what landed is what was hashed


def _content_bytes(bundle: Path, manifest: Manifest) -> int:
    return (sum(f.size for f in manifest.files) + (bundle / MANIFEST_NAME).stat().st_size
            + (bundle / SIGNATURE_NAME).stat().st_size)


def test_full_disk_refused_before_the_first_byte(tmp_path, keypair, make_bundle, monkeypatch):
    store = _store(tmp_path / "store", keypair)
    store.install(make_bundle(1))
    bundle = make_bundle(2)
    need = install.required_bytes(_content_bytes(bundle, Manifest.load(bundle)))
    asked: list[Path] = []
    free = need - 1

    def disk_usage(path):  # type: ignore[no-untyped-def]
        asked.append(Path(path))
        assert list((store.root / "staging").iterdir()) == [], "space is checked after staging began"
        return shutil._ntuple_diskusage(100 * need, 100 * need - free, free)  # type: ignore[attr-defined]

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    before = tree_snapshot(store.root)
    with pytest.raises(StoreFullError, match="MiB are free; nothing was written") as ei:
        store.install(bundle)
    assert isinstance(ei.value, StoreError) and isinstance(ei.value, DiskFullError) and ei.value.exit_code == 3
    assert asked and all(p.is_relative_to(store.root) for p in asked)  # the store's own filesystem
    assert tree_snapshot(store.root) == before
    assert store.active("tiny").version == 1
    free = need  # exactly enough is enough
    assert store.install(bundle).version == 2


def test_disk_filling_up_while_staging_leaves_nothing(tmp_path, keypair, make_bundle, monkeypatch):
    store = _store(tmp_path / "store", keypair)
    store.install(make_bundle(1))
    real_copy = verify.copy_verified
    copied: list[str] = []

    def copy_then_fill(src, dst, entry):  # type: ignore[no-untyped-def]
        if copied:
            dst.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        copied.append(entry.path)
        real_copy(src, dst, entry)

    monkeypatch.setattr(verify, "copy_verified", copy_then_fill)
    before = tree_snapshot(store.root)
    with pytest.raises(StoreFullError, match="ran out of space while staging"):
        store.install(make_bundle(2))
    assert copied and tree_snapshot(store.root) == before
    assert store.active("tiny").version == 1


def _manifest(*paths: str, size: int = 4) -> Manifest:
    return Manifest(model_name="m", bundle_version=1, task="text-generation", target="cpu", precision="fp32",
                    files=tuple(FileEntry(p, size, "0" * 64) for p in paths), engines=())


@pytest.mark.parametrize(("paths", "limits", "match"), [
    (("a", "a/b"), ArchiveLimits(), "both as a file and as a directory"),
    (("model/m.onnx", MANIFEST_NAME), ArchiveLimits(), "reserves"),
    (("a", "b", "c"), ArchiveLimits(max_members=2), "more than 2 files"),
    (("big",), ArchiveLimits(max_file_bytes=3), "per-file limit"),
    (("a", "b"), ArchiveLimits(max_total_bytes=7), "total limit"),
])
def test_plan_refuses_file_lists_that_cannot_be_laid_out(paths, limits, match):
    with pytest.raises(BundleError, match=match):
        verify.check_layout(_manifest(*paths), limits)


def test_check_layout_counts_the_listed_bytes():
    assert verify.check_layout(_manifest("a", "b/c", "b/d", size=5), ArchiveLimits()) == 15
