"""FP8 E4M3 W8A8: per-output-channel weight scales, per-tensor static activation scales (max/percentile/mse), or
per-token dynamic activation scales (``fp8-dynamic``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgeq.converters.quantize.calibrate import group_by_input, iterate_blocks, sample_rows
from edgeq.converters.quantize.numerics import ACT_QMAX, LinearPlan, act_amax, fp8_channel_quant, mse_act_amax
from edgeq.converters.quantize.registry import QuantContext

#: rows of a linear's calibration input the ``mse`` range search measures the output error on
_MSE_ROWS = 1024


def calibrated_act_amax(ctx: QuantContext, weight_dq: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Each block linear's input range over the calibration text (``cfg.act_calib``), block by block.

    ``mse`` searches one range per input tensor (linears reading one tensor share it, as their QDQ pair does),
    minimising the output error of those linears with ``weight_dq`` (FP weight -> its dequantized grid) applied;
    the error is measured on an even sample of rows, the range's top is the max over all rows."""
    cfg = ctx.cfg
    assert ctx.calib is not None
    amax: dict[str, float] = {}
    for _i, _path, _block, collect, advance in iterate_blocks(ctx.loaded, ctx.calib.calib):
        inputs = {n: x for n, x in collect().items() if n in ctx.linears}
        if cfg.act_calib == "mse":
            assert weight_dq is not None, "an mse range needs the scheme's weight grid"
            for names in group_by_input(inputs, ctx.linears):
                x = inputs[names[0]].float()
                xs = torch.cat([sample_rows(x, _MSE_ROWS), x[x.abs().amax(dim=1).argmax()][None]])  # keep the max row
                ws = [ctx.linears[n].weight.detach().float() for n in names]
                a = mse_act_amax(xs, [(w, weight_dq(w)) for w in ws], kind="fp8")
                amax.update(dict.fromkeys(names, a))
        else:
            for name, x in inputs.items():
                amax[name] = act_amax(x, cfg.act_calib, cfg.percentile)
        advance()
    return amax


def _fp8_dq(w: torch.Tensor) -> torch.Tensor:
    q, scale = fp8_channel_quant(w)
    return q.float() * scale[:, None]


def quantize_fp8(ctx: QuantContext) -> dict[str, LinearPlan]:
    cfg = ctx.cfg
    amax = calibrated_act_amax(ctx, _fp8_dq)
    plans = {}
    for name, mod in ctx.linears.items():
        q, scale = fp8_channel_quant(mod.weight.detach().float())
        # a linear outside the repeated blocks (none in supported models) has no calibrated range: weight-only
        act = amax.get(name)
        plans[name] = LinearPlan(name, "fp8", q, scale,
                                 act_scale=None if act is None else max(act, 1e-8) / ACT_QMAX["fp8"],
                                 info={"act_amax": act, "act_calib": cfg.act_calib})
    return plans


def quantize_fp8_dynamic(ctx: QuantContext) -> dict[str, LinearPlan]:
    """Per-channel E4M3 weights; each input quantized per token at run time (no calibration)."""
    plans = {}
    for name, mod in ctx.linears.items():
        q, scale = fp8_channel_quant(mod.weight.detach().float())
        plans[name] = LinearPlan(name, "fp8", q, scale, act_group=int(mod.in_features), info={"activations": "dynamic per token"})
    return plans
