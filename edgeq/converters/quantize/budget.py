"""Accuracy budgets: ``ppl+1%``, ``ppl+0.5``, ``ppl<=20``, ``kl<=0.02``, ``top1>=0.9``, ``cosine>=0.995``.

Torch-free (target profiles and the CLI parse budgets without loading torch); the search that meets one is
``mixed.py``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.model_info import TEXT_GENERATION

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
    def parse_option(cls, text: str) -> AccuracyBudget | None:
        """``--accuracy-budget``'s value: ``none`` (any case) turns the budget off, anything else is ``parse``d."""
        return None if text.strip().lower() == "none" else cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> AccuracyBudget:
        m = _PATTERN.match(text)
        if not m:
            raise ConfigError(f"cannot parse accuracy budget {text!r}",
                              hint="examples: ppl+1%, ppl+0.5, ppl<=20, kl<=0.02, top1>=0.9, cosine>=0.995")
        metric, op, value, pct = m.groups()
        return cls(metric, op, float(value), pct == "%")

    def applies_to(self, task: str) -> bool:
        return self.metric in (_LM_METRICS if task == TEXT_GENERATION else _ENC_METRICS)

    def check_task(self, task: str) -> None:
        ok = _LM_METRICS if task == TEXT_GENERATION else _ENC_METRICS
        if self.metric not in ok:
            raise ConfigError(f"budget metric {self.metric!r} does not apply to {task}; use one of {ok}")

    def limit(self, baseline: float) -> float:
        """The value the measured metric may reach: ``ppl+X%`` is relative to the reference's ``baseline``."""
        if self.op == "+":
            return baseline * (1 + self.value / 100) if self.percent else baseline + self.value
        return self.value

    def reference(self, baseline: float) -> float:
        """What the unquantized model itself scores: ppl ``baseline``, KL 0, top-1 and cosine 1."""
        return {"ppl": baseline, "kl": 0.0}.get(self.metric, 1.0)

    def excess(self, measured: float, baseline: float) -> float:
        """How far ``measured`` is from the reference, in the direction the budget bounds (>= 0 is worse)."""
        ref = self.reference(baseline)
        return ref - measured if self.op == ">=" else measured - ref

    def tightened(self, baseline: float, reserve: float) -> float:
        """The limit with ``reserve`` (a fraction) of the allowance kept back: the allowance is the distance from
        the reference (``reference``) to ``limit``."""
        ref = self.reference(baseline)
        return ref + (self.limit(baseline) - ref) * (1.0 - reserve)

    def met(self, measured: float, baseline: float) -> bool:
        return measured >= self.limit(baseline) if self.op == ">=" else measured <= self.limit(baseline)

    def metric_of(self, comparison: dict[str, Any]) -> tuple[float, float] | None:
        """(measured, baseline) of this budget's metric in a ``compare_lm``/``compare_embeddings`` record
        (the quantizer's held-out check), or None when the record lacks it."""
        keys = {"ppl": ("ppl_candidate", "ppl_reference"), "kl": ("mean_kl", None),
                "top1": ("top1_agreement", None), "cosine": ("mean_cosine", None)}[self.metric]
        got = comparison.get(keys[0])
        if not isinstance(got, (int, float)):
            return None
        base = comparison.get(keys[1]) if keys[1] else {"kl": 0.0, "top1": 1.0, "cosine": 1.0}[self.metric]
        return float(got), float(base) if isinstance(base, (int, float)) else float("nan")

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'%' if self.percent else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": str(self)}
