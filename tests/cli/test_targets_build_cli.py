"""`edgeq targets`, `edgeq targets show`, and `edgeq build` refusals through the CLI (exit codes, one-line errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.cli import main
from edgeq.targets import profile_names


def test_targets_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("jetson-orin", "rtx-ampere", "rtx-ada", "rtx-blackwell", "h100-fp8"):
        assert name in out


def test_targets_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "show", "rtx-ampere"]) == 0
    out = capsys.readouterr().out
    assert "sm86" in out and "no FP8 tensor cores" in out and "int4-awq" in out


def test_targets_show_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "show", "tpu-v5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unknown target 'tpu-v5'; valid targets: {', '.join(profile_names())}; aliases: h100-fp8")


def test_build_refuses_fp8_on_ampere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", "--target", "rtx-ampere", "--precision", "fp8", "--model", "tiny-llama", "--out", str(tmp_path / "b")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: rtx-ampere does not support fp8: sm86 has no FP8 tensor cores; use int8-wo or int4-awq" in err
    assert list(tmp_path.iterdir()) == []


def test_build_unknown_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--target", "rtx-9090", "--out", str(tmp_path / "b")]) == 2
    assert "valid targets:" in capsys.readouterr().err
