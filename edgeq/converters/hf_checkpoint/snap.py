"""Put a calibrated plan on what a checkpoint format stores, before the ONNX is emitted from it.

- INT4 scales are rounded to the checkpoint dtype (FP16: what AWQ and vLLM's W4A16 kernels read).
- edgeq's asymmetric INT4 offsets are real numbers (``w = q*s + o``); AWQ and compressed-tensors store integer
  zero points (``w = (q - zp)*s``). Each block's zero point becomes ``round(-o/s)`` and its codes are
  re-rounded on that grid from the layer's FP weights (AWQ's scaling already folded in). Symmetric codes
  are kept. A plan read from such a checkpoint (scheme ``prequantized``) comes back unchanged.
- FP8 scales stay FP32 (the formats store FP32 scales); the fine-grained format needs one scale per
  square block (128x128, or smaller for narrow models), which a per-output-channel plan does not have (scheme
  ``fp8-block`` makes such plans). Dynamic activations (``act_group``) are stored as the format's activation
  scheme, not as tensors.
- INT8 plans (an INT8 LM head) and a quantized head tied to the embedding are left in FP: no format here
  stores them.
- Every unquantized float tensor of the model is rounded to the checkpoint dtype, so the ONNX exported
  from it holds the same values as the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from edgeq.converters.hf_checkpoint.config import AWQ, FP8_BLOCK, FP8_BLOCK_SHAPE, HfCheckpointConfig
from edgeq.converters.quantize.numerics import INT4_MAX, INT4_MIN, LinearPlan
from edgeq.errors import QuantizationError


def checkpoint_block(plan: LinearPlan) -> tuple[int, int] | None:
    """The square weight block an FP8 plan was made on (``fp8-block``, even where a layer holds one block) or read
    from (a block-scaled checkpoint; its per-tensor ``(out, in)`` and per-channel ``(1, in)`` entries are no blocks)."""
    made = plan.info.get("block")
    if made:
        return int(made[0]), int(made[1])
    read = plan.info.get("checkpoint_block")
    if read and read[0] == read[1] and list(read) != list(plan.q.shape):
        return int(read[0]), int(read[1])
    return None


def fp8_block_scales(plan: LinearPlan, block: tuple[int, int] | None = None) -> torch.Tensor | None:
    """The ``[ceil(out/b0), ceil(in/b1)]`` scales of an FP8 plan whose scale is constant on every block (``block``:
    the plan's own, else 128x128), else None."""
    block = block or checkpoint_block(plan) or FP8_BLOCK_SHAPE
    out_f, in_f = plan.q.shape
    per_elem = (plan.scale[:, None].expand(out_f, in_f) if plan.block_size is None
                else plan.scale.repeat_interleave(plan.block_size, 1))
    grid = per_elem[:: block[0], :: block[1]]
    back = grid.repeat_interleave(block[0], 0)[:out_f].repeat_interleave(block[1], 1)[:, :in_f]
    return grid.contiguous() if torch.equal(back, per_elem) else None


def _snap_int4(plan: LinearPlan, w: torch.Tensor, dtype: torch.dtype) -> tuple[LinearPlan, int]:
    """(the representable plan, how many codes changed)."""
    fi = torch.finfo(dtype)
    s = plan.scale.clamp(min=fi.tiny * fi.eps).to(dtype).float()  # >= the smallest subnormal: never 0
    if plan.offset is None:
        return LinearPlan(plan.name, "int4", plan.q, s, block_size=plan.block_size, info=dict(plan.info)), 0
    out_f, in_f = plan.q.shape
    block = int(plan.block_size or 0)
    zp = torch.round(-plan.offset / s).clamp(INT4_MIN, INT4_MAX)
    wb = w.reshape(out_f, in_f // block, block)
    q = torch.round(wb / s.unsqueeze(-1) + zp.unsqueeze(-1)).clamp(INT4_MIN, INT4_MAX).reshape(out_f, in_f)
    q = q.to(torch.int8)
    changed = int((q != plan.q).sum())
    return LinearPlan(plan.name, "int4", q, s, block_size=block, offset=-zp * s, info=dict(plan.info)), changed


def snap_plans(ctx: Any, plans: dict[str, LinearPlan], hf: HfCheckpointConfig) -> dict[str, LinearPlan]:
    """The plan hook of ``quantize`` for ``hf`` (see the module docstring). Mutates ``ctx.loaded.model``
    (the caller hands in a private copy) and records what it did in ``ctx.stats["hf_checkpoint"]``."""
    dtype = getattr(torch, hf.dtype)
    tied = bool(getattr(ctx.loaded.model.config, "tie_word_embeddings", False))
    out: dict[str, LinearPlan] = {}
    left_fp: dict[str, str] = {}
    changed = total = 0
    for name, p in plans.items():
        if p.kind == "int8":
            left_fp[name] = "INT8 weights: no checkpoint format here stores them"
            continue
        if tied and name.endswith("lm_head"):
            left_fp[name] = "the head is tied to the embedding table, which the checkpoint stores once, unquantized"
            continue
        if (hf.format == AWQ and p.kind != "int4") or (hf.format == FP8_BLOCK and p.kind != "fp8"):
            raise QuantizationError(f"{name}: a {p.kind} plan cannot be written as {hf.format}",
                                    hint="--format hf-awq takes INT4 schemes, hf-fp8 FP8 block schemes; "
                                         "--format hf (compressed-tensors) takes both")
        if p.kind == "int4":
            out[name], n = _snap_int4(p, ctx.linears[name].weight.detach().float(), dtype)
            changed, total = changed + n, total + p.q.numel()
        else:
            if p.block_size is not None and fp8_block_scales(p) is None:
                raise QuantizationError(f"{name}: FP8 scales on non-square blocks have no checkpoint format here")
            if hf.format == FP8_BLOCK and (checkpoint_block(p) is None or fp8_block_scales(p) is None):
                raise QuantizationError(
                    f"{name}: its FP8 scales are not one per square block, which the fine-grained FP8 format stores",
                    hint="use scheme fp8-block (or write --format hf: compressed-tensors stores per-channel FP8)")
            out[name] = p
    blocks = {p.block_size for p in out.values() if p.kind == "int4"}
    if hf.format == AWQ and len(blocks) > 1:
        raise QuantizationError(f"AutoAWQ GEMM stores one group size; the plan has {sorted(blocks)}",
                                hint="pick a block size every layer's input size divides (--block-size)")
    planned = {id(ctx.linears[n].weight) for n in out}
    with torch.no_grad():
        for param in ctx.loaded.model.parameters():
            if id(param) not in planned and param.is_floating_point():
                param.copy_(param.to(dtype).float())
    ctx.stats["hf_checkpoint"] = {**hf.to_dict(), "left_in_fp": left_fp, "int4_codes_rerounded": changed,
                                  "int4_codes": total}
    return out
