"""Tampered bundles are refused with the store unchanged and no engine library touched (counted cases)."""

from __future__ import annotations

import builtins
import json
import random
import shutil
from pathlib import Path

import pytest

from edgeq.errors import BundleError
from edgeq.converters.pack import pack
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA, ENGINE, tree_snapshot


@pytest.fixture
def no_engine_imports(monkeypatch):
    """Fail loudly if anything imports a TensorRT library (= could deserialize engine bytes)."""
    real = builtins.__import__

    def guarded(name, *a, **k):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in ("tensorrt", "tensorrt_rtx_bindings", "tensorrt_rtx"):
            raise AssertionError(f"engine library {name} imported during install")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", guarded)


def _flip(path: Path, pos: int, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos % len(raw)] ^= 1 << bit
    path.write_bytes(bytes(raw))


def test_mutated_bundles_refused(tmp_path, keypair, other_keypair, make_bundle, no_engine_imports):
    store = Store(tmp_path / "store", trusted_keys=[keypair.public_path], device=ADA)
    store.install(make_bundle(1))
    good = make_bundle(2)
    other = make_bundle(3, seed=1234)
    rng = random.Random(6)
    mutations: list[tuple[str, object]] = []

    for i in range(8):
        mutations.append((f"manifest bit flip #{i}", lambda d, i=i: _flip(d / MANIFEST_NAME, rng.randrange(1 << 30), i % 8)))
    for i in range(8):
        mutations.append((f"engine bit flip #{i}", lambda d, i=i: _flip(d / ENGINE, rng.randrange(1 << 30), i % 8)))
    for i in range(6):
        def sig_flip(d: Path, i: int = i) -> None:
            doc = json.loads((d / SIGNATURE_NAME).read_text())
            sig = bytearray(bytes.fromhex(doc["signature"]))
            sig[rng.randrange(len(sig))] ^= 1 << (i % 8)
            doc["signature"] = sig.hex()
            (d / SIGNATURE_NAME).write_text(json.dumps(doc))
        mutations.append((f"signature bit flip #{i}", sig_flip))
    mutations += [
        ("signature file raw byte flip", lambda d: _flip(d / SIGNATURE_NAME, 40)),
        ("engine truncated by 1 byte", lambda d: _trunc(d / ENGINE, -1)),
        ("engine truncated to 0", lambda d: _trunc(d / ENGINE, 0)),
        ("engine extended by 1 byte", lambda d: (d / ENGINE).write_bytes((d / ENGINE).read_bytes() + b"\0")),
        ("manifest truncated", lambda d: _trunc(d / MANIFEST_NAME, 100)),
        ("signature truncated", lambda d: _trunc(d / SIGNATURE_NAME, 30)),
        ("signature stripped", lambda d: (d / SIGNATURE_NAME).unlink()),
        ("engine deleted", lambda d: (d / ENGINE).unlink()),
        ("engine replaced by symlink", lambda d: _symlink_engine(d)),
        ("signed by untrusted key", lambda d: _resign(d, other_keypair.private_path)),
        ("manifest+sig paired with another bundle's engine", lambda d: shutil.copyfile(other / ENGINE, d / ENGINE)),
        ("manifest+sig of another bundle", lambda d: [shutil.copyfile(other / n, d / n) for n in (MANIFEST_NAME, SIGNATURE_NAME)]),
        ("manifest edited to list the other engine hash, sig kept", lambda d: _swap_hash(d, other)),
    ]
    # (pack() copies only listed files, so an unlisted extra file can only reach a device in a directory)
    extra = [("extra unlisted file (dir form)", lambda d: (d / "engine" / "evil.so").write_bytes(b"\x7fELF"))]
    refused = raw_tars = 0
    for form in ("dir", "archive"):
        for name, mutate in mutations + (extra if form == "dir" else []):
            d = tmp_path / f"case-{form}-{refused}"
            shutil.copytree(good, d, symlinks=True)
            mutate(d)
            target: Path = d
            if form == "archive":
                try:
                    target = pack(d, tmp_path / f"case-{refused}.edgeq.tar")
                except BundleError:
                    # pack() refuses it (missing / symlinked / resized file); an attacker would not use pack, so
                    # the same tree goes to the store as a raw tar, which the store itself must refuse
                    target = _raw_tar(d, tmp_path / f"case-{refused}-raw.edgeq.tar")
                    raw_tars += 1
            before = tree_snapshot(store.root)
            with pytest.raises(BundleError):
                store.install(target)
                pytest.fail(f"{form}: {name} was installed")
            assert tree_snapshot(store.root) == before, f"{form}: {name} changed the store"
            assert store.active("tiny").version == 1
            store.verify("tiny", 1)
            refused += 1
    print(f"mutated bundles refused by the store: {refused} ({len(mutations)} mutations x 2 forms + {len(extra)}; "
          f"{raw_tars} archives written as raw tars because pack() refuses them)")
    assert refused == 2 * len(mutations) + len(extra)


def test_random_archive_byte_flips(tmp_path, keypair, make_bundle, no_engine_imports):
    """Flips anywhere in the archive: refused, or (padding/unused header bytes) installed byte-identical."""
    pristine = tmp_path / "pristine"
    Store(pristine, trusted_keys=[keypair.public_path], device=ADA).install(make_bundle(1))
    good = make_bundle(2)
    archive = pack(good, tmp_path / "good.edgeq.tar")
    size = archive.stat().st_size
    rng = random.Random(7)
    refused = harmless = 0
    for i in range(40):
        root = tmp_path / f"s{i}"
        shutil.copytree(pristine, root)
        store = Store(root, device=ADA)
        bad = tmp_path / f"flip{i}.edgeq.tar"
        shutil.copyfile(archive, bad)
        _flip(bad, rng.randrange(size), rng.randrange(8))
        before = tree_snapshot(root)
        try:
            v = store.install(bad)
        except BundleError:
            assert tree_snapshot(root) == before
            refused += 1
        else:
            for f in v.manifest.files:
                assert (v.path / f.path).read_bytes() == (good / f.path).read_bytes()
            harmless += 1
        shutil.rmtree(root)
    print(f"random archive flips: {refused} refused, {harmless} harmless (padding) and installed byte-identical")
    assert refused + harmless == 40 and refused > 0


def _trunc(p: Path, n: int) -> None:
    raw = p.read_bytes()
    p.write_bytes(raw[:n] if n >= 0 else raw[:n])


def _symlink_engine(d: Path) -> None:
    real = d.parent / f"{d.name}-outside.engine"
    shutil.copyfile(d / ENGINE, real)
    (d / ENGINE).unlink()
    (d / ENGINE).symlink_to(real)


def _resign(d: Path, key: Path) -> None:
    from edgeq.sdk.bundle.verify import load_signed_manifest
    from edgeq.converters.signing import sign
    from edgeq.sdk.bundle.signing import TrustedKeys

    m = load_signed_manifest((d / MANIFEST_NAME).read_bytes(), None, TrustedKeys(), allow_unsigned=True).manifest
    (d / SIGNATURE_NAME).write_bytes(sign(m.canonical_bytes(), key))


def _swap_hash(d: Path, other: Path) -> None:
    shutil.copyfile(other / ENGINE, d / ENGINE)
    doc = json.loads((d / MANIFEST_NAME).read_text())
    odoc = json.loads((other / MANIFEST_NAME).read_text())
    for f, of in zip(doc["files"], odoc["files"], strict=True):
        if f["path"] == ENGINE:
            f["sha256"], f["size"] = of["sha256"], of["size"]
    (d / MANIFEST_NAME).write_text(json.dumps(doc))


def _raw_tar(src: Path, out: Path) -> Path:
    """A tar of ``src`` as it is (symlinks kept, missing files missing): what a hostile sender ships."""
    import tarfile

    with tarfile.open(out, "w") as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return out
