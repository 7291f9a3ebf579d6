"""The benchmark harness: report generation from result files, CPI arithmetic, child peak-RSS, `edgeq bench`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.common import Result, run_child, time_median
from edgeq.converters.bench import BenchConfig, BenchResult, cost_per_inference
from edgeq.errors import ConfigError


def _synthetic(results: Path) -> None:
    res = Result("quality", quick=True)
    res.records.append({"label": "fp32", "ppl": 19.04})
    res.table("SmolLM2 quality", ["scheme", "ppl", "Δppl %", "note"],
              [["fp32", 19.04, 0.0, None], ["int4|awq", 20.5, 7.67, "a|b"], ["broken", float("nan"), None, "x"]],
              notes="synthetic")
    res.chart("q.png", "ppl", "Δppl %", ["fp32", "int4"], {"Δppl %": [0.0, 7.67]}, hline=1.0, hline_label="aim")
    res.skip("ModelOpt", "ERROR: Cannot install nvidia-modelopt because onnx==1.23.2 conflicts")
    res.write(results)
    (results / "speed.json").write_text(json.dumps({"name": "speed", "machine": {"date": "d"}, "tables": [
        {"title": "Speed", "columns": ["engine", "tok/s"], "rows": [["ort", 27.4]], "notes": ""}], "records": []}))
    (results / "junk.json").write_text(json.dumps({"not": "a result"}))


def test_report_renders_tables_charts_and_not_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _synthetic(results)
    out = tmp_path / "BENCHMARKS.md"
    text = report.render(results, out)
    assert out.read_text() == text
    assert "| scheme | ppl | Δppl % | note |" in text
    assert "| int4\\|awq | 20.5 | 7.67 | a\\|b |" in text  # pipes escaped so the table stays a table
    assert "| broken | NaN | — | x |" in text  # NaN and missing values are visible, never blank
    assert "ERROR: Cannot install nvidia-modelopt because onnx==1.23.2 conflicts" in text
    assert "quick mode" in text and "Run " in text  # machine/date line and the quick-mode warning
    assert text.index("## Quantization quality") < text.index("## Speed on CPU")  # section order
    assert (results / "q.png").stat().st_size > 1000
    assert "![ppl](results/q.png)" in text
    assert "junk" not in text


def test_report_with_no_results(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    assert "No results yet" in report.render(tmp_path / "r", tmp_path / "B.md", charts=False)


def test_cpi_arithmetic() -> None:
    # CPI = hourly cost × time / requests
    assert cost_per_inference(3.6, 10.0) == pytest.approx(0.01)
    assert cost_per_inference(3.6, 10.0, requests=10) == pytest.approx(0.001)
    assert cost_per_inference(0.0, 1.0) == 0.0
    for bad in ((-1.0, 1.0, 1), (1.0, 0.0, 1), (1.0, 1.0, 0)):
        with pytest.raises(ConfigError):
            cost_per_inference(*bad)
    r = BenchResult(model="m", task="text-generation", target="cpu", backend="b", measured_on="b",
                    config=BenchConfig(new_tokens=100), seconds_per_request=2.0, throughput={}, prices={"vm": 1.8})
    row = r.cpi()["vm"]
    assert row["usd_per_request"] == pytest.approx(0.001)
    assert row["requests_per_hour"] == pytest.approx(1800.0)
    assert row["usd_per_million_units"] == pytest.approx(0.001 / 100 * 1e6)
    with pytest.raises(ConfigError):
        BenchConfig(new_tokens=0)


def test_timer_and_child_peak_rss() -> None:
    calls = []
    t = time_median(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(t.samples) == 4 and t.median >= 0
    run = run_child([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(0.5)"])
    assert run.ok and run.peak_rss_bytes >= 200 * 2**20
    bad = run_child([sys.executable, "-c", "raise SystemExit('boom: exact text')"])
    assert not bad.ok and "boom: exact text" in bad.error_text()


def test_edgeq_bench_cli_on_tiny_model(tiny_llama_onnx: Path, tmp_path: Path) -> None:
    from edgeq.cli import main

    out = tmp_path / "cpi.json"
    rc = main(["bench", "--model", str(tiny_llama_onnx), "--hourly-price", "vm=3.6", "--prompt-tokens", "8",
               "--new-tokens", "4", "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["throughput"]["decode_tok_s"] > 0 and doc["throughput"]["prefill_tok_s"] > 0
    assert doc["cpi"]["vm"]["usd_per_request"] == pytest.approx(3.6 * doc["seconds_per_request"] / 3600)
    assert math.isfinite(doc["cpi"]["vm"]["usd_per_million_units"])


def test_edgeq_bench_rejects_non_model_dir(tmp_path: Path) -> None:
    from edgeq.cli import main

    assert main(["bench", "--model", str(tmp_path)]) != 0
    assert main(["bench", "--model", str(tmp_path), "--hourly-price", "abc"]) != 0
