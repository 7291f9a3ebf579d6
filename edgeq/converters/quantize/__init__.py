"""edgeq quantizers: FP8 / INT8 (weight-only and SmoothQuant W8A8) / INT4 (RTN, AWQ) as one portable QDQ ONNX.

    from edgeq.converters.quantize import quantize, get_config
    res = quantize("smollm2-135m", get_config("int4-awq", block_size=64), "out/smollm2-int4")

The math runs in torch on the FP32 model, block by block on calibration text; the folded FP graph is
exported and a thin emitter swaps weights for INT4/INT8/FP8 initializers + DequantizeLinear (and Q->DQ on
W8A8 activations). The result loads in ONNX Runtime CPU and parses in TensorRT(-RTX).
"""

from edgeq.converters.quantize.api import QUANT_CONFIG, QUANT_REPORT, QuantizeResult, quantize
from edgeq.converters.quantize.budget import AccuracyBudget
from edgeq.converters.quantize.config import SCHEMES, QuantConfig, get_config

__all__ = ["quantize", "get_config", "SCHEMES", "QuantizeResult", "QuantConfig", "AccuracyBudget",
           "QUANT_CONFIG", "QUANT_REPORT"]

# registers the "prequantized" scheme (a pre-quantized checkpoint's published weights, kept exactly)
from edgeq.converters.prequant import scheme as _prequant_scheme  # noqa: E402,F401
# registers "fp8-block" (FP8 with 128x128 block scales, for fine-grained FP8 checkpoints out)
from edgeq.converters.hf_checkpoint import fp8_block as _fp8_block_scheme  # noqa: E402,F401
