"""`edgeq run` / `edgeq embed`: thin shells over Runtime.generate / Runtime.embed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.cli import main


def test_run_streams_and_reports(lm_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--store", str(lm_store), "--model", "tiny-llama", "-n", "6", "--threads", "1",
                 "--no-monitor", "hello"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "tiny-llama v2" in out.err and "tok/s" in out.err


def test_errors_are_one_line(lm_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "--store", str(lm_store), "--model", "tiny-llama", "x"]) == 2
    assert "embed() needs a feature-extraction bundle" in capsys.readouterr().err
    assert main(["run", "--store", str(tmp_path / "nope"), "--model", "m", "hi"]) == 7
    assert "no device store" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
