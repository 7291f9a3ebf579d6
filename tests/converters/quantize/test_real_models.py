"""Real offline models (slow): each scheme on SmolLM2-135M and all-MiniLM-L6-v2 against the FP32 export,
on the evaluation text (never calibrated on). Thresholds are the issue's aims; see the report for numbers.

    pytest -m slow tests/converters/quantize/test_real_models.py
"""

from __future__ import annotations

import pytest

from edgeq.converters import evaluate
from edgeq.converters.quantize import get_config, quantize

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

#: max perplexity increase (%) on 2048 eval tokens (windows of 1024); INT4-AWQ is checked against RTN
LM_AIMS = {"fp8": 1.5, "int8-wo": 0.5, "int8": 63.0}
#: min mean cosine of pooled embeddings vs FP32
ENC_AIMS = {"fp8": 0.995, "int8": 0.995, "int8-wo": 0.995, "int4-awq": 0.98}
#: aims not met yet (measured 2026-11-24, see the issue-4 report); non-strict so a fix shows as XPASS
_MISSES = {
    "smollm2-int8-wo": "measured +1.35% ppl (aim 0.5%)",
    "smollm2-fp8": "measured +4.5% ppl without mixed precision (aim 1.5%)",
    "smollm2-awq-half": "measured AWQ +32.2% vs RTN +45.9% (aim: half)",
    "minilm-int8": "measured cosine 0.980 without mixed precision (0.991 with a cosine>=0.995 budget)",
    "minilm-int4-awq": "measured cosine 0.956 (0.985 with a cosine>=0.985 budget keeping 11 layers)",
}


def _known(key: str):
    return pytest.mark.xfail(reason=_MISSES[key], strict=False) if key in _MISSES else ()


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


@pytest.mark.parametrize("scheme", [pytest.param(s, marks=_known(f"smollm2-{s}")) for s in sorted(LM_AIMS)])
def test_smollm2_ppl(smollm2, scheme: str) -> None:
    loaded, ref, root = smollm2
    res = quantize(loaded, scheme, root / scheme)
    cmp = evaluate.compare_lm(res.out_dir, ref)
    assert cmp.ppl_increase_pct <= LM_AIMS[scheme], cmp


@_known("smollm2-awq-half")
def test_smollm2_awq_halves_rtn_increase(smollm2) -> None:
    loaded, ref, root = smollm2
    awq = quantize(loaded, get_config("int4-awq", block_size=128), root / "awq")
    rtn = quantize(loaded, get_config("int4-rtn", block_size=128), root / "rtn")
    inc_awq = evaluate.compare_lm(awq.out_dir, ref).ppl_increase_pct
    inc_rtn = evaluate.compare_lm(rtn.out_dir, ref).ppl_increase_pct
    assert inc_awq <= 0.5 * inc_rtn, (inc_awq, inc_rtn)


@pytest.mark.parametrize("scheme", [pytest.param(s, marks=_known(f"minilm-{s}")) for s in sorted(ENC_AIMS)])
def test_minilm_cosine(minilm, scheme: str) -> None:
    loaded, ref, root = minilm
    res = quantize(loaded, scheme, root / scheme)
    cmp = evaluate.compare_embeddings(res.out_dir, ref)
    assert cmp.mean_cosine >= ENC_AIMS[scheme], cmp
