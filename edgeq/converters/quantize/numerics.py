"""Quantization arithmetic in torch, written to match ONNX QuantizeLinear/DequantizeLinear exactly.

Weights are ``[out, in]`` (torch Linear layout); the emitter transposes to ONNX's ``[in, out]``.
Rounding is half-to-even (torch.round, like QuantizeLinear); FP8 saturates to ±448 (QuantizeLinear's
default ``saturate=1``). INT8/FP8 grids are symmetric (TensorRT takes no zero points); INT4 blocks are
asymmetric by default, their per-block offsets written by the emitter as a separate exact correction term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

INT4_MIN, INT4_MAX = -8, 7
INT8_MAX = 127
FP8_MAX = 448.0
_EPS = 1e-12


def int4_block_quant(w: torch.Tensor, block: int, clip: torch.Tensor | None = None,
                     asymmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """INT4 per (output row, input block). Returns (q int8 [out,in], scale [out, in//block], offset or None).

    Symmetric: ``w ~ q * scale`` over ±max|w|. Asymmetric: ``w ~ q * scale + offset`` with the block's
    [min, max] mapped onto [-8, 7] (what a zero point does; the emitter writes the offset as an exact
    correction term, since TensorRT takes no INT4 zero points). ``clip`` ([out, in//block], in (0, 1])
    shrinks each block's range (about 0, or about the block's midpoint when asymmetric).
    """
    out_f, in_f = w.shape
    wb = w.reshape(out_f, in_f // block, block)
    if asymmetric:
        lo, hi = wb.amin(dim=-1), wb.amax(dim=-1)
        if clip is not None:
            mid, half = (hi + lo) / 2, (hi - lo) / 2 * clip
            lo, hi = mid - half, mid + half
        scale = ((hi - lo) / (INT4_MAX - INT4_MIN)).clamp(min=_EPS)
        offset = lo - INT4_MIN * scale
        q = torch.round((wb - offset.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(INT4_MIN, INT4_MAX)
        return q.reshape(out_f, in_f).to(torch.int8), scale, offset
    amax = wb.abs().amax(dim=-1)
    if clip is not None:
        amax = amax * clip
    scale = (amax / INT4_MAX).clamp(min=_EPS)
    q = torch.round(wb / scale.unsqueeze(-1)).clamp(INT4_MIN, INT4_MAX)
    return q.reshape(out_f, in_f).to(torch.int8), scale, None


def int4_block_dequant(q: torch.Tensor, scale: torch.Tensor, block: int, offset: torch.Tensor | None = None) -> torch.Tensor:
    out_f, in_f = q.shape
    wb = q.float().reshape(out_f, in_f // block, block) * scale.unsqueeze(-1)
    if offset is not None:
        wb = wb + offset.unsqueeze(-1)
    return wb.reshape(out_f, in_f)


def int8_channel_scale(w: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 per-output-channel scales ``max|w| / 127`` ([out])."""
    return (w.abs().amax(dim=1) / INT8_MAX).clamp(min=_EPS)


def int8_channel_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per output channel. Returns (q int8 [out,in], scale [out])."""
    scale = int8_channel_scale(w)
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX)
    return q.to(torch.int8), scale


def fp8_channel_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 per output channel. Returns (q float8_e4m3fn [out,in], scale [out])."""
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=_EPS)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fake_quant_act(x: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
    """Activation Q->DQ as the graph computes it (int8: round/clamp ±127..-128; fp8: E4M3 saturating, per tensor;
    nvfp4: dynamic 16-blocks under the tensor scale ``scale``, ``fp4.py``)."""
    if kind == "nvfp4":
        from edgeq.converters.quantize.fp4 import fake_quant_act as nvfp4_act

        return nvfp4_act(x, scale)
    if kind == "int8":
        return torch.round(x / scale).clamp(-128, 127) * scale
    if kind == "fp8":
        return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale
    raise ValueError(kind)


def fp8_dynamic_act(x: torch.Tensor, group: int) -> torch.Tensor:
    """Dynamic FP8 activations as the graph (``qdq.dynamic_fp8_nodes``) and the checkpoints' readers compute them:
    one scale per token and ``group`` consecutive channels of the last axis (``group`` = the width: per token),
    ``max|x| / 448`` (at least 1e-12), E4M3 rounded to nearest even."""
    shape = x.shape
    xg = x.float().reshape(-1, group)
    s = (xg.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_EPS)
    return ((xg / s).to(torch.float8_e4m3fn).float() * s).reshape(shape).to(x.dtype)


def act_amax(x: torch.Tensor, method: str, percentile: float) -> float:
    """Calibrated per-tensor range of ``x``: its max |x| or the given percentile of |x| (``mse`` needs the
    weights: ``mse_act_amax``)."""
    if method == "mse":
        raise ValueError("the mse range needs the linears reading x: call mse_act_amax")
    a = x.detach().abs().flatten().float()
    if method == "max" or percentile >= 100.0:
        return float(a.max())
    k = max(1, min(a.numel(), int(round(a.numel() * percentile / 100.0))))
    return float(a.kthvalue(k).values)


ACT_QMAX = {"int8": float(INT8_MAX), "fp8": FP8_MAX}


def mse_act_amax(x: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], kind: str = "int8", steps: int = 16) -> float:
    """Clipped activation range (max * r, r from 1 down to 0.25) minimising the summed relative output MSE of
    every linear reading ``x`` (``pairs``: (FP weight, dequantized weight); one scale per tensor: q/k/v share
    theirs), with ``x`` quantized as ``kind`` (``int8`` or ``fp8``)."""
    refs = [x @ w.T for w, _ in pairs]
    norms = [float(r.pow(2).mean()) or 1.0 for r in refs]
    top = float(x.abs().max())
    best = (float("inf"), top)
    for i in range(steps):
        amax = top * (1.0 - 0.75 * i / steps)
        xq = fake_quant_act(x, max(amax, 1e-8) / ACT_QMAX[kind], kind)
        err = sum(float((xq @ w_dq.T - r).pow(2).mean()) / n for (_, w_dq), r, n in zip(pairs, refs, norms))
        if err < best[0]:
            best = (err, amax)
    return max(best[1], 1e-8)


@dataclass
class LinearPlan:
    """How one Linear is quantized: integer/FP8 weights + scales (+ a static activation scale for W8A8)."""

    name: str
    kind: str  # "int4" | "int8" | "fp8" | "nvfp4"
    q: torch.Tensor  # [out, in] (nvfp4: the E2M1 values as float32)
    scale: torch.Tensor  # [out] per channel, or [out, in//block] for int4 (and for FP8 given a block_size);
    #                      nvfp4: the E4M3 block scales [out, in//16] (float8_e4m3fn)
    block_size: int | None = None
    act_scale: float | None = None  # per-tensor static scale of the input activation (W8A8)
    offset: torch.Tensor | None = None  # asymmetric INT4: per-block offset [out, in//block] added after DQ
    info: dict[str, Any] = field(default_factory=dict)
    global_scale: float | None = None  # nvfp4: the per-tensor FP32 scale of the E4M3 block scales
    #: dynamic FP8 activations (no ``act_scale``): one scale per token and ``act_group`` input channels, computed
    #: at run time (``act_group`` = in_features: per token; ``fp8_dynamic_act``)
    act_group: int | None = None

    def dequant(self) -> torch.Tensor:
        if self.kind == "nvfp4":
            from edgeq.converters.quantize.fp4 import block_dequant

            return block_dequant(self.q, self.scale, torch.tensor(self.global_scale, dtype=torch.float32))
        if self.kind == "int4":
            assert self.block_size is not None
            return int4_block_dequant(self.q, self.scale, self.block_size, self.offset)
        if self.block_size is not None:  # FP8 blocks along the input (pre-quantized fine-grained checkpoints)
            return int4_block_dequant(self.q, self.scale, self.block_size)
        return self.q.float() * self.scale[:, None]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as the emitted graph quantizes it (unchanged when weight-only)."""
        if self.act_group is not None:
            return fp8_dynamic_act(x, self.act_group)
        if self.act_scale is not None:
            return fake_quant_act(x, self.act_scale, self.act_kind or "int8")
        return x

    @property
    def act_kind(self) -> str | None:
        if self.act_scale is None:
            return None
        return self.kind if self.kind in ("fp8", "nvfp4") else "int8"

    def summary(self) -> dict[str, Any]:
        acts = self.act_scale is not None or self.act_group is not None
        d: dict[str, Any] = {"scheme": self.kind + ("" if acts else "-weight-only"), "shape": list(self.q.shape)}
        if self.block_size is not None:
            d["block_size"] = self.block_size
            d["asymmetric"] = self.offset is not None
        if self.act_scale is not None:
            d["act_scale"] = self.act_scale
        if self.act_group is not None:
            d["act_dynamic_group"] = self.act_group
        if self.global_scale is not None:
            d["global_scale"] = self.global_scale
        d.update(self.info)
        return d


def choose_block(in_features: int, requested: int) -> int | None:
    """Largest power of two in [16, requested] dividing ``in_features`` (None if none does)."""
    b = requested
    while b >= 16:
        if in_features % b == 0:
            return b
        b //= 2
    return None
