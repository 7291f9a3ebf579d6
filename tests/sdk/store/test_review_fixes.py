"""Store behaviours pinned after review: stray files do not break the store, a refused publish leaves no
repository, neither read-only CLI commands nor ``Runtime.open`` create a store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.errors import NotInstalledError, UpdateError
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA, tree_snapshot


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


@pytest.mark.parametrize("content", ["empty", "unrelated files", "a models/ dir"])
def test_runtime_open_refuses_a_directory_that_is_not_a_store(tmp_path: Path, content: str) -> None:
    from edgeq.sdk.runtime.runtime import Runtime

    d = tmp_path / "not-a-store"
    d.mkdir()
    if content == "unrelated files":
        (d / "notes.txt").write_text("my files")
    elif content == "a models/ dir":
        (d / "models" / "tiny").mkdir(parents=True)
    before = tree_snapshot(d)
    with pytest.raises(NotInstalledError, match="no device store at"):
        Runtime.open(d, "tiny")
    assert tree_snapshot(d) == before  # no store.json, keys/, staging/ or .lock appeared
