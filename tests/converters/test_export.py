"""ONNX export: optimum's names and dynamic axes, validation against PyTorch, nothing left on failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeq.converters import validate as validate_mod
from edgeq.converters.export import MODEL_INFO, export_onnx
from edgeq.errors import OutputExistsError, ValidationError


@pytest.mark.parametrize("fixture", ["tiny_llama_onnx", "tiny_qwen3_onnx"])
def test_lm_export_names_and_report(fixture: str, request: pytest.FixtureRequest) -> None:
    out: Path = request.getfixturevalue(fixture)
    model = onnx.load(out / "model.onnx", load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert {"past_key_values.0.key", "past_key_values.1.value"} <= set(inputs)
    assert outputs[0] == "logits" and {"present.0.key", "present.1.value"} <= set(outputs)
    # dynamic batch / sequence / past axes
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert all(isinstance(d, str) for d in dims["input_ids"])
    assert isinstance(dims["past_key_values.0.key"][2], str)
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and len(report["diffs"]) == len(validate_mod.LM_CASES) * len(outputs)
    assert {d["case"] for d in report["diffs"]} >= {"b1_new1_past8", "b2_new5_past7", "b1_new8_past0"}
    info = json.loads((out / MODEL_INFO).read_text())
    assert info["task"] == "text-generation" and info["num_layers"] == 2 and info["num_key_value_heads"] == 2
    for f in ("tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (out / f).is_file()


def test_encoder_export(minilm_onnx: Path) -> None:
    model = onnx.load(minilm_onnx / "model.onnx", load_external_data=False)
    assert [o.name for o in model.graph.output][0] == "last_hidden_state"
    report = json.loads((minilm_onnx / "validation.json").read_text())
    assert report["passed"] and report["task"] == "feature-extraction"
    info = json.loads((minilm_onnx / MODEL_INFO).read_text())
    assert info["pooling"] == "mean" and info["normalize"] is True


def test_validation_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tolerance the export cannot meet is an error, and the output directory never appears."""
    monkeypatch.setitem(validate_mod.TOLERANCES, "text-generation", {"atol": 0.0, "rtol": 0.0})
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match="disagrees with PyTorch"):
        export_onnx("tiny-llama", out)
    assert list(tmp_path.iterdir()) == []


def test_validation_can_be_skipped_and_says_so(tmp_path: Path) -> None:
    res = export_onnx("tiny-llama", tmp_path / "out", validate=False)
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["passed"] is False and report["skipped_reason"] == "validation disabled by caller"
    assert not res.report.passed and res.onnx_path.is_file()


def test_compare_catches_nan() -> None:
    report = validate_mod.ValidationReport(task="text-generation", atol=1.0, rtol=1.0)
    validate_mod.compare(report, "c", "logits", np.zeros(4), np.array([0.0, np.nan, 0.0, 0.0]))
    assert not report.passed


def test_existing_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        export_onnx("tiny-llama", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_whole(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    export_onnx("tiny-qwen3", tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "stale.txt").exists() and (tmp_path / "out" / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "minilm-l6"])
def test_real_model_export(name: str, tmp_path: Path) -> None:
    res = export_onnx(name, tmp_path / name)
    assert res.report.passed, res.report.summary()
    assert (tmp_path / name / "validation.json").is_file()
