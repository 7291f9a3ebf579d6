"""INT4 block plans, shared by the INT4 schemes (RTN, AWQ) and the generic up-front block-size check."""

from __future__ import annotations

from typing import Any

import torch

from edgeq.converters.quantize.calibrate import is_head
from edgeq.converters.quantize.numerics import LinearPlan, choose_block, int4_block_quant, int8_channel_quant
from edgeq.errors import QuantizationError


def int4_plan(name: str, w: torch.Tensor, requested: int, clip: torch.Tensor | None = None,
              asymmetric: bool = False, **info: Any) -> LinearPlan:
    """INT4 block plan for one weight, with the block size chosen for its input size."""
    block = fit_block(name, w.shape[1], requested)
    q, scale, offset = int4_block_quant(w.float(), block, clip, asymmetric)
    return LinearPlan(name, "int4", q, scale, block_size=block, offset=offset,
                      info={**block_note(block, requested, w.shape[1]), **info})


def fit_block(name: str, in_features: int, requested: int) -> int:
    """The block size a layer gets (see ``choose_block``); QuantizationError when none fits."""
    block = choose_block(in_features, requested)
    if block is None:
        raise QuantizationError(
            f"block size {requested} cannot fit layer {name}: input size {in_features} has no power-of-two "
            f"divisor in [16, {requested}]",
            hint="keep this layer in FP16 (keep_fp16) or use int8-wo",
        )
    return block


def block_note(block: int, requested: int, in_features: int) -> dict[str, str]:
    return {} if block == requested else {"block_size_note": f"requested {requested} does not divide {in_features}"}


def weight_only_plan(name: str, w: torch.Tensor, cfg: Any, clip: torch.Tensor | None = None, **info: Any) -> LinearPlan:
    """The plan of one linear under an INT4 scheme: INT4 blocks, except a head kept at ``cfg.head_bits == 8``."""
    if is_head(name) and cfg.head_bits == 8:
        q, scale = int8_channel_quant(w.float())
        return LinearPlan(name, "int8", q, scale, info={**info, "note": "LM head: INT8 per channel (head_bits=8)"})
    return int4_plan(name, w, cfg.block_size, clip, cfg.asymmetric, **info)


def check_int4_fits(linears: dict[str, torch.nn.Linear], cfg: Any) -> None:
    """Fail before any work when a layer that gets INT4 blocks cannot take ``cfg.block_size`` (plan before execute)."""
    for name, mod in linears.items():
        if not (is_head(name) and cfg.head_bits == 8):
            fit_block(name, mod.in_features, cfg.block_size)
