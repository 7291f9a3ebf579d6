"""`edgeq serve` as a user runs it: a subprocess on a loopback port, answering the OpenAI client, stopped by SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeq.cli import main
from tests.serve.conftest import LM, client

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_answers_and_stops_on_sigterm(lm_bundle: Path) -> None:
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "edgeq.cli", "serve", "--store", str(lm_bundle), "--port", str(port),
                          "--no-monitor", "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        c = client(f"http://127.0.0.1:{port}", timeout=5)
        until = time.monotonic() + 60
        while True:
            try:
                models = c.models.list()
                break
            except Exception:
                if p.poll() is not None or time.monotonic() > until:
                    raise AssertionError(f"edgeq serve did not come up: {p.communicate(timeout=5)}") from None
                time.sleep(0.1)
        assert [m.id for m in models.data] == [LM]
        assert c.completions.create(model=LM, prompt="Python", max_tokens=3).usage.completion_tokens >= 1
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"serving {LM} v1 on http://127.0.0.1:{port}/v1" in err


def test_serve_command_refuses_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--store", str(tmp_path / "nope")]) == 7
    assert "no device store" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
