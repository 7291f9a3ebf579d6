"""Real offline models (slow): each scheme on SmolLM2-135M and all-MiniLM-L6-v2 against the FP32 export,
on the evaluation text (never calibrated on). Thresholds are the aims, asserted strictly: a scheme that misses its
aim alone is tested with the accuracy budget and ladder a target profile gives it. BENCHMARKS.md has the numbers.

    pytest -m slow tests/converters/quantize/test_real_models.py
"""

from __future__ import annotations

import pytest

from edgeq.converters import evaluate
from edgeq.converters.quantize import get_config, quantize

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

#: max perplexity increase (%) on 2048 eval tokens (windows of 1024), (scheme, accuracy budget, upgrade rungs):
#: a scheme alone where it meets the aim, the target's recipe (budget + ladder) where only that does
LM_AIMS = {
    ("fp8", "ppl+1%", ()): 1.5,  # the aim for the default FP8 build
    ("int8-wo", None, ()): 0.5,
    ("int4-awq", "ppl+1.5%", ("int8-wo",)): 2.0,  # the jetson-orin / rtx-ampere recipe; 2% is the outer bound
}
#: min mean cosine of pooled embeddings vs FP32, same keys
ENC_AIMS = {
    ("fp8", None, ()): 0.995,
    ("int8-wo", None, ()): 0.995,
    ("int8", "cosine>=0.995", ("int8-wo",)): 0.99,  # the jetson-orin encoder recipe
    ("int4-awq", "cosine>=0.99", ("int8-wo",)): 0.985,
}


def _id(key: tuple) -> str:
    return "-".join(str(k) for k in key if k)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from edgeq.converters.export import export_onnx
    from edgeq.converters.sources import load_model

    loaded = load_model("smollm2-135m")
    root = tmp_path_factory.mktemp("smollm2")
    return loaded, export_onnx(loaded, root / "fp32").out_dir, root


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from edgeq.converters.export import export_onnx
    from edgeq.converters.sources import load_model

    loaded = load_model("minilm-l6")
    root = tmp_path_factory.mktemp("minilm")
    return loaded, export_onnx(loaded, root / "fp32").out_dir, root


@pytest.mark.parametrize("key", sorted(LM_AIMS), ids=_id)
def test_smollm2_ppl(smollm2, key: tuple) -> None:
    loaded, ref, root = smollm2
    scheme, budget, upgrade = key
    res = quantize(loaded, scheme, root / _id(key), accuracy_budget=budget, upgrade=upgrade)
    cmp = evaluate.compare_lm(res.out_dir, ref)
    assert cmp.ppl_increase_pct <= LM_AIMS[key], cmp


def test_smollm2_awq_halves_rtn_increase(smollm2) -> None:
    loaded, ref, root = smollm2
    awq = quantize(loaded, get_config("int4-awq", block_size=128), root / "awq")
    rtn = quantize(loaded, get_config("int4-rtn", block_size=128), root / "rtn")
    inc_awq = evaluate.compare_lm(awq.out_dir, ref).ppl_increase_pct
    inc_rtn = evaluate.compare_lm(rtn.out_dir, ref).ppl_increase_pct
    assert inc_awq <= 0.5 * inc_rtn, (inc_awq, inc_rtn)


@pytest.mark.parametrize("key", sorted(ENC_AIMS), ids=_id)
def test_minilm_cosine(minilm, key: tuple) -> None:
    loaded, ref, root = minilm
    scheme, budget, upgrade = key
    res = quantize(loaded, scheme, root / _id(key), accuracy_budget=budget, upgrade=upgrade)
    cmp = evaluate.compare_embeddings(res.out_dir, ref)
    assert cmp.mean_cosine >= ENC_AIMS[key], cmp
