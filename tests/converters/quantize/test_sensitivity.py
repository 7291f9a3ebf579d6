"""Sensitivity table + chart, and the accuracy budget keeping the most sensitive layers in FP16."""

from __future__ import annotations

import json

from edgeq.converters.quantize import get_config, quantize
from edgeq.converters.quantize.sensitivity_run import run_sensitivity


def test_budget_keeps_sensitive_layers(tiny_llama, tmp_path) -> None:
    cfg = get_config("int4-rtn", block_size=32)
    free = quantize(tiny_llama, cfg, tmp_path / "free")
    kl_free = free.report["validation"]["mean_kl"]
    res = quantize(tiny_llama, cfg, tmp_path / "budget", accuracy_budget="kl<=0.004", report_dir=tmp_path / "rep")
    b = res.report["accuracy_budget"]
    rows = res.report["sensitivity"]
    assert b["baseline"] == 0.0 or b["baseline"] < 1e-9
    assert b["kept"], "int4 on the tiny model must exceed kl 0.004 without keeping any layer"
    assert b["measured"] <= 0.004
    # kept = a prefix of the sensitivity order, all left out of the quantized layers, with a size cost
    assert b["kept"] == [r["layer"] for r in rows[: len(b["kept"])]]
    assert not set(b["kept"]) & set(res.report["layers"])
    assert all(res.report["kept_fp16"][k].startswith("accuracy budget") for k in b["kept"])
    assert b["size_cost_bytes"] > 0
    # the held-out ONNX check agrees that fewer quantized layers means less divergence
    assert res.report["validation"]["mean_kl"] < kl_free
    assert (tmp_path / "rep" / "sensitivity.png").stat().st_size > 1000
    table = json.loads((tmp_path / "rep" / "sensitivity.json").read_text())
    assert len(table["layers"]) == 14 and table["layers"][0]["score"] >= table["layers"][-1]["score"]


def test_sensitivity_command_api(tiny_qwen3, tmp_path) -> None:
    rows, files = run_sensitivity(tiny_qwen3, "fp8", tmp_path / "s")
    assert len(rows) == 14 and all(r["metric"] == "kl" and r["score"] >= 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: r["score"], reverse=True)
    assert files["png"].endswith("sensitivity.png")
