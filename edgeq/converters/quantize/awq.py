"""INT4 AWQ (Lin et al. 2023): activation-aware per-input-channel scales, then per-block clipping search.

Per block, on calibration activations captured through hooks:
1. For each foldable group (norm -> q/k/v, norm -> gate/up, up -> down, v -> o when shapes match) search
   ``s = mean|x|^r`` over ``n_grid`` exponents r in [0, 1), minimising the group's output MSE of
   ``x/s @ Q(W*s)``; fold ``1/s`` into the predecessor and ``s`` into the weights (FP-equivalent).
2. For every linear, search a shrink ratio of each block's range (1 down to 1 - max_shrink) minimising
   the block's output error on all calibration rows.
3. ``rounding="nearest"`` (default): round to nearest and re-run the block FP (scaled) to produce the
   next block's input, as the reference AWQ does; ``"gptq"``: round with GPTQ on the scaled weights
   (``gptq.py``), each block's clip searched as GPTQ reaches it, and run the block quantized instead.
Blocks are asymmetric by default (``asymmetric``): both searches then run on the [min, max] grid.
Errors are exact mean squared output errors computed through the input's Gram matrix, so every
calibration token counts at a cost independent of their number.
"""

from __future__ import annotations

import torch

from edgeq.converters.quantize.calibrate import fold_groups, iterate_blocks, predecessor_fits, scale_predecessor
from edgeq.converters.quantize.config import Int4AwqConfig
from edgeq.converters.quantize.gptq import gram, int4_block_gptq, plan_block
from edgeq.converters.quantize.numerics import LinearPlan, choose_block, int4_block_dequant, int4_block_quant
from edgeq.converters.quantize.int4 import block_note, fit_block, int4_plan, weight_only_plan
from edgeq.converters.quantize.registry import QuantContext
from edgeq.converters.quantize.simulate import simulated


def _qdq(w: torch.Tensor, block: int, asymmetric: bool, clip: torch.Tensor | None = None) -> torch.Tensor:
    q, s, o = int4_block_quant(w, block, clip, asymmetric)
    return int4_block_dequant(q, s, block, o)


def search_scale(g: torch.Tensor, x_mean: torch.Tensor, weights: list[torch.Tensor], blocks: list[int],
                 n_grid: int, tie: torch.Tensor | None = None, asymmetric: bool = False) -> tuple[torch.Tensor, float, float, bool]:
    """Best per-input-channel scale for one group: (s, ratio, relative error gain vs no scaling, duo).

    Candidates are ``s = mean|x|^r`` (the paper) and ``s = mean|x|^r / mean|w|^(1-r)`` ("duo" scaling, as
    AutoAWQ does), r = i / n_grid. The error is the group's mean squared output error
    ``|x @ (Q(W*s)/s - W)^T|^2`` (r = 0 of the plain form is no scaling, i.e. RTN). ``tie`` maps each
    input channel to a shared index (GQA: o_proj inputs of one KV head share v_proj's scale)."""
    w_mean = torch.cat([w.abs() / w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) for w in weights]).mean(dim=0)
    if tie is not None:
        x_mean, w_mean = _tied_mean(x_mean, tie), _tied_mean(w_mean, tie)
    best = (float("inf"), 0.0, torch.ones_like(x_mean), False)
    err0 = None
    for duo in (False, True):
        for i in range(n_grid):
            ratio = i / n_grid
            s = x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4) if duo else x_mean.pow(ratio)
            s = s.clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            err = 0.0
            for w, b in zip(weights, blocks):
                d = _qdq(w * s, b, asymmetric) / s - w
                err += float(((d @ g) * d).sum(dtype=torch.float64)) / w.shape[0]
            if err0 is None:
                err0 = err
            if err < best[0]:
                best = (err, ratio, s, duo)
    gain = 0.0 if not err0 else 1.0 - best[0] / err0
    return best[2], best[1], gain, best[3]


def _tied_mean(v: torch.Tensor, tie: torch.Tensor) -> torch.Tensor:
    n = int(tie.max()) + 1
    sums = torch.zeros(n, dtype=v.dtype).index_add_(0, tie, v)
    counts = torch.zeros(n, dtype=v.dtype).index_add_(0, tie, torch.ones_like(v))
    return (sums / counts)[tie]


def gqa_tie(config: object, o_in: int, v_out: int) -> torch.Tensor | None:
    """o_proj input channel -> v_proj output channel under grouped-query attention (None if not GQA)."""
    heads = getattr(config, "num_attention_heads", 0)
    kv = getattr(config, "num_key_value_heads", heads) or heads
    if not heads or kv == heads or heads % kv or o_in % heads:
        return None
    hd = o_in // heads
    if kv * hd != v_out:
        return None
    i = torch.arange(o_in)
    return ((i // hd) // (heads // kv)) * hd + i % hd


def search_clip(g: torch.Tensor, w: torch.Tensor, block: int, max_shrink: float, steps: int,
                asymmetric: bool = False) -> torch.Tensor:
    """Per (output row, block) shrink factor of the range minimising that block's output error
    (the block-diagonal part of the Gram matrix: blocks are quantized independently)."""
    out_f, in_f = w.shape
    n_b = in_f // block
    wb = w.reshape(out_f, n_b, block).float()
    gb = torch.stack([g[i * block:(i + 1) * block, i * block:(i + 1) * block] for i in range(n_b)])
    best_err = torch.full((out_f, n_b), float("inf"))
    best = torch.ones(out_f, n_b)
    for i in range(steps):
        shrink = torch.full((out_f, n_b), 1.0 - max_shrink * i / steps)
        d = _qdq(w.float(), block, asymmetric, shrink).reshape(out_f, n_b, block) - wb
        err = torch.einsum("ogb,gbc,ogc->og", d, gb, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, shrink, best)
    return best


def quantize_int4_awq(ctx: QuantContext) -> dict[str, LinearPlan]:
    cfg: Int4AwqConfig = ctx.cfg
    assert ctx.calib is not None
    model = ctx.loaded.model
    plans: dict[str, LinearPlan] = {}
    groups_report: list[dict] = []
    for _i, path, _block, collect, advance in iterate_blocks(ctx.loaded, ctx.calib.calib):
        inputs = collect()
        done_scale: set[str] = set()
        for prev, kind, members in fold_groups(ctx.loaded, path):
            members = [m for m in members if m in ctx.linears]
            if not members:
                continue
            tie = None
            in_f = ctx.linears[members[0]].in_features
            if not predecessor_fits(model, prev, in_f):
                tie = gqa_tie(model.config, in_f, model.get_submodule(prev).weight.shape[0]) if kind == "linear" else None
                if tie is None:
                    groups_report.append({"group": members, "skipped": "predecessor shape differs"})
                    continue
            x = inputs[members[0]].float()
            mods = [ctx.linears[m] for m in members]
            ws = [m.weight.detach().float() for m in mods]
            blocks = [choose_block(w.shape[1], cfg.block_size) for w in ws]
            s, ratio, gain, duo = search_scale(gram(x), x.abs().mean(dim=0), ws, blocks, cfg.n_grid, tie, cfg.asymmetric)
            # under GQA the predecessor (v_proj) gets one scale per KV channel; tied values are equal
            s_prev = s if tie is None else torch.zeros(int(tie.max()) + 1).index_copy_(0, tie, s)
            if not scale_predecessor(model, prev, kind, s_prev):
                groups_report.append({"group": members, "skipped": "predecessor shape differs (GQA)"})
                continue
            with torch.no_grad():
                for m in mods:
                    m.weight.mul_(s[None, :])
            scaled = inputs[members[0]] / s  # one tensor for the whole group (one Gram below)
            for m in members:
                inputs[m] = scaled
                done_scale.add(m)
            groups_report.append({"group": members, "ratio": ratio, "duo": duo, "mse_gain": round(gain, 4)})
        block_plans = plan_block(inputs, ctx.linears,
                                 lambda name, w, g: _plan(cfg, name, w, g, awq_scaled=name in done_scale))
        del inputs
        if cfg.rounding == "gptq":
            # GPTQ's sequential order: the next block is calibrated on this one's quantized output
            with simulated(model, block_plans):
                advance()
        else:
            advance()  # published AWQ: the next block sees this one FP (scaled)
        plans.update(block_plans)
    # linears outside the repeated blocks (e.g. a quantized LM head): plain RTN
    for name, mod in ctx.linears.items():
        if name not in plans:
            plans[name] = weight_only_plan(name, mod.weight.detach().float(), cfg, note="outside blocks: RTN")
    ctx.stats["awq_groups"] = groups_report
    return plans


def _plan(cfg: Int4AwqConfig, name: str, w: torch.Tensor, g: torch.Tensor, **info: object) -> LinearPlan:
    """One linear's INT4 plan after scaling: the clipping search, then GPTQ or nearest rounding."""
    block = fit_block(name, w.shape[1], cfg.block_size)
    if cfg.rounding == "gptq":
        def clip(g_block: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return search_clip(g_block, cols, block, cfg.max_shrink, cfg.clip_steps, cfg.asymmetric)[:, 0]

        q, scale, offset = int4_block_gptq(w, g, block, cfg.gptq_damp, cfg.asymmetric,
                                           clip if cfg.clip_search else None)
        return LinearPlan(name, "int4", q, scale, block_size=block, offset=offset,
                          info={**block_note(block, cfg.block_size, w.shape[1]), **info, "rounding": "gptq"})
    clip_r = search_clip(g, w, block, cfg.max_shrink, cfg.clip_steps, cfg.asymmetric) if cfg.clip_search else None
    if clip_r is not None:
        info["mean_clip"] = round(float(clip_r.mean()), 4)
    return int4_plan(name, w, cfg.block_size, clip_r, cfg.asymmetric, **info, rounding="nearest")
