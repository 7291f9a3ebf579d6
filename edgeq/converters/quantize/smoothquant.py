"""INT8 W8A8 with SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights.

Per foldable group, ``s_j = max|x_j|^a / max|W_:,j|^(1-a)``; ``1/s`` is folded into the predecessor
(norm or linear) and ``s`` into the weights. ``a`` is the config's alpha or, by default, searched per
group over ``alpha_grid`` by the output MSE of the fully quantized group (INT8 per-channel weights,
INT8 per-tensor static activations). Linears with no foldable predecessor are plain W8A8. Activation
ranges are then calibrated per linear (default ``mse``: the clipped range with the least output error).
"""

from __future__ import annotations

import torch

from edgeq.converters.quantize.calibrate import fold_groups, group_by_input, iterate_blocks, predecessor_fits, sample_rows, scale_predecessor
from edgeq.converters.quantize.config import Int8SmoothQuantConfig
from edgeq.converters.quantize.numerics import ACT_QMAX, LinearPlan, act_amax, fake_quant_act, int8_channel_quant, mse_act_amax
from edgeq.converters.quantize.registry import QuantContext

_SEARCH_ROWS = 1024


def _group_error(x: torch.Tensor, ws: list[torch.Tensor], refs: list[torch.Tensor], s: torch.Tensor, method: str,
                 pct: float) -> float:
    """Output MSE of the group quantized with smoothing ``s``; ``refs`` are the FP outputs ``x @ w.T`` (the same
    for every alpha, so the search computes them once)."""
    xs = x / s
    # alpha is ranked with the plain max range: the clipping search runs once alpha is fixed
    a_scale = max(act_amax(xs, "max" if method == "mse" else method, pct), 1e-8) / ACT_QMAX["int8"]
    xq = fake_quant_act(xs, a_scale, "int8")
    err = 0.0
    for w, ref in zip(ws, refs):
        q, sc = int8_channel_quant(w * s)
        err += float((xq @ (q.float() * sc[:, None]).T - ref).pow(2).mean())
    return err


def smooth_scale(x_max: torch.Tensor, ws: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_max = torch.stack([w.abs().amax(dim=0) for w in ws]).amax(dim=0).clamp(min=1e-5)
    s = (x_max.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
    return s


def quantize_int8_sq(ctx: QuantContext) -> dict[str, LinearPlan]:
    cfg: Int8SmoothQuantConfig = ctx.cfg
    assert ctx.calib is not None
    model = ctx.loaded.model
    plans: dict[str, LinearPlan] = {}
    chosen: list[dict] = []
    for _i, path, _block, collect, advance in iterate_blocks(ctx.loaded, ctx.calib.calib):
        inputs = collect()
        for prev, kind, members in fold_groups(ctx.loaded, path):
            members = [m for m in members if m in ctx.linears]
            if not members:
                continue
            if not predecessor_fits(model, prev, ctx.linears[members[0]].in_features):
                chosen.append({"group": members, "skipped": "predecessor shape differs (GQA)"})
                continue
            x = inputs[members[0]].float()
            mods = [ctx.linears[m] for m in members]
            ws = [m.weight.detach().float() for m in mods]
            x_max = x.abs().amax(dim=0)
            xs = sample_rows(x, _SEARCH_ROWS)
            grid = (cfg.alpha,) if cfg.alpha is not None else cfg.alpha_grid
            refs = [xs @ w.T for w in ws]
            errs = {a: _group_error(xs, ws, refs, smooth_scale(x_max, ws, a), cfg.act_calib, cfg.percentile)
                    for a in grid}
            alpha = min(errs, key=errs.__getitem__)
            s = smooth_scale(x_max, ws, alpha)
            if not scale_predecessor(model, prev, kind, s):
                chosen.append({"group": members, "skipped": "predecessor shape differs (GQA)"})
                continue
            with torch.no_grad():
                for m in mods:
                    m.weight.mul_(s[None, :])
            scaled = inputs[members[0]] / s  # one tensor per group: one activation scale below
            for m in members:
                inputs[m] = scaled
            chosen.append({"group": members, "alpha": alpha})
            for m in members:
                plans[m] = None  # placeholder: quantized below with its smoothed input
        for names in group_by_input(inputs, ctx.linears):
            x = inputs[names[0]]
            wq = {n: int8_channel_quant(ctx.linears[n].weight.detach().float()) for n in names}
            if cfg.act_calib == "mse":  # all rows: the outliers that matter are rare
                pairs = [(ctx.linears[n].weight.detach().float(), q.float() * sc[:, None]) for n, (q, sc) in wq.items()]
                amax = mse_act_amax(x.float(), pairs)
            else:
                amax = max(act_amax(x, cfg.act_calib, cfg.percentile), 1e-8)
            for name, (q, sc) in wq.items():
                plans[name] = LinearPlan(name, "int8", q, sc, act_scale=amax / ACT_QMAX["int8"],
                                         info={"act_amax": amax, "smoothed": name in plans})
        del inputs
        advance()
    for name, mod in ctx.linears.items():
        if plans.get(name) is None:  # outside the blocks: weight-only (no calibrated range)
            q, sc = int8_channel_quant(mod.weight.detach().float())
            plans[name] = LinearPlan(name, "int8", q, sc, info={"note": "outside blocks: weight-only"})
    ctx.stats["smoothquant_groups"] = chosen
    return plans
