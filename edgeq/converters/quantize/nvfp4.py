"""NVFP4 (NVIDIA's FP4 for Blackwell): E2M1 values, an E4M3 scale per 16-element block, one FP32 scale per tensor.

Two-level scaling as ModelOpt and TensorRT define it (the arithmetic: ``fp4.py``; the graph: ``nvfp4_qdq.py``,
whose two DequantizeLinear nodes compute what the torch simulation computes). Weights are quantized once (W4A16 and W4A4); W4A4 also quantizes each linear's input at
run time per 16-block along the last axis (TensorRT's DynamicQuantize), under a static per-tensor ``s2`` taken
from calibration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from edgeq.converters.quantize.fp4 import BLOCK, block_dequant, block_quant, fake_quant_act, global_scale, round_e2m1
from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.errors import QuantizationError

if TYPE_CHECKING:
    from edgeq.converters.quantize.registry import QuantContext

__all__ = ["BLOCK", "block_dequant", "block_quant", "fake_quant_act", "global_scale", "round_e2m1",
           "quantize_nvfp4", "weight_plan"]


def weight_plan(name: str, w: torch.Tensor, act_scale: float | None = None, **info: object) -> LinearPlan:
    """The NVFP4 plan of one ``[out, in]`` weight (W4A4 when ``act_scale``, the activations' ``s2``, is given)."""
    s2 = global_scale(w.detach().abs().amax())
    q, s8 = block_quant(w.detach(), s2)
    return LinearPlan(name, "nvfp4", q, s8, block_size=BLOCK, act_scale=act_scale, global_scale=float(s2),
                      info={"weight_amax": float(w.detach().abs().amax()), **info})


def quantize_nvfp4(ctx: QuantContext) -> dict[str, LinearPlan]:
    """NVFP4 plans for ``ctx.linears``; W4A4 configs calibrate each linear's input range first."""
    bad = [n for n, m in ctx.linears.items() if m.in_features % BLOCK]
    if bad:
        raise QuantizationError(f"NVFP4 blocks are {BLOCK} wide; {len(bad)} linears have an input size that is "
                                f"no multiple of it: {bad[:3]}", hint="keep them unquantized with keep_fp16")
    cfg = ctx.cfg
    amax: dict[str, float] = {}
    if cfg.activations:
        from edgeq.converters.quantize.fp8 import calibrated_act_amax

        amax = calibrated_act_amax(ctx)
    plans = {}
    for name, mod in ctx.linears.items():
        act = amax.get(name)
        # a linear outside the repeated blocks has no calibrated range: its input stays unquantized
        s2 = float(global_scale(act)) if act is not None else None
        info = {"act_amax": act, "act_calib": cfg.act_calib} if cfg.activations else {}
        plans[name] = weight_plan(name, mod.weight.detach().float(), act_scale=s2, **info)
    return plans
