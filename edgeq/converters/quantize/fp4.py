"""NVFP4 arithmetic in torch: E2M1 rounding and the two-level block scales, as the emitted graph computes them.

A value dequantizes as ``e2m1 * (float(e4m3) * s2)``: the tensor scale ``s2 = amax / (6 * 448)`` puts the
largest block scale at E4M3's maximum, each 16-block's scale ``e4m3((block_amax / 6) / s2)`` is stored in FP8.
The products are taken in this order and in FP32, as the two DequantizeLinear nodes take them. No edgeq imports
beyond the errors: ``numerics`` (the plans) and ``nvfp4`` (the scheme) both use it.
"""

from __future__ import annotations

import torch

from edgeq.errors import QuantizationError

BLOCK = 16  # NVFP4's block: fixed by the format (TensorRT's DynamicQuantize takes only 16)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
#: the non-negative E2M1 values, indexed by their 3-bit code (sign is the 4th bit)
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)  # midpoints between neighbouring grid values


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value (ties to the even code, as IEEE casts do), saturating at +-6."""
    a = x.abs().float().clamp(max=E2M1_MAX)
    bounds = torch.tensor(_BOUNDS, dtype=torch.float32)
    idx = torch.bucketize(a, bounds)  # bounds[idx-1] < a <= bounds[idx]: a tie lands on the lower code
    tie = (idx < len(_BOUNDS)) & (a == bounds[idx.clamp(max=len(_BOUNDS) - 1)])
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)  # a tie goes to the even code
    return torch.tensor(E2M1_GRID, dtype=torch.float32)[idx] * torch.sign(x.float())


def global_scale(amax: float | torch.Tensor) -> torch.Tensor:
    """The per-tensor FP32 scale ``amax / (6 * 448)`` (a zero tensor gets 1: its blocks are all zero anyway)."""
    a = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(a > 0, a / (E2M1_MAX * E4M3_MAX), torch.ones_like(a)).to(torch.float32)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % BLOCK:
        raise QuantizationError(f"NVFP4 needs the last axis to be a multiple of {BLOCK}, got {tuple(x.shape)}")
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)


def block_quant(x: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of 16 along the last axis under the tensor scale ``s2``: (E2M1 values as float32, same shape as
    ``x``; E4M3 block scales, shape ``[..., n // 16]``). A block whose scale rounds to zero quantizes to zero."""
    xb = _blocks(x)
    s2 = s2.to(torch.float32)
    s8 = ((xb.abs().amax(dim=-1) / E2M1_MAX) / s2).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    scale = s8.float() * s2  # first DequantizeLinear: float(e4m3) * s2, in FP32
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(scale.unsqueeze(-1) > 0, round_e2m1(xb / safe.unsqueeze(-1)), torch.zeros_like(xb))
    return q.reshape(x.shape), s8


def block_dequant(q: torch.Tensor, s8: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """``q * (float(s8) * s2)`` per 16-block along the last axis: the two DequantizeLinear nodes' arithmetic."""
    scale = s8.float() * s2.to(torch.float32)
    return (_blocks(q) * scale.unsqueeze(-1)).reshape(q.shape)


def fake_quant_act(x: torch.Tensor, s2: float) -> torch.Tensor:
    """W4A4's activation path: dynamic 16-blocks along the last axis under the static tensor scale ``s2``."""
    s2_t = torch.tensor(s2, dtype=torch.float32)
    q, s8 = block_quant(x, s2_t)
    return block_dequant(q, s8, s2_t).to(x.dtype)
