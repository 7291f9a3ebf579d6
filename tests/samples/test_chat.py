"""Run samples/chat.py for real: a two-turn conversation, and health events printed on a fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgeq.sdk.store.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _chat(store: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "samples" / "chat.py"), "--store", str(store),
                           "--model", "tiny-llama", "--max-new-tokens", "8"],
                          input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # the tree under test, not an installed one


def test_chat_streams_replies(chat_bundles: dict[int, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(chat_bundles[1])
    p = _chat(store.root, "hello\nwhat is Python?\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("assistant> ") == 2
    assert p.stdout.count(", v1]") == 2
    assert "degraded=None" in p.stderr and "[health]" not in p.stderr
    # the second turn ran only what its cache did not hold (the first turn cached nothing)
    cached = [int(line.split(" cached")[0].rsplit(" ", 1)[1]) for line in p.stdout.splitlines() if " cached, " in line]
    assert cached[0] == 0 and cached[1] > 0, p.stdout


def test_chat_prints_health_events_on_fallback(chat_bundles: dict[int, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(chat_bundles[1])
    store.install(chat_bundles[2])
    onnx = store.root / "models" / "tiny-llama" / "versions" / "2" / "model" / "model.onnx"
    onnx.chmod(0o644)
    onnx.write_bytes(onnx.read_bytes()[:-10])  # v2 corrupted on disk
    p = _chat(store.root, "hello\n")
    assert p.returncode == 0, p.stderr
    assert "[health] refused" in p.stderr and "[health] fallback" in p.stderr
    assert ", v1]" in p.stdout
