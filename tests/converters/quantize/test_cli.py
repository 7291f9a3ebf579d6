"""`edgeq quantize` / `edgeq sensitivity` are thin shells over the API."""

from __future__ import annotations

import json

from edgeq.cli import main


def test_quantize_cli(tmp_path, capsys) -> None:
    out = tmp_path / "q"
    rc = main(["quantize", "--model", "tiny-llama", "--scheme", "int4-awq", "--block-size", "32", "--out", str(out),
               "--set", "n_grid=5", "--keep-fp16", "model.layers.0.mlp.*"])
    assert rc == 0, capsys.readouterr()
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["config"]["block_size"] == 32 and report["config"]["n_grid"] == 5
    assert report["kept_fp16"]["model.layers.0.mlp.down_proj"] == "keep_fp16 glob"
    assert len(report["layers"]) == 11


def test_cli_errors(tmp_path, capsys) -> None:
    assert main(["quantize", "--model", "tiny-llama", "--scheme", "int3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown quantization scheme" in capsys.readouterr().err
    assert main(["quantize", "--model", "tiny-llama", "--scheme", "int4-rtn", "--block-size", "24",
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_sensitivity_cli(tmp_path, capsys) -> None:
    assert main(["sensitivity", "--model", "tiny-llama", "--scheme", "int8", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "sensitivity.json").is_file()


def test_quantize_cli_budget_with_a_rung(tmp_path, capsys) -> None:
    out = tmp_path / "q"
    rc = main(["quantize", "--model", "tiny-llama", "--scheme", "int4-rtn", "--block-size", "32", "--out", str(out),
               "--accuracy-budget", "kl<=0.004", "--upgrade", "int8-wo"])
    text = capsys.readouterr().out
    assert rc == 0, text
    b = json.loads((out / "quantize_report.json").read_text())["accuracy_budget"]
    assert b["ladder"] == ["int4-rtn", "int8-wo", "fp32"] and b["met_in_graph"] is True and b["raised"]
    assert "accuracy budget kl<=0.004: kl " in " ".join(text.split())
    assert main(["quantize", "--model", "tiny-llama", "--scheme", "int4-rtn", "--out", str(tmp_path / "x"),
                 "--upgrade", "int8-wo"]) == 2
    assert "--upgrade needs --accuracy-budget" in capsys.readouterr().err and not (tmp_path / "x").exists()
