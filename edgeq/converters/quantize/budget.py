"""Accuracy budgets (``ppl+1%``, ``ppl+0.5``, ``kl<=0.02``, ``cosine>=0.995``, ``top1>=0.9``) and the greedy
search that keeps the most sensitive layers in FP16 until the budget holds on held-out calibration text."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.converters.quantize.simulate import divergence, forward_outputs, nll, simulated
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel
from edgeq.errors import AccuracyBudgetError, ConfigError

_LM_METRICS = ("ppl", "kl", "top1")
_ENC_METRICS = ("cosine",)
_PATTERN = re.compile(r"^\s*(ppl|kl|cosine|top1)\s*(\+|<=|>=)\s*([0-9.eE+-]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class AccuracyBudget:
    """``metric`` compared with ``value``: ``ppl +`` (relative when ``percent``) or ``<=``/``>=`` absolute."""

    metric: str
    op: str
    value: float
    percent: bool = False

    def __post_init__(self) -> None:
        if self.op == "+" and self.metric != "ppl":
            raise ConfigError(f"'+' budgets apply to ppl only, got {self.metric}")
        if self.metric == "ppl" and self.op == ">=":
            raise ConfigError("a perplexity budget must bound it from above (ppl+X% or ppl<=X)")

    @classmethod
    def parse(cls, text: str) -> AccuracyBudget:
        m = _PATTERN.match(text)
        if not m:
            raise ConfigError(f"cannot parse accuracy budget {text!r}",
                              hint="examples: ppl+1%, ppl+0.5, ppl<=20, kl<=0.02, top1>=0.9, cosine>=0.995")
        metric, op, value, pct = m.groups()
        return cls(metric, op, float(value), pct == "%")

    def check_task(self, task: str) -> None:
        ok = _LM_METRICS if task == TEXT_GENERATION else _ENC_METRICS
        if self.metric not in ok:
            raise ConfigError(f"budget metric {self.metric!r} does not apply to {task}; use one of {ok}")

    def met(self, measured: float, baseline: float) -> bool:
        if self.op == "+":
            limit = baseline * (1 + self.value / 100) if self.percent else baseline + self.value
            return measured <= limit
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'%' if self.percent else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": str(self)}


def measure(loaded: LoadedModel, ref: torch.Tensor, ids: torch.Tensor, metric: str) -> float:
    out = forward_outputs(loaded, ids)
    if metric == "ppl":
        return math.exp(nll(out, ids))
    if metric == "kl":
        return divergence(loaded, ref, out)
    if metric == "top1":
        return float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return 1.0 - divergence(loaded, ref, out)  # cosine


def apply_budget(loaded: LoadedModel, plans: dict[str, LinearPlan], order: list[str], budget: AccuracyBudget,
                 holdout: torch.Tensor) -> dict[str, Any]:
    """Smallest k such that keeping the k most sensitive layers (``order``) in FP16 meets ``budget``.

    Bisection over k (the greedy order is fixed by sensitivity); raises AccuracyBudgetError when even
    keeping every layer fails. Returns {"kept": [...], "measured": ..., "baseline": ..., "evaluations": [...]}.
    """
    budget.check_task(loaded.task)
    ref = forward_outputs(loaded, holdout)
    baseline = measure(loaded, ref, holdout, budget.metric)
    evals: list[dict[str, Any]] = []

    def value(k: int) -> float:
        active = {n: p for n, p in plans.items() if n not in set(order[:k])}
        with simulated(loaded.model, active):
            v = measure(loaded, ref, holdout, budget.metric)
        evals.append({"kept": k, budget.metric: v})
        return v

    v0 = value(0)
    if budget.met(v0, baseline):
        return {"kept": [], "measured": v0, "baseline": baseline, "evaluations": evals}
    v_all = value(len(order))
    if not budget.met(v_all, baseline):
        raise AccuracyBudgetError(
            f"accuracy budget {budget} not met even with all {len(order)} layers in FP16 "
            f"({budget.metric} {v_all:.4g}, baseline {baseline:.4g})", hint="loosen the budget")
    lo, hi, best = 0, len(order), v_all
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = value(mid)
        if budget.met(v, baseline):
            hi, best = mid, v
        else:
            lo = mid
    return {"kept": order[:hi], "measured": best, "baseline": baseline, "evaluations": evals}
