"""Accuracy budget parsing and checking."""

from __future__ import annotations

import pytest

from edgeq.converters.quantize import AccuracyBudget
from edgeq.errors import ConfigError


def test_parse_and_check() -> None:
    b = AccuracyBudget.parse("ppl+1%")
    assert (b.metric, b.op, b.value, b.percent) == ("ppl", "+", 1.0, True)
    assert b.met(10.09, 10.0) and not b.met(10.11, 10.0)
    assert AccuracyBudget.parse("ppl+0.5").met(10.4, 10.0)
    c = AccuracyBudget.parse("cosine>=0.995")
    assert c.met(0.996, 1.0) and not c.met(0.99, 1.0)
    assert AccuracyBudget.parse("kl<=0.02").met(0.01, 0.0)
    assert str(b) == "ppl+1%"


@pytest.mark.parametrize("text", ["ppl", "ppl*2", "cosine+1%", "ppl>=3", "acc>=0.9"])
def test_bad_budgets(text: str) -> None:
    with pytest.raises(ConfigError):
        AccuracyBudget.parse(text)


def test_task_mismatch() -> None:
    with pytest.raises(ConfigError):
        AccuracyBudget.parse("cosine>=0.99").check_task("text-generation")


def test_limits_and_reserve() -> None:
    ppl = AccuracyBudget.parse("ppl+2%")
    assert ppl.limit(10.0) == pytest.approx(10.2) and ppl.tightened(10.0, 0.5) == pytest.approx(10.1)
    cos = AccuracyBudget.parse("cosine>=0.99")
    assert cos.tightened(1.0, 0.5) == pytest.approx(0.995) and cos.met(0.991, 1.0) and not cos.met(0.989, 1.0)
    assert AccuracyBudget.parse("kl<=0.02").tightened(0.0, 0.25) == pytest.approx(0.015)


def test_metric_of_a_held_out_check() -> None:
    lm = {"mean_kl": 0.01, "top1_agreement": 0.9, "ppl_candidate": 10.1, "ppl_reference": 10.0}
    assert AccuracyBudget.parse("ppl+1%").metric_of(lm) == (10.1, 10.0)
    assert AccuracyBudget.parse("kl<=0.02").metric_of(lm) == (0.01, 0.0)
    assert AccuracyBudget.parse("top1>=0.8").metric_of(lm) == (0.9, 1.0)
    assert AccuracyBudget.parse("cosine>=0.9").metric_of(lm) is None
