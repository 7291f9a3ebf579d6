"""The ``prequantized`` scheme: a checkpoint's published weights become fixed LinearPlans, not re-quantized.

INT4 (AWQ GEMM, compressed-tensors pack-quantized): the signed codes go into the INT4 DequantizeLinear as
they are, the published scales become its scales, and zero points become the offsets ``-zero * scale`` of
edgeq's exact correction term (TensorRT takes no INT4 zero points), so ``q * s + o = (q - zero) * s``.
FP8 (fine-grained, compressed-tensors float-quantized): the E4M3 bytes go into the FP8 DequantizeLinear as
they are. ONNX DequantizeLinear blocks along one axis only, so a ``[128, 128]`` block scale is written once
per output row and 128-input block (the scale of the row's block, repeated: the same numbers, an exact
rewrite); per-channel and per-tensor scales become per-channel scales. Activations of FP8 layers get
calibrated static per-tensor FP8 scales (what TensorRT's FP8 GEMMs take; a checkpoint's published static
``input_scale`` is kept instead) where the weight scales are per channel or per tensor; block-scaled FP8
weights stay weight-only (W8A16) by default, because TensorRT-RTX 1.7 fails to build an FP8 GEMM whose weight
DequantizeLinear is blocked (Myelin ``CHECK(is_constant())``, measured on tiny Llama for sm89; the
weight-only form builds). The checkpoint's own dynamic per-token-group activation scheme has no standard
ONNX quantizer (``qdq.dynamic_fp8_nodes`` writes its arithmetic out, which no TensorRT builds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from edgeq.converters.prequant.formats import PublishedLinear
from edgeq.converters.quantize.calibrate import iterate_blocks
from edgeq.converters.prequant.config import PrequantizedConfig
from edgeq.converters.quantize.numerics import ACT_QMAX, LinearPlan, act_amax
from edgeq.converters.quantize.registry import QuantContext
from edgeq.errors import ConfigError, QuantizationError

def _pow2_divisor(n: int, cap: int) -> int:
    """The largest power of two dividing both ``n`` and ``cap``."""
    g = math.gcd(n, cap)
    return g & -g


def published_plan(p: PublishedLinear) -> LinearPlan:
    """The fixed LinearPlan of one published linear (QuantizationError when ONNX cannot hold it exactly)."""
    out_f, in_f = p.q.shape
    info: dict[str, Any] = {"published": True, "checkpoint_block": list(p.block),
                            "scale_dtype": str(p.scale.dtype).removeprefix("torch.")}
    if p.kind == "int4":
        group = p.block[1]
        if group < 16 or group & (group - 1) or in_f % group:
            raise QuantizationError(
                f"{p.name}: INT4 group size {group} cannot be kept (ONNX Runtime and TensorRT take power-of-two "
                f"blocks >= 16 dividing the input size {in_f})",
                hint="re-quantize instead: pick an edgeq scheme with --precision/--scheme")
        scale = p.scale.float()
        offset = None if p.zero is None else -p.zero.float() * scale  # exact: integer times a 16-bit scale
        return LinearPlan(p.name, "int4", p.q, scale, block_size=group, offset=offset, info=info)
    rows = p.scale.float().repeat_interleave(p.block[0], 0)[:out_f]  # [out, ceil(in / block)]
    if p.block[1] >= in_f:  # per channel or per tensor: one scale per output row
        return LinearPlan(p.name, "fp8", p.q, rows[:, 0].contiguous(), info=info)
    block = _pow2_divisor(in_f, p.block[1])
    if block < p.block[1]:
        # a partial last block has no exact 1-D form at this block size: smaller blocks, the scales repeated
        info["onnx_block_note"] = f"input size {in_f} is not a multiple of {p.block[1]}: written as blocks of {block}"
        rows = rows.repeat_interleave(p.block[1] // block, 1)[:, : in_f // block]
    info["onnx_block"] = [1, block]
    return LinearPlan(p.name, "fp8", p.q, rows.contiguous(), block_size=block, info=info)


def keep_published(ctx: QuantContext) -> dict[str, LinearPlan]:
    published = ctx.loaded.published
    if published is None:
        raise QuantizationError(f"{ctx.loaded.name} is not a pre-quantized checkpoint: scheme prequantized has "
                                "nothing to keep", hint="pick a quantization scheme (int4-awq, fp8, ...)")
    cfg: PrequantizedConfig = ctx.cfg
    plans = {n: published_plan(published.linears[n]) for n in ctx.linears if n in published.linears}
    if not plans:
        raise QuantizationError(f"none of {ctx.loaded.name}'s published linears is left to keep",
                                hint="check keep_fp16 globs")
    fp8 = [n for n, p in plans.items() if p.kind == "fp8"
           and (cfg.fp8_activations == "static" or (cfg.fp8_activations == "auto" and plans[n].block_size is None))]
    act_source = "none (weight-only)"
    if fp8:
        act_source = _fp8_act_scales(ctx, {n: plans[n] for n in fp8}, published)
    ctx.stats["prequantized"] = {
        **published.summary(),
        "kept_exactly": len(plans),
        "dequantized_in_fp": sorted(set(published.linears) - set(plans)),  # kept FP by keep_fp16 / head
        "not_published": sorted(set(ctx.linears) - set(published.linears)),  # the checkpoint left them FP
        "fp8_activations": act_source,
    }
    return plans


def _fp8_act_scales(ctx: QuantContext, plans: dict[str, LinearPlan], published: Any) -> str:
    """Set static per-tensor activation scales on FP8 plans: the published ``input_scale`` where the
    checkpoint has one, else calibrated (max or percentile of |x|, as the ``fp8`` scheme)."""
    given = {n: published.linears[n].act_scale for n in plans if published.linears[n].act_scale is not None}
    for n, s in given.items():
        plans[n].act_scale = float(s)
    todo = set(plans) - set(given)
    if todo:
        if ctx.calib is None:
            raise QuantizationError("static FP8 activation scales need calibration data")
        amax: dict[str, float] = {}
        for _i, _path, _block, collect, advance in iterate_blocks(ctx.loaded, ctx.calib.calib):
            for name, x in collect().items():
                if name in todo:
                    amax[name] = act_amax(x, ctx.cfg.act_calib, ctx.cfg.percentile)
            advance()
        for n in todo & set(amax):
            plans[n].act_scale = max(amax[n], 1e-8) / ACT_QMAX["fp8"]
            plans[n].info["act_amax"] = amax[n]
    return "published input_scale" if given and not todo else "calibrated static per-tensor" if not given else "mixed"


def prequantized_config(compute_dtype: str, overrides: dict[str, Any]) -> PrequantizedConfig:
    """The ``prequantized`` config a build uses; options of other schemes (``block_size``: the checkpoint's
    own group size wins) are dropped with a warning, never silently."""
    import dataclasses
    import logging

    known = {f.name for f in dataclasses.fields(PrequantizedConfig)}
    dropped = sorted(set(overrides) - known)
    if dropped:
        logging.getLogger(__name__).warning("keeping the checkpoint's published weights: ignoring %s", dropped)
    return PrequantizedConfig(**{"compute_dtype": compute_dtype, **{k: v for k, v in overrides.items() if k in known}})
