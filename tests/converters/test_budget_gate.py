"""The quality gate CI runs: the default ``edgeq build`` of SmolLM2-135M for ``rtx-ada`` (FP8 + FP16) and for
``jetson-orin`` (INT4-AWQ + INT8 + FP16) meets its target's accuracy budget, asserted strictly, on a short text
the build never saw (the first 1024 tokens of ``eval.txt``; the budget was fitted on held-out calibration text).

Slow, not heavy: ``.ci/run`` runs it after the default suite (minutes per build on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.converters import evaluate
from edgeq.converters.build import build
from edgeq.converters.quantize.budget import AccuracyBudget
from edgeq.sdk.bundle.manifest import Manifest

pytestmark = pytest.mark.slow

SHORT_TEXT_TOKENS = 1024


@pytest.fixture(scope="module")
def fp32_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeq.converters.export import export_onnx
    from edgeq.converters.sources import load_model

    return export_onnx(load_model("smollm2-135m"), tmp_path_factory.mktemp("fp32") / "ref").out_dir


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("target, precision, budget_text", [
    ("rtx-ada", "fp8", "ppl+1%"),
    ("jetson-orin", "int4-awq", "ppl+1.5%"),
])
def test_default_build_meets_its_budget_on_unseen_text(tmp_path: Path, fp32_reference: Path, target: str,
                                                      precision: str, budget_text: str) -> None:
    result = build("smollm2-135m", target, out=tmp_path / "b")
    m = Manifest.load(tmp_path / "b")
    record = m.build["accuracy_budget"]
    assert result.precision == m.precision == precision and record["budget"]["text"] == budget_text
    assert record["met_in_graph"] is True and record["graph_check"] == "onnxruntime cpu"
    ids = evaluate.tokenize(fp32_reference, evaluate.eval_text())
    cmp = evaluate.compare_lm(tmp_path / "b" / "model", fp32_reference, ids=ids, num_tokens=SHORT_TEXT_TOKENS)
    budget = AccuracyBudget.parse(budget_text)
    print(f"{target}: eval ppl {cmp.ppl_candidate:.3f} vs FP32 {cmp.ppl_reference:.3f} ({cmp.ppl_increase_pct:+.2f}%), "
          f"budget {budget_text}; {record['weight_fraction']} {record['effective_bits']} bits/weight")
    assert budget.met(cmp.ppl_candidate, cmp.ppl_reference), cmp
