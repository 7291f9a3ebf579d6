"""Mixed precision under an accuracy budget: start every linear at the target's fastest precision and raise
the fewest, most sensitive groups up a ladder (e.g. INT4 -> INT8 -> FP16) until the budget holds.

1. **Scores** per linear and rung, from ``fisher.py`` (LMs: one forward + backward per sequence) or
   ``sensitivity.layer_sensitivity`` (encoders).
2. **Order**: a greedy multiple-choice knapsack. Linears that read one input (q/k/v, gate/up) and a MoE
   layer's experts form a group that takes one rung. Each step takes the move (group, higher rung) with
   the largest score saved per extra byte; the moves form one sequence, cheapest accuracy first.
3. **Search** for the shortest prefix of that sequence whose measured metric (the torch simulation of the
   graph on held-out calibration text) meets the budget with ``reserve`` of its allowance kept back, since
   the graph computes in the target's dtype: a line through the measurements against the score still
   quantized predicts the prefix, which is measured and the line refit (``BudgetSearch.fit``). The quantizer
   then checks the emitted graph in ONNX Runtime and, where it misses, takes a longer prefix (``next_k``).

If even every group at the top rung (or as high as the memory cap allows) misses, AccuracyBudgetError
carries the culprit table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from edgeq.converters.quantize.budget import AccuracyBudget
from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.converters.quantize.simulate import divergence, forward_outputs, nll, simulated
from edgeq.converters.sources import LoadedModel
from edgeq.errors import AccuracyBudgetError

#: the rung above every quantized one: the linear stays in the compute dtype
UNQUANTIZED = "fp16"
#: fraction of the budget's allowance the search keeps back for the graph's own arithmetic (FP16 compute)
DEFAULT_RESERVE = 0.15


@dataclass(frozen=True)
class Rung:
    """One precision a linear may take: its plans (None: unquantized) and its stored bits per weight."""

    label: str
    plans: dict[str, LinearPlan] | None
    bits: float


@dataclass(frozen=True)
class Move:
    group: int
    to: int  # rung index
    gain: float  # score removed
    cost: int  # extra bytes


def measure(loaded: LoadedModel, ref: torch.Tensor, ids: torch.Tensor, metric: str) -> float:
    """The budget's metric of the model as it computes now, against the FP reference outputs ``ref``."""
    out = forward_outputs(loaded, ids)
    if metric == "ppl":
        return math.exp(nll(out, ids))
    if metric == "kl":
        return divergence(loaded, ref, out)
    if metric == "top1":
        return float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return 1.0 - divergence(loaded, ref, out)  # cosine


def order_moves(groups: list[list[str]], rungs: list[Rung], scores: dict[str, dict[str, float]],
                numel: dict[str, int], max_extra_bytes: int | None = None) -> list[Move]:
    """The greedy sequence of upgrades (see the module doc), ending with every group at the top rung (or where
    ``max_extra_bytes`` stops it). ``scores[label][linear]``; the unquantized rung scores 0."""
    # per group and rung, once: a MoE layer's group holds hundreds of linears
    table = [[0.0 if r.plans is None else sum(scores[r.label][n] for n in grp) for r in rungs] for grp in groups]
    weights = [sum(numel[n] for n in grp) for grp in groups]

    def score(g: int, r: int) -> float:
        return table[g][r]

    def size(g: int, r: int) -> float:
        return weights[g] * rungs[r].bits / 8

    at = [0] * len(groups)
    moves: list[Move] = []
    spent = 0
    top = len(rungs) - 1
    while True:
        best: tuple[float, int, int] | None = None
        for g, r in enumerate(at):
            for j in range(r + 1, len(rungs)):
                gain, cost = score(g, r) - score(g, j), max(1.0, size(g, j) - size(g, r))
                if gain > 0 and (best is None or gain / cost > best[0]):
                    best = (gain / cost, g, j)
        if best is None:
            break
        _, g, j = best
        moves.append(Move(g, j, score(g, at[g]) - score(g, j), int(size(g, j) - size(g, at[g]))))
        at[g] = j
    # what gains nothing by its score still goes up last, so that the sequence's end is the top of the ladder
    for g in sorted(range(len(groups)), key=lambda g: -score(g, at[g])):
        if at[g] < top:
            moves.append(Move(g, top, score(g, at[g]), int(size(g, top) - size(g, at[g]))))
    if max_extra_bytes is None:
        return moves
    kept: list[Move] = []
    for m in moves:
        if spent + m.cost > max_extra_bytes:
            break
        spent += m.cost
        kept.append(m)
    return kept


@dataclass
class BudgetSearch:
    """State of one budget fit: the ladder, the move sequence and every measurement taken."""

    loaded: LoadedModel
    rungs: list[Rung]
    groups: list[list[str]]
    moves: list[Move]
    budget: AccuracyBudget
    holdout: torch.Tensor
    reserve: float = DEFAULT_RESERVE
    start_score: float = 0.0  # the summed score of every linear at the base rung
    probes: int = 4  # measurements the search adds to the two ends
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ref = forward_outputs(self.loaded, self.holdout)
        self.baseline = measure(self.loaded, self._ref, self.holdout, self.budget.metric)
        self.aim = self.budget.tightened(self.baseline, self.reserve)
        self._values: dict[int, float] = {}
        self._remaining: list[float] | None = None

    @property
    def capped(self) -> bool:
        """Whether the memory cap cut the sequence before the top of the ladder: uncut, it ends with every group
        there (``order_moves``)."""
        top = len(self.rungs) - 1
        return any(r != top for r in self.assignment(len(self.moves)).values())

    def assignment(self, k: int) -> dict[str, int]:
        """Linear -> rung index after the first ``k`` moves."""
        at = dict.fromkeys((n for g in self.groups for n in g), 0)
        for m in self.moves[:k]:
            for n in self.groups[m.group]:
                at[n] = m.to
        return at

    def plans(self, k: int) -> dict[str, LinearPlan]:
        """The plans of every still-quantized linear after ``k`` moves."""
        out = {}
        for n, r in self.assignment(k).items():
            plans = self.rungs[r].plans
            if plans is not None:
                out[n] = plans[n]
        return out

    def value(self, k: int) -> float:
        if k not in self._values:
            with simulated(self.loaded.model, self.plans(k)):
                v = measure(self.loaded, self._ref, self.holdout, self.budget.metric)
            self._values[k] = v
            self.evaluations.append({"moves": k, self.budget.metric: v})
        return self._values[k]

    def remaining(self, k: int) -> float:
        """The score still quantized after ``k`` moves (the Fisher estimate of the loss left): decreasing in k."""
        if self._remaining is None:
            rem = [self.start_score]
            for m in self.moves:
                rem.append(rem[-1] - m.gain)
            self._remaining = rem
        return self._remaining[k]

    def fit(self) -> int:
        """The fewest moves whose simulated metric meets the tightened budget; AccuracyBudgetError if none.

        The measured metric is not monotone in the moves on a short held-out text (errors partly cancel), so a
        bisection on it wanders. The search fits ``excess(k) ≈ a + c · remaining(k)`` (the scores' prediction,
        smooth and monotone) through every measurement, takes the smallest k the line allows, measures it, and
        refits, until the k it asks for is already measured (a few probes). It returns the smallest measured k
        that meets the aim (the longest prefix always does)."""
        last = len(self.moves)
        if self._meets_aim(0):
            return 0
        if not self._meets_aim(last):
            raise AccuracyBudgetError(
                f"accuracy budget {self.budget} not met by any allowed mix: with "
                f"{'the memory budget spent' if self.capped else 'every layer at ' + self.rungs[-1].label} "
                f"{self.budget.metric} is {self.value(last):.4g} (reference {self.baseline:.4g}, limit "
                f"{self.budget.limit(self.baseline):.4g})",
                hint="loosen --accuracy-budget, allow a wider precision, or pick a larger memory variant")
        aim = self.budget.excess(self.aim, self.baseline)
        k = last
        for _ in range(self.probes):
            k = self._predicted(aim)
            if k in self._values:
                break
            self.value(k)
        return min(j for j in self._values if self._meets_aim(j))

    def _predicted(self, aim: float) -> int:
        """Smallest k whose least-squares line through the measurements predicts an excess within ``aim``."""
        pts = [(self.remaining(j), self.budget.excess(v, self.baseline)) for j, v in self._values.items()]
        n = len(pts)
        mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        c = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else 0.0
        a = my - c * mx
        last = len(self.moves)
        if c <= 0:  # the scores predict nothing here: halve the interval between the best failing and passing k
            lo = max((j for j in self._values if not self._meets_aim(j)), default=0)
            hi = min((j for j in self._values if j > lo and self._meets_aim(j)), default=last)
            return (lo + hi + 1) // 2
        lo, hi = 0, last  # remaining() decreases in k: the first k with a + c * remaining(k) <= aim
        while lo < hi:
            mid = (lo + hi) // 2
            if a + c * self.remaining(mid) <= aim:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _meets_aim(self, k: int) -> bool:
        v = self.value(k)
        return v >= self.aim if self.budget.op == ">=" else v <= self.aim

    def next_k(self, k: int) -> int | None:
        """A longer prefix to try when the emitted graph missed the budget at ``k`` (None: none is left)."""
        last = len(self.moves)
        if k >= last:
            return None
        return min(last, k + max(1, math.ceil((last - k) / 4)))

    def summary(self, k: int, numel: dict[str, int], scores: dict[str, dict[str, float]]) -> dict[str, Any]:
        """What the report and the manifest record of the fit at ``k`` moves."""
        at = self.assignment(k)
        total = sum(numel.values()) or 1
        by_rung: dict[str, int] = {}
        for n, r in at.items():
            by_rung[self.rungs[r].label] = by_rung.get(self.rungs[r].label, 0) + numel[n]
        base = self.rungs[0].label
        raised = {n: {"precision": self.rungs[r].label, "score": round(scores[base][n], 6)}
                  for n, r in sorted(at.items()) if r}
        return {
            "budget": self.budget.to_dict(), "metric": self.budget.metric, "baseline": self.baseline,
            "limit": self.budget.limit(self.baseline), "searched_to": self.aim, "reserve": self.reserve,
            "measured": self.value(k), "met": self.budget.met(self.value(k), self.baseline),
            "ladder": [r.label for r in self.rungs], "moves": k, "moves_available": len(self.moves),
            "memory_capped": self.capped, "groups": len(self.groups),
            "raised": raised, "kept": sorted(n for n, r in at.items() if self.rungs[r].plans is None),
            "weight_fraction": {lbl: round(v / total, 4) for lbl, v in by_rung.items()},
            "effective_bits": round(sum(numel[n] * self.rungs[r].bits for n, r in at.items()) / total, 3),
            "weight_bytes": int(sum(numel[n] * self.rungs[r].bits / 8 for n, r in at.items())),
            "evaluations": self.evaluations,
        }


# -- from a scheme's plans to a search ----------------------------------------------------------------
#: the unquantized rung per compute dtype (``edgeq.sdk.bundle.flavours.COMPUTE_DTYPES``): its label and bits
_DTYPE_LABEL = {"float16": "fp16", "float32": "fp32"}
_DTYPE_BITS = {"float16": 16, "float32": 32}


@dataclass
class Fit:
    """A fitted budget: the search, the moves taken, and the scores it ranked by."""

    search: BudgetSearch
    k: int
    scores: dict[str, dict[str, float]]
    numel: dict[str, int]
    method: str
    seconds: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The per-layer culprit table at the base rung, most sensitive first (``write_sensitivity``'s rows)."""
        base = self.search.rungs[0].label
        return score_rows(self.scores[base], self.method, base)

    def summary(self) -> dict[str, Any]:
        return {**self.search.summary(self.k, self.numel, self.scores), "scorer": self.method, "seconds": self.seconds}


def score_rows(scores: dict[str, float], method: str, scheme: str) -> list[dict[str, Any]]:
    rows = [{"layer": n, "score": v, "metric": method, "scheme": scheme} for n, v in scores.items()]
    return sorted(rows, key=lambda r: r["score"], reverse=True)


def sensitivity_rows(loaded: LoadedModel, scheme: str, plans: dict[str, LinearPlan], ids: torch.Tensor) -> list[dict[str, Any]]:
    """The culprit table of one scheme's plans without a budget (``quantize(report_dir=...)``)."""
    scores, _groups, method = rung_scores(loaded, [Rung(scheme, plans, 0.0)], ids)
    return score_rows(scores[scheme], method, scheme)


def rung_scores(loaded: LoadedModel, rungs: list[Rung], ids: torch.Tensor) -> tuple[dict[str, dict[str, float]], list[list[str]], str]:
    """(scores per quantized rung, groups, method): Fisher for LMs, one-layer-at-a-time output error for encoders."""
    from edgeq.converters.quantize.fisher import fisher_scores, record_input_sharing
    from edgeq.converters.quantize.sensitivity import layer_sensitivity
    from edgeq.converters.sources import TEXT_GENERATION

    quantized = {r.label: r.plans for r in rungs if r.plans is not None}
    if loaded.task == TEXT_GENERATION:
        scores, groups = fisher_scores(loaded, quantized, ids)
        return scores, groups, "fisher (nats)"
    scores = {lbl: {row["layer"]: row["score"] for row in layer_sensitivity(loaded, plans, ids)}
              for lbl, plans in quantized.items()}
    return scores, record_input_sharing(loaded, sorted(rungs[0].plans or {}), ids), "1-cosine"


def rung_config(scheme: str, compute_dtype: str) -> Any:
    """The config of an upgrade rung named by a profile: the scheme's defaults in ``compute_dtype``, rounded to
    nearest where the scheme rounds with GPTQ. A rung holds only the few layers the budget raises, whose INT8 error
    is already a small part of the total; GPTQ's Hessian pass over every linear would cost more than the whole
    rest of the fit (SmolLM2 int8-wo: 197 s with GPTQ, 15 s nearest, BENCHMARKS.md)."""
    from edgeq.converters.quantize.config import get_config

    cfg = get_config(scheme, compute_dtype=compute_dtype)
    return cfg.with_overrides(rounding="nearest") if hasattr(cfg, "rounding") else cfg


def fit_budget(ctx: Any, plans: dict[str, LinearPlan], budget: AccuracyBudget, *, upgrade: tuple[Any, ...] = (),
               max_extra_bytes: int | None = None, score_ids: torch.Tensor, reserve: float = DEFAULT_RESERVE) -> Fit:
    """Build the ladder (``plans`` of ``ctx.cfg``, each ``upgrade`` scheme, then unquantized), score it and
    search the shortest move sequence meeting ``budget`` on ``ctx.calib.holdout``."""
    from edgeq.converters.quantize.config import QuantConfig
    from edgeq.converters.quantize.registry import QuantContext, handler_for
    from edgeq.errors import ConfigError

    cfg = ctx.cfg
    rungs = [Rung(cfg.scheme, plans, handler_for(cfg).weight_bits(cfg))]
    linears = {n: m for n, m in ctx.linears.items() if n in plans}
    for u in upgrade:
        ucfg = u if isinstance(u, QuantConfig) else rung_config(str(u), cfg.compute_dtype)
        if ucfg.folds_scales:
            raise ConfigError(f"{ucfg.scheme} rewrites FP weights (scale folding): it cannot be a rung above {cfg.scheme}",
                              hint="use a weight-only scheme (int8-wo) as the upgrade")
        uh = handler_for(ucfg)
        uplans = uh.quantize(QuantContext(loaded=ctx.loaded, cfg=ucfg, linears=linears, calib=ctx.calib))
        rungs.append(Rung(ucfg.scheme, uplans, uh.weight_bits(ucfg)))
    rungs.append(Rung(_DTYPE_LABEL.get(cfg.compute_dtype, UNQUANTIZED), None, _DTYPE_BITS.get(cfg.compute_dtype, 16)))
    t0 = time.time()
    scores, groups, method = rung_scores(ctx.loaded, rungs, score_ids)
    numel = {n: int(p.q.numel()) for n, p in plans.items()}
    moves = order_moves(groups, rungs, scores, numel, max_extra_bytes)
    search = BudgetSearch(ctx.loaded, rungs, groups, moves, budget, ctx.calib.holdout, reserve=reserve,
                          start_score=sum(scores[rungs[0].label].values()))
    fit = Fit(search, 0, scores, numel, method, seconds={"scores": round(time.time() - t0, 2)})
    t1 = time.time()
    try:
        fit.k = search.fit()
    except AccuracyBudgetError as exc:
        exc.culprits = fit.rows()
        raise
    fit.seconds["search"] = round(time.time() - t1, 2)
    return fit
