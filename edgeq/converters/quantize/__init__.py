"""edgeq quantizers: FP8 / INT8 (weight-only and SmoothQuant W8A8) / INT4 (RTN, AWQ) as one portable QDQ ONNX.

    from edgeq.converters.quantize import quantize, get_config
    res = quantize("smollm2-135m", get_config("int4-awq", block_size=64), "out/smollm2-int4")

The math runs in torch on the FP32 model, block by block on calibration text; the folded FP graph is
exported and a thin emitter swaps weights for INT4/INT8/FP8 initializers + DequantizeLinear (and Q->DQ on
W8A8 activations). The result loads in ONNX Runtime CPU and parses in TensorRT(-RTX).

Importing the package registers the built-in schemes (``schemes``, torch-free) and nothing heavier:
``quantize`` and the rest load torch on first use, so the CLI and target validation can list schemes cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeq.converters.quantize import schemes as _schemes  # noqa: F401  (registers the built-in handlers)
# registers "prequantized" (a checkpoint's published weights, kept exactly) and "fp8-block" (128x128 FP8 blocks)
from edgeq.converters.prequant import handlers as _prequant_handlers  # noqa: F401
from edgeq.converters.quantize.config import QuantConfig, get_config
from edgeq.converters.quantize.registry import handler_for, handler_named, register_handler, scheme_names

if TYPE_CHECKING:
    from edgeq.converters.quantize.api import QUANT_CONFIG, QUANT_REPORT, QuantizeResult, quantize
    from edgeq.converters.quantize.budget import AccuracyBudget

#: public name -> submodule that defines it (imported on first attribute access: these import torch)
_LAZY = {"quantize": "api", "QuantizeResult": "api", "QUANT_CONFIG": "api", "QUANT_REPORT": "api",
         "AccuracyBudget": "budget"}

__all__ = ["quantize", "get_config", "scheme_names", "handler_for", "handler_named", "register_handler",
           "QuantizeResult", "QuantConfig", "AccuracyBudget", "QUANT_CONFIG", "QUANT_REPORT"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeq.converters.quantize' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgeq.converters.quantize.{module}"), name)
    globals()[name] = value
    return value
