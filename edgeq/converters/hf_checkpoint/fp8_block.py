"""The ``fp8-block`` scheme: FP8 E4M3 weights with one scale per square block, the fine-grained layout of
DeepSeek-V3 and Qwen3-*-FP8 (128x128) that transformers' FineGrainedFP8 loader and vLLM read.

Each block's scale is its max |w| / 448 (FP32), codes are rounded to nearest E4M3 (saturating). The block is
128 where every layer's sizes are multiples of 128, else smaller (``fp8_block_edge``): the readers quantize
activations per token and ``block`` input channels and take whole blocks only (transformers asserts it), so a
model of width 576 gets 64x64 blocks. The ONNX quantizes activations the same way (``activations="dynamic"``,
written out as Cast-to-FP8 arithmetic, ``qdq.dynamic_fp8_nodes``), or not at all (``none``: W8A16; TensorRT-RTX
1.7 fails to build an FP8 GEMM over a blocked weight DequantizeLinear, measured for sm89, and no TensorRT has a
per-token-group FP8 quantizer). A host-side scheme for writing checkpoints (``edgeq quantize -s fp8-block
--format hf-fp8``); no target profile lists it as a build precision.
"""

from __future__ import annotations


import torch

from edgeq.converters.hf_checkpoint.config import FP8_BLOCK_SHAPE
from edgeq.converters.prequant.formats import PublishedLinear
from edgeq.converters.prequant.scheme import published_plan
from edgeq.converters.quantize.numerics import FP8_MAX, LinearPlan
from edgeq.converters.quantize.registry import QuantContext
from edgeq.errors import QuantizationError


def fp8_block_quant(w: torch.Tensor, block: tuple[int, int] = FP8_BLOCK_SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 codes ``[out, in]``, FP32 scales ``[ceil(out/b0), ceil(in/b1)]``): ``w ~ q * scale`` per block."""
    out_f, in_f = w.shape
    b0, b1 = block
    pr, pc = -(-out_f // b0) * b0, -(-in_f // b1) * b1
    blocks = torch.nn.functional.pad(w.float(), (0, pc - in_f, 0, pr - out_f)).reshape(pr // b0, b0, pc // b1, b1)
    scale = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    full = scale.repeat_interleave(b0, 0)[:out_f].repeat_interleave(b1, 1)[:, :in_f]
    return (w.float() / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def fp8_block_edge(shapes: list[tuple[int, int]], cap: int = FP8_BLOCK_SHAPE[0]) -> int:
    """The largest power-of-two block edge in [16, cap] dividing every ``(out, in)`` size; ``cap`` if none does
    (partial blocks: the format allows them, transformers' and vLLM's block kernels do not)."""
    b = cap
    while b >= 16:
        if all(o % b == 0 and i % b == 0 for o, i in shapes):
            return b
        b //= 2
    return cap


def quantize_fp8_block(ctx: QuantContext) -> dict[str, LinearPlan]:
    shapes = [tuple(mod.weight.shape) for mod in ctx.linears.values()]
    edge = ctx.cfg.block_size or fp8_block_edge(shapes)  # type: ignore[arg-type]
    block = (edge, edge)
    plans = {}
    for name, mod in ctx.linears.items():
        q, scale = fp8_block_quant(mod.weight.detach(), block)
        plan = published_plan(PublishedLinear(name, "fp8", q, scale, block))
        plan.info = {"rounding": "nearest", "block": list(block), **{k: v for k, v in plan.info.items()
                                                                     if k.startswith("onnx_block")}}
        if ctx.cfg.activations == "dynamic":  # the readers' groups: ``edge`` input channels, whole groups only
            if mod.in_features % edge:
                raise QuantizationError(f"{name}: input size {mod.in_features} is not a multiple of the {edge}-block, "
                                        "which dynamic per-group activations need",
                                        hint="pass a block_size dividing it, or activations='none' (weight-only)")
            plan.act_group = edge
            plan.info["activations"] = f"dynamic per token and {edge} channels"
        plans[name] = plan
    ctx.stats["fp8_block"] = {"block": list(block), "activations": ctx.cfg.activations}
    return plans
