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
