"""GPTQ rounding (Frantar et al. 2023): quantize one input column at a time and spread its rounding error
over the columns not yet quantized, weighted by the inverse Hessian ``(X^T X)^-1`` of the layer's inputs.

The grid is the scheme's own (INT8 per-channel scales, INT4 per-block scales and offsets; the same QDQ
file): only which integer each weight rounds to differs, chosen so that the layer's *output* on calibration
inputs moves least. Group scales are fixed when the loop reaches a group's first column, from the columns
as they are then (already carrying the error of earlier groups), as the reference implementation does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from edgeq.converters.quantize.calibrate import iterate_blocks
from edgeq.converters.quantize.numerics import INT4_MAX, INT4_MIN, INT8_MAX, LinearPlan, int4_block_quant, int8_channel_scale
from edgeq.converters.quantize.simulate import simulated

#: columns updated at once (the reference's "lazy batch"); must be a multiple of every group size used
LAZY_COLUMNS = 128


def _inverse_hessian_factor(g: torch.Tensor, w: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(G + damp * mean(diag G) * I)^-1``; zeroes ``w``'s columns that never fire."""
    h = g.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * float(torch.diag(h).mean()))
    try:
        l = torch.linalg.cholesky(h)
    except RuntimeError:  # not positive definite after damping: damp harder (tiny calibration sets)
        h.diagonal().add_(float(torch.diag(h).mean()))
        l = torch.linalg.cholesky(h)
    hinv = torch.cholesky_inverse(l)
    return torch.linalg.cholesky(hinv, upper=True).float()


ScaleFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None]]


def gptq_round(w: torch.Tensor, g: torch.Tensor, *, qmin: int, qmax: int, group: int, scale_for: ScaleFn,
               damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``w`` ``[out, in]`` with GPTQ rounding on the input Gram matrix ``g`` ``[in, in]``.

    Args:
        qmin, qmax: the integer grid (INT8: -127..127, INT4: -8..7).
        group: input columns sharing one scale (``in`` for per-channel scales, the block size for blocks).
        scale_for: ``(columns [out, group] as they are now, first column index) -> (scale [out], offset
            [out] or None)``; a weight is ``code * scale + offset``.
        damp: Hessian dampening as a fraction of its mean diagonal (the reference's 1%).

    Returns:
        (codes int8 ``[out, in]``, scales and offsets (or None): ``[out]`` when ``group == in``, else
        ``[out, in // group]``).
    """
    out_f, in_f = w.shape
    if in_f % group or (group < in_f and LAZY_COLUMNS % group):
        raise ValueError(f"group {group} must divide {in_f} and {LAZY_COLUMNS}")
    w = w.float().clone()
    u = _inverse_hessian_factor(g, w, damp)
    codes = torch.zeros(out_f, in_f, dtype=torch.int8)
    scales = torch.zeros(out_f, in_f // group)
    offsets: torch.Tensor | None = None
    scale, offset = torch.ones(out_f), torch.zeros(out_f)
    lazy = in_f if group == in_f else LAZY_COLUMNS
    for i1 in range(0, in_f, lazy):
        i2 = min(i1 + lazy, in_f)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                scale, off = scale_for(w1[:, i:i + group], col)
                scale = scale.clamp(min=1e-12)
                scales[:, col // group] = scale
                if off is not None:
                    offsets = torch.zeros_like(scales) if offsets is None else offsets
                    offsets[:, col // group] = offset = off
            q = torch.round((w1[:, i] - offset) / scale).clamp(qmin, qmax)
            codes[:, col] = q.to(torch.int8)
            e = (w1[:, i] - q * scale - offset) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    if group == in_f:
        return codes, scales[:, 0], None if offsets is None else offsets[:, 0]
    return codes, scales, offsets


def int8_channel_gptq(w: torch.Tensor, g: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per-output-channel codes and scales (the scales of plain max calibration)."""
    scale = int8_channel_scale(w)
    codes, scales, _ = gptq_round(w, g, qmin=-INT8_MAX, qmax=INT8_MAX, group=w.shape[1],
                                  scale_for=lambda _cols, _c: (scale, None), damp=damp)
    return codes, scales


def int4_block_gptq(w: torch.Tensor, g: torch.Tensor, block: int, damp: float, asymmetric: bool,
                    clip: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """INT4 per (row, block) codes, scales and offsets (asymmetric) or None; ``clip(gram block, columns) ->
    shrink [out]`` (AWQ's clipping search) runs on each block as GPTQ reaches it."""

    def scale_for(cols: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        shrink = None if clip is None else clip(g[c:c + block, c:c + block], cols)[:, None]
        _, scale, offset = int4_block_quant(cols, block, shrink, asymmetric)
        return scale[:, 0], None if offset is None else offset[:, 0]

    return gptq_round(w, g, qmin=INT4_MIN, qmax=INT4_MAX, group=block, scale_for=scale_for, damp=damp)


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x^T x / T`` of input rows ``[T, in]``: the mean squared output error of a weight change D is
    ``sum((D @ G) * D)``, whatever the number of rows (float32 is ample to rank candidates)."""
    x = x.float()
    return (x.T @ x) / x.shape[0]


PlanFn = Callable[[str, torch.Tensor, torch.Tensor], LinearPlan]


def plan_block(inputs: dict[str, torch.Tensor], linears: dict[str, torch.nn.Linear], plan_for: PlanFn) -> dict[str, LinearPlan]:
    """``plan_for(name, FP weight, Gram of its calibration inputs)`` for each linear of one block that
    is to be quantized; linears reading one tensor (q/k/v, gate/up) share one Gram matrix."""
    grams: dict[int, torch.Tensor] = {}
    plans: dict[str, LinearPlan] = {}
    for name, x in inputs.items():
        if name not in linears:
            continue
        if id(x) not in grams:
            grams[id(x)] = gram(x)
        plans[name] = plan_for(name, linears[name].weight.detach().float(), grams[id(x)])
    return plans


def sequential_plans(ctx: Any, plan_for: PlanFn) -> dict[str, LinearPlan]:
    """Plans for the linears inside the repeated blocks, one block at a time (``plan_block``); the next
    block's inputs come from this block run *quantized*, so later layers are calibrated on the errors of
    earlier ones (GPTQ's sequential order)."""
    plans: dict[str, LinearPlan] = {}
    for _i, _path, _block, collect, advance in iterate_blocks(ctx.loaded, ctx.calib.calib):
        block_plans = plan_block(collect(), ctx.linears, plan_for)
        with simulated(ctx.loaded.model, block_plans):
            advance()
        plans.update(block_plans)
    return plans
