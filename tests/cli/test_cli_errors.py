"""The CLI maps every bad input to a one-line error, a non-zero exit, and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EDGEQ = [sys.executable, "-m", "edgeq.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGEQ_DEBUG": "0"}


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(EDGEQ + args, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(("error:", "hint:"))]


def test_help_and_version() -> None:
    assert run(["--help"]).returncode == 0
    proc = run(["version"])
    assert proc.returncode == 0 and proc.stdout.startswith("edgeq ")


@pytest.mark.parametrize(
    "model,code,needle",
    [
        ("no-such-builtin", 2, "model not found"),
        ("./missing-dir", 2, "model directory not found"),
        ("no-such-org/no-such-model", 2, "model not found"),
    ],
)
def test_model_errors(tmp_path: Path, model: str, code: int, needle: str) -> None:
    proc = run(["export", "--model", model, "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    lines = error_lines(proc)
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_corrupt_weights(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    proc = run(["export", "--model", str(bad), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and error_lines(proc)[0].startswith("error: not a GGUF file or truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_unsupported_architecture(tmp_path: Path) -> None:
    import transformers

    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    proc = run(["export", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and "unsupported architecture 'gpt2'" in error_lines(proc)[0]
    assert not (tmp_path / "out").exists()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        EDGEQ + ["export", "--model", "./missing", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env={**ENV, "EDGEQ_DEBUG": "1"}, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _in_private_mount(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private user+mount namespace, so mounts vanish with it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not available: cannot mount a small filesystem")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces not permitted here: {probe.stderr.decode().strip()}")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=300)


def test_disk_full_leaves_nothing(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    cmd = " ".join(EDGEQ)
    proc = _in_private_mount(
        f"mount -t tmpfs -o size=256k tmpfs {mnt} && {cmd} export --model tiny-llama --out {mnt}/out; "
        f"rc=$?; echo LEFT:$(ls -A {mnt} | tr '\\n' ' '); exit $rc"
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "error: no space left on device" in proc.stderr
    assert "LEFT: \n" in proc.stdout or proc.stdout.strip() == "LEFT:"


def test_read_only_output(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    cmd = " ".join(EDGEQ)
    proc = _in_private_mount(
        f"mount -t tmpfs -o ro,size=1m tmpfs {mnt} && {cmd} export --model tiny-llama --out {mnt}/out"
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "error: output location is not writable" in proc.stderr
