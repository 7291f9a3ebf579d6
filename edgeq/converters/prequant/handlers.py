"""The handlers of the schemes that carry published or block-scaled weights, torch-free (the package registers them).

``prequantized`` keeps a pre-quantized checkpoint's published weights as fixed plans (``prequant/scheme.py``);
``fp8-block`` is FP8 with square (128x128 or smaller) block scales, the fine-grained FP8 checkpoint format
(``hf_checkpoint/fp8_block.py``). Their math imports torch when a handler quantizes.
"""

from __future__ import annotations

from typing import Any

from edgeq.converters.prequant.config import Fp8BlockConfig, PrequantizedConfig
from edgeq.converters.quantize.registry import QuantContext, SchemeHandler, register_handler

@register_handler
class Prequantized(SchemeHandler):
    """A checkpoint's published INT4 or FP8 weights, kept exactly."""

    name = "prequantized"
    config = PrequantizedConfig

    def weight_bits(self, cfg: Any) -> float:
        # The checkpoint decides (INT4 blocks: ~4.25 bits; FP8: 8); a memory estimate takes the larger.
        return 8.0

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.prequant.scheme import keep_published

        return keep_published(ctx)


@register_handler
class Fp8Block(SchemeHandler):
    """FP8 E4M3 weights with square block scales, dynamic per-token-group activations (or weight-only)."""

    name = "fp8-block"
    config = Fp8BlockConfig
    # FP8 tensor cores arrive with Ada (sm89), as for the fp8 scheme
    min_compute_capability = "8.9"

    def weight_bits(self, cfg: Any) -> float:
        b = cfg.block_size or 128
        return 8.0 + 32 / (b * b)  # one FP32 scale per block

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.hf_checkpoint.fp8_block import quantize_fp8_block

        return quantize_fp8_block(ctx)
