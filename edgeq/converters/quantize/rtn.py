"""Weight-only schemes without activation scaling: INT4 round-to-nearest (the baseline) and INT8 per-channel
(W8A16), rounded with GPTQ on calibration inputs or to nearest."""

from __future__ import annotations

import torch

from edgeq.converters.quantize.config import Int8WeightOnlyConfig
from edgeq.converters.quantize.gptq import int8_channel_gptq, sequential_plans
from edgeq.converters.quantize.numerics import LinearPlan, int8_channel_quant
from edgeq.converters.quantize.int4 import weight_only_plan
from edgeq.converters.quantize.registry import QuantContext


def quantize_int4_rtn(ctx: QuantContext) -> dict[str, LinearPlan]:
    return {n: weight_only_plan(n, m.weight.detach(), ctx.cfg) for n, m in ctx.linears.items()}


def _int8_nearest(name: str, w: torch.Tensor, note: str | None = None) -> LinearPlan:
    q, scale = int8_channel_quant(w.float())
    return LinearPlan(name, "int8", q, scale, info={"rounding": "nearest", **({"note": note} if note else {})})


def quantize_int8_wo(ctx: QuantContext) -> dict[str, LinearPlan]:
    cfg: Int8WeightOnlyConfig = ctx.cfg
    if cfg.rounding == "nearest":
        return {n: _int8_nearest(n, m.weight.detach()) for n, m in ctx.linears.items()}
    assert ctx.calib is not None

    def plan_for(name: str, w: torch.Tensor, g: torch.Tensor) -> LinearPlan:
        q, scale = int8_channel_gptq(w, g, cfg.gptq_damp)
        return LinearPlan(name, "int8", q, scale, info={"rounding": "gptq"})

    plans = sequential_plans(ctx, plan_for)
    # linears outside the repeated blocks (a quantized LM head / pooler): nearest rounding
    for name, mod in ctx.linears.items():
        if name not in plans:
            plans[name] = _int8_nearest(name, mod.weight.detach(), note="outside blocks: nearest rounding")
    return plans
