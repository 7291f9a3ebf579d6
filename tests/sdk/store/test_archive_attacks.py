"""Malicious archives are refused before extraction; nothing is written outside staging (counted cases)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from edgeq.errors import BundleError, UnsafeArchiveError
from edgeq.sdk.bundle.archive import ArchiveLimits, BundleArchive
from edgeq.sdk.bundle.manifest import Manifest
from edgeq.sdk.bundle.verify import BundleSource
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA, ENGINE, tree_snapshot


def _good_members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    for p in sorted(bundle.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            ti = tarfile.TarInfo(str(p.relative_to(bundle)))
            ti.size = len(data)
            out.append((ti, data))
    return out


def _member(name: str, type_: bytes = tarfile.REGTYPE, data: bytes = b"evil", **kw: object) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    for k, v in kw.items():
        setattr(ti, k, v)
    if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE):
        ti.size = len(data)
        return ti, data
    return ti, None


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def test_malicious_archives_refused(tmp_path, keypair, make_bundle):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = Store(tmp_path / "store", trusted_keys=[keypair.public_path], device=ADA,
                  limits=ArchiveLimits(max_file_bytes=1 << 16, max_members=64))
    store.install(make_bundle(1))
    good = _good_members(make_bundle(2))
    engine_data = next(d for ti, d in good if ti.name == ENGINE)
    rel_out = os.path.relpath(outside / "evil", store.root / "staging" / "x")
    cases = {
        "dotdot": [_member("../../outside/evil")],
        "dotdot to outside from staging": [_member(rel_out)],
        "dotdot inside path": [_member("engine/../../evil")],
        "absolute path": [_member(str(outside / "evil"))],
        "backslash path": [_member("..\\..\\evil")],
        "symlink to outside": [_member("engine/link", tarfile.SYMTYPE, linkname=str(outside))],
        "symlink then write through it": [_member("lnk", tarfile.SYMTYPE, linkname=str(outside)), _member("lnk/evil")],
        "hardlink to /etc/passwd": [_member("engine/hl", tarfile.LNKTYPE, linkname="/etc/passwd")],
        "hardlink to a member": [_member("engine/hl2", tarfile.LNKTYPE, linkname=ENGINE)],
        "char device": [_member("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "block device": [_member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
        "fifo": [_member("fifo", tarfile.FIFOTYPE)],
        "duplicate engine name": [_member(ENGINE, data=engine_data)],
        "duplicate via ./ prefix": [_member("./" + ENGINE, data=engine_data)],
        "oversize file": [_member("big.bin", data=b"\0" * ((1 << 16) + 1))],
        "file and dir at once": [_member("engine/model.engine/x")],
        "too many members": [_member(f"pad/{i}") for i in range(70)],
    }
    refused = 0
    for name, extra in cases.items():
        arch = _write(tmp_path / f"{refused}.edgeq.tar", good + extra)
        before_store = tree_snapshot(store.root)
        before_out = tree_snapshot(tmp_path)
        with pytest.raises(BundleError) as ei:
            store.install(arch)
        print(f"  {name}: {ei.value}")
        assert tree_snapshot(store.root) == before_store, name
        after_out = tree_snapshot(tmp_path)
        assert after_out == before_out, f"{name}: wrote {set(after_out) - set(before_out)}"
        assert not (outside / "evil").exists() and list(outside.iterdir()) == []
        assert store.active("tiny").version == 1
        refused += 1
    print(f"malicious archives refused: {refused}")
    assert refused == len(cases)


def test_extraction_bounded_by_signed_manifest(tmp_path, make_bundle):
    """A clean-looking archive whose member set or sizes differ from the manifest is refused before writing."""
    good = _good_members(make_bundle(1))
    staging = tmp_path / "staging"
    staging.mkdir()
    arch = _write(tmp_path / "a.tar", good + [_member("tokenizer/extra.json")])
    with BundleArchive(arch) as a:
        expected = {ti.name: ti.size for ti, _ in good if ti.name not in ("manifest.json", "manifest.sig")}
        with pytest.raises(UnsafeArchiveError, match="does not list"):
            a.members_for(expected)
        with pytest.raises(UnsafeArchiveError, match="manifest says"):
            a.members_for({**expected, "tokenizer/extra.json": 5})  # "evil" is 4 bytes
    with BundleSource(arch) as src:  # the same check guards the staging copy, before its first byte
        manifest = Manifest.from_bytes(src.manifest_bytes)
        with pytest.raises(UnsafeArchiveError, match="does not list"):
            src.materialize(staging, manifest)
    assert list(staging.iterdir()) == []
