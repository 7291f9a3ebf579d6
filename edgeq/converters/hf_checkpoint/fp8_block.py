"""The ``fp8-block`` scheme: FP8 E4M3 weights with one scale per 128x128 block, the fine-grained layout of
DeepSeek-V3 and Qwen3-*-FP8 that transformers' FineGrainedFP8 loader and vLLM read.

Each block's scale is its max |w| / 448 (FP32), codes are rounded to nearest E4M3 (saturating). In the
ONNX the layers are weight-only (W8A16): TensorRT-RTX 1.7 fails to build an FP8 GEMM over a blocked weight
DequantizeLinear (measured, sm89), and the checkpoint's readers quantize activations dynamically per
token group, which has no standard ONNX form. A host-side scheme for writing checkpoints
(``edgeq quantize -s fp8-block --format hf-fp8``); no target profile lists it as a build precision.
"""

from __future__ import annotations


import torch

from edgeq.converters.hf_checkpoint.config import FP8_BLOCK_SHAPE
from edgeq.converters.prequant.formats import PublishedLinear
from edgeq.converters.prequant.scheme import published_plan
from edgeq.converters.quantize.numerics import FP8_MAX, LinearPlan
from edgeq.converters.quantize.registry import QuantContext


def fp8_block_quant(w: torch.Tensor, block: tuple[int, int] = FP8_BLOCK_SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 codes ``[out, in]``, FP32 scales ``[ceil(out/b0), ceil(in/b1)]``): ``w ~ q * scale`` per block."""
    out_f, in_f = w.shape
    b0, b1 = block
    pr, pc = -(-out_f // b0) * b0, -(-in_f // b1) * b1
    blocks = torch.nn.functional.pad(w.float(), (0, pc - in_f, 0, pr - out_f)).reshape(pr // b0, b0, pc // b1, b1)
    scale = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    full = scale.repeat_interleave(b0, 0)[:out_f].repeat_interleave(b1, 1)[:, :in_f]
    return (w.float() / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_fp8_block(ctx: QuantContext) -> dict[str, LinearPlan]:
    plans = {}
    for name, mod in ctx.linears.items():
        q, scale = fp8_block_quant(mod.weight.detach())
        plan = published_plan(PublishedLinear(name, "fp8", q, scale, FP8_BLOCK_SHAPE))
        plan.info = {"rounding": "nearest", "block": list(FP8_BLOCK_SHAPE), **{k: v for k, v in plan.info.items()
                                                                             if k.startswith("onnx_block")}}
        plans[name] = plan
    return plans
