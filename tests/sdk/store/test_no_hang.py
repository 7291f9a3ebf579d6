"""Nothing a bundle holds can hang the device: FIFOs where files belong are refused, never waited on.

Each operation runs in a thread with a deadline. Were it to block in ``open()`` of a FIFO, the test
opens the FIFO for writing itself, which releases the stuck reader, and then fails: the test cannot hang.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeq.errors import BundleError, IntegrityError
from edgeq.sdk.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edgeq.sdk.store.store import Store
from edgeq.sdk.store.versions import BundleDirVersion
from tests.sdk.store.conftest import ADA, ENGINE, tree_snapshot

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is POSIX-only")

DEADLINE_S = 20.0  # a refusal takes milliseconds; this only bounds a regression


def _bounded(fn: Callable[[], Any], fifo: Path) -> Any:
    """``fn()``'s result, or the exception it raised, within DEADLINE_S; fails the test if it blocks."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(DEADLINE_S)
    if t.is_alive():
        try:  # a writer that comes and goes releases a reader blocked in open() (it then reads EOF)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        t.join(DEADLINE_S)
        pytest.fail(f"blocked on the FIFO {fifo.name} for {DEADLINE_S:.0f} s")
    if "error" in box:
        return box["error"]
    return box["value"]


def _fifo_in_place_of(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("rel", [MANIFEST_NAME, SIGNATURE_NAME, ENGINE, "tokenizer/t0.json"])
def test_fifo_in_a_bundle_directory_is_refused_and_the_lock_released(tmp_path, keypair, make_bundle, rel):
    store = Store(tmp_path / "store", trusted_keys=[keypair.public_path], device=ADA, lock_timeout=2.0)
    store.install(make_bundle(1))
    bundle = make_bundle(2)
    fifo = _fifo_in_place_of(bundle / rel)
    before = tree_snapshot(store.root)
    err = _bounded(lambda: store.install(bundle), fifo)
    assert isinstance(err, BundleError) and "FIFO" in str(err), err
    assert tree_snapshot(store.root) == before
    # the lock was released: another process's store change goes through at once
    assert Store(store.root, device=ADA, lock_timeout=2.0).install(make_bundle(3)).version == 3


def test_fifo_given_as_the_archive_is_refused(tmp_path, keypair):
    store = Store(tmp_path / "store", trusted_keys=[keypair.public_path], device=ADA)
    fifo = _fifo_in_place_of(tmp_path / "b.edgeq.tar")
    err = _bounded(lambda: store.install(fifo), fifo)
    assert isinstance(err, BundleError), err


def test_runtime_reads_of_a_bundle_directory_refuse_fifos(make_bundle):
    bundle = make_bundle(1)
    version = BundleDirVersion(bundle)
    fifo = _fifo_in_place_of(bundle / "tokenizer/t0.json")  # the runtime reads tokenizer/health/model_info so
    assert isinstance(_bounded(lambda: version.read("tokenizer/t0.json"), fifo), IntegrityError)
    assert isinstance(_bounded(lambda: version.path("tokenizer/t0.json"), fifo), IntegrityError)
    fifo = _fifo_in_place_of(bundle / MANIFEST_NAME)
    assert isinstance(_bounded(lambda: BundleDirVersion(bundle), fifo), BundleError)


def test_store_reads_refuse_fifos(tmp_path, keypair, make_bundle):
    """A FIFO planted inside the store (installed or derived file) cannot hang the runtime's reads either."""
    store = Store(tmp_path / "store", trusted_keys=[keypair.public_path], device=ADA)
    store.install(make_bundle(1))
    v2 = store.install(make_bundle(2))
    store.put_derived("tiny", 2, "built.engine", b"E" * 100)
    fifo = _fifo_in_place_of(v2.path / ENGINE)
    assert isinstance(_bounded(lambda: store.read_verified("tiny", 2, ENGINE), fifo), IntegrityError)
    assert isinstance(_bounded(lambda: store.verified_path("tiny", 2, ENGINE), fifo), IntegrityError)
    store.rollback("tiny")
    assert isinstance(_bounded(lambda: store.activate("tiny", 2), fifo), IntegrityError)
    derived = _fifo_in_place_of(v2.path.parent.parent / "derived" / "2" / "built.engine")
    assert _bounded(lambda: store.read_derived("tiny", 2, "built.engine"), derived) is None
