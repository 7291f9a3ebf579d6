"""Store behaviours pinned after review: the lock excludes threads sharing one Store, stray files do not
break the store, a refused publish leaves no repository, read-only CLI commands create no store."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeq.errors import UpdateError
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA


def test_lock_excludes_threads_of_one_process(tmp_path: Path) -> None:
    s = Store(tmp_path / "s", device=ADA)
    order: list[str] = []

    def worker(i: int) -> None:
        with s._lock:
            order.append(f"enter{i}")
            time.sleep(0.05)
            with s._lock:  # nesting in the holding thread still works
                pass
            order.append(f"exit{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    pairs = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert len(order) == 6 and all(a[5:] == b[4:] and a.startswith("enter") for a, b in pairs), order


def test_stray_files_do_not_break_the_store(tmp_path: Path, keypair, make_bundle) -> None:  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "s", trusted_keys=[keypair.public_path], device=ADA)
    s.install(make_bundle(1))
    (tmp_path / "s" / "models" / "README").write_text("not a model")
    (tmp_path / "s" / "models" / "tiny" / "derived").mkdir()
    (tmp_path / "s" / "models" / "tiny" / "derived" / "1").write_text("a file where a dir belongs")
    s.recover()
    assert s.models() == ["tiny"]
    s.install(make_bundle(2))
    assert s.active("tiny").version == 2


def test_refused_publish_leaves_no_repository(tmp_path: Path, make_bundle) -> None:  # type: ignore[no-untyped-def]
    from edgeq.converters.publish import publish

    unsigned = make_bundle(1, sign=False)
    with pytest.raises(UpdateError, match="unsigned"):
        publish(unsigned, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("cmd", [["status"], ["list"], ["rollback", "tiny"], ["remove", "tiny"]])
def test_read_only_commands_do_not_create_a_store(tmp_path: Path, cmd: list[str]) -> None:
    missing = tmp_path / "typo-store"
    proc = subprocess.run([sys.executable, "-m", "edgeq.cli", *cmd, "--store", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "error: no device store at" in proc.stderr, proc.stderr
    assert not missing.exists()
