"""FP8 E4M3 W8A8: per-output-channel weight scales, per-tensor static activation scales (max/percentile)."""

from __future__ import annotations

from edgeq.converters.quantize.calibrate import iterate_blocks
from edgeq.converters.quantize.numerics import ACT_QMAX, LinearPlan, act_amax, fp8_channel_quant
from edgeq.converters.quantize.registry import QuantContext


def calibrated_act_amax(ctx: QuantContext) -> dict[str, float]:
    """Each block linear's input range over the calibration text (``cfg.act_calib``), block by block."""
    cfg = ctx.cfg
    assert ctx.calib is not None
    amax: dict[str, float] = {}
    for _i, _path, _block, collect, advance in iterate_blocks(ctx.loaded, ctx.calib.calib):
        for name, x in collect().items():
            if name in ctx.linears:
                amax[name] = act_amax(x, cfg.act_calib, cfg.percentile)
        advance()
    return amax


def quantize_fp8(ctx: QuantContext) -> dict[str, LinearPlan]:
    cfg = ctx.cfg
    amax = calibrated_act_amax(ctx)
    plans = {}
    for name, mod in ctx.linears.items():
        q, scale = fp8_channel_quant(mod.weight.detach().float())
        # a linear outside the repeated blocks (none in supported models) has no calibrated range: weight-only
        act = amax.get(name)
        plans[name] = LinearPlan(name, "fp8", q, scale,
                                 act_scale=None if act is None else max(act, 1e-8) / ACT_QMAX["fp8"],
                                 info={"act_amax": act, "act_calib": cfg.act_calib})
    return plans
