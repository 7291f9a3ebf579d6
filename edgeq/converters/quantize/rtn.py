"""Calibration-free weight-only schemes: INT4 round-to-nearest and INT8 per-channel (W8A16)."""

from __future__ import annotations

from edgeq.converters.quantize.config import Int4RtnConfig, Int8WeightOnlyConfig
from edgeq.converters.quantize.numerics import LinearPlan, int8_channel_quant
from edgeq.converters.quantize.registry import QuantContext, register_quantizer, weight_only_plan


@register_quantizer(Int4RtnConfig)
def quantize_int4_rtn(ctx: QuantContext) -> dict[str, LinearPlan]:
    return {n: weight_only_plan(n, m.weight.detach(), ctx.cfg) for n, m in ctx.linears.items()}


@register_quantizer(Int8WeightOnlyConfig)
def quantize_int8_wo(ctx: QuantContext) -> dict[str, LinearPlan]:
    plans = {}
    for name, mod in ctx.linears.items():
        q, scale = int8_channel_quant(mod.weight.detach().float())
        plans[name] = LinearPlan(name, "int8", q, scale)
    return plans
